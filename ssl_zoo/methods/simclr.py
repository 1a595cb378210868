"""SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020): two augmented views of every image,
and each view must pick out the other among all views of the global batch. "A simple framework
for contrastive learning of visual representations ... composition of data augmentations plays a
critical role ... a learnable nonlinear transformation between the representation and the
contrastive loss substantially improves the quality of the learned representations" (abstract).

Composition plus its own step: the two-view transform (`ssl_zoo.pretext.contrastive`), backbone,
MLP projection head, NT-Xent with the negatives of every replica (`ssl_zoo.losses.nt_xent`). The
step runs the backbone once on both views stacked in the batch, so that (synchronised) batch norm
sees all 2N views as one network would. The released backbone is the encoder before the head.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import projection_head
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.pretext.contrastive import two_views


@dataclasses.dataclass
class SimCLR(PretextMethod):
    name: ClassVar[str] = "simclr"
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
    image_size: int = 32
    temperature: float = 0.2
    head_hidden_units: tuple[int, ...] = (512,)
    projection_dim: int = 128
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter_strength: float = 0.5
    jitter_probability: float = 0.8
    grey_probability: float = 0.2
    blur_probability: float = 0.0  # the paper blurs ImageNet views (0.5), not CIFAR's

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        self.head_hidden_units = tuple(self.head_hidden_units)
        self.crop_scale = tuple(self.crop_scale)

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        images = keras.Input((self.image_size, self.image_size, 3), name="images")
        head = projection_head(self.head_hidden_units, self.projection_dim)
        return keras.Model(images, head(backbone(images)), name="pretext_model")

    def example_transform(self, image, size: int, seed, training: bool = True, index=None) -> dict:
        """Two views, also at evaluation (fixed seeds there): with two identical centre crops the
        held-out task would be trivial."""
        del training, index
        views = two_views(image, size, seed, scale=self.crop_scale, jitter_strength=self.jitter_strength,
                          jitter_probability=self.jitter_probability, grey_probability=self.grey_probability,
                          blur_probability=self.blur_probability)
        return {"inputs": views}

    def _contrast(self, model, views, training: bool):
        first, second = views
        local = tf.shape(first)[0]
        z = model(tf.concat([first, second], axis=0), training=training)
        per_example, correct = losses.nt_xent(z[:local], z[local:], self.temperature)
        return per_example, correct

    def train_step(self, ctx, batch):
        model = ctx.model
        with tf.GradientTape() as tape:
            per_example, correct = self._contrast(model, batch["inputs"], training=True)
            loss = losses.replica_loss(per_example, model)
        grads = tape.gradient(loss, model.trainable_variables)
        ctx.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return self._metrics(per_example, correct)

    def eval_step(self, ctx, batch):
        return self._metrics(*self._contrast(ctx.model, batch["inputs"], training=False))

    @staticmethod
    def _metrics(per_example, correct):
        # Counted per view (2 per image): the loss and accuracy of each view's query.
        return {"loss_sum": tf.reduce_sum(per_example), "correct": tf.reduce_sum(tf.cast(correct, tf.float32)),
                "count": tf.cast(tf.shape(per_example)[0], tf.float32)}
