"""SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020): two augmented views of every image,
and each view must pick out the other among all views of the global batch. "A simple framework
for contrastive learning of visual representations ... composition of data augmentations plays a
critical role ... a learnable nonlinear transformation between the representation and the
contrastive loss substantially improves the quality of the learned representations" (abstract).

Composition plus its own step: the two views and MLP projection head of `two_view.TwoViewMethod`, NT-Xent with the negatives of every replica (`ssl_zoo.losses.nt_xent`). By
default the step runs the backbone once on both views stacked in the batch, so that (synchronised)
batch norm sees all 2N views as one network would (the paper's code); `batch_norm_views =
"each"` runs it once per view instead, each view's batch normalised by its own statistics, as the
PyTorch implementations that call the model twice do (LightlySSL's examples). The released
backbone is the encoder before the head.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.methods.two_view import BATCH_NORM_VIEWS, TwoViewMethod, per_view_metrics, through_network


@dataclasses.dataclass
class SimCLR(TwoViewMethod):
    name: ClassVar[str] = "simclr"
    pair_task: ClassVar[str] = "each view must pick out its partner among the batch's other views"
    card: ClassVar[MethodCard] = MethodCard(
        title="SimCLR",
        paper="Chen, Kornblith, Norouzi & Hinton, \"A Simple Framework for Contrastive Learning of Visual "
              "Representations\", ICML 2020 (arXiv:2002.05709)",
        paragraph="Every training image is augmented twice (random resized crop and flip, colour jitter with "
                  "probability 0.8, greyscale with probability 0.2), both views go through the backbone and a "
                  "small MLP projection head, and each view's projection must identify the other view of its "
                  "image among all the views of the global batch (NT-Xent, a softmax over cosine similarities "
                  "at a temperature). The negatives come from every replica. The projection head is dropped "
                  "after training; the backbone's features (before the head) are released.",
        # The pretext "accuracy" is whether a view's positive is its most similar key among all 2N - 1.
        pretext_eval="two fresh augmented views of each image of the held-out {split} split of {data} (fixed "
                     "seeds), the positive found among all views of its batch",
        limitation="Its invariances are the augmentations': colour and crop position are treated as nuisance, "
                   "so tasks that need colour or absolute position get less from these features.",
        view_size_field="image_size",
    )
    temperature: float = 0.2
    batch_norm_views: str = "both"  # "both": one pass over 2N views; "each": one pass per view

    def __post_init__(self):
        super().__post_init__()
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        self.require_choice("batch_norm_views", BATCH_NORM_VIEWS)

    def build_model(self) -> keras.Model:
        return self.projection_model()

    def _contrast(self, model, views, training: bool):
        z1, z2 = through_network(model, *views, training=training, batch_norm_views=self.batch_norm_views)
        per_example, correct = losses.nt_xent(z1, z2, self.temperature)
        return per_example, correct

    def train_step(self, ctx, batch):
        model = ctx.model
        with tf.GradientTape() as tape:
            per_example, correct = self._contrast(model, batch["inputs"], training=True)
            loss = losses.replica_loss(per_example, model)
        grads = tape.gradient(loss, model.trainable_variables)
        ctx.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return per_view_metrics(per_example, correct)

    def eval_step(self, ctx, batch):
        return per_view_metrics(*self._contrast(ctx.model, batch["inputs"], training=False))
