"""What a method is: composition of a backbone, a pretext transform, a head and a loss.

Discriminative pretexts (rotation, jigsaw, …) only say how to build the model and how to turn a
batch of images into `(inputs, targets)`; the shared training loop's default step (forward,
`loss(targets, outputs)`, backward, optimizer) trains them. Methods with extra state (momentum
encoders, queues, pseudo-labels) override `train_step` and keep that state on themselves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import keras
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.backbones import build_backbone
from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD

BACKBONE = "backbone"


@dataclasses.dataclass
class PretextMethod:
    """Base for methods; subclasses are dataclasses whose fields are their typed configuration."""

    backbone: dict = dataclasses.field(default_factory=lambda: {"arch": "resnet", "depth": 18})
    name: ClassVar[str] = ""
    # Per-example view augmentation the pipeline applies before batching (see data.augment).
    augment: str = "crop_flip"
    # False for methods whose examples do not depend on the image the pipeline hands them
    # (Exemplar CNN samples its seed bank): the trainer then streams placeholders (ImagelessSource)
    # instead of decoding every training image only to drop it.
    reads_images: ClassVar[bool] = True

    def build_backbone(self) -> keras.Model:
        return build_backbone(self.backbone, name=BACKBONE)

    # Optional transform of a whole batch `(images, labels) -> (inputs, targets)`, for pretexts that
    # need every variant of an image in the same batch (RotNet). None: the batch is used as is.
    batch_transform: Callable | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def build_model(self) -> keras.Model:
        raise NotImplementedError

    def example_transform(self, image, size: int, seed, training: bool = True):
        """Per-example transform, before batching: an image -> a view (float32 [size, size, 3]),
        or -> `(inputs, target)` for pretexts whose label is made per example (jigsaw, …).
        `seed` is a stateless seed; at evaluation (`training=False`) the view is the centre crop."""
        return AUGMENTATIONS[self.augment if training else "center"](image, size, seed)

    def loss(self, targets, outputs):
        """Per-example loss; reduced to the global mean by the loop."""
        return losses.sparse_cross_entropy(targets, outputs)

    def train_step(self, model, optimizer, inputs, targets) -> dict[str, tf.Tensor]:
        """One replica's step. Returns sums that the loop reduces (SUM) across replicas."""
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            per_example = self.loss(targets, outputs)
            loss = losses.global_mean(per_example)
            if model.losses:
                loss += tf.add_n(model.losses) / losses.num_replicas()
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return self.metrics(targets, outputs, per_example)

    def eval_step(self, model, inputs, targets) -> dict[str, tf.Tensor]:
        outputs = model(inputs, training=False)
        return self.metrics(targets, outputs, self.loss(targets, outputs))

    def metrics(self, targets, outputs, per_example) -> dict[str, tf.Tensor]:
        correct = tf.equal(tf.argmax(outputs, -1, output_type=tf.int32), tf.cast(targets, tf.int32))
        return {
            "loss_sum": tf.reduce_sum(per_example),
            "correct": tf.reduce_sum(tf.cast(correct, tf.float32)),
            "count": tf.cast(tf.shape(per_example)[0], tf.float32),
        }

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}}

    def prepare(self, source, split: str, image_size: int) -> None:
        """Called once by the trainer with the training data before any dataset is built, for
        methods whose pretext classes come from the data (Exemplar CNN's seed patches). No-op."""


def extract_backbone(model: keras.Model) -> keras.Model:
    """The backbone inside a pretext model, found by name (the head is dropped by name too)."""
    try:
        backbone = model.get_layer(BACKBONE)
    except ValueError as e:
        names = [layer.name for layer in model.layers]
        raise ConfigError(f"model {model.name!r} has no layer {BACKBONE!r}; its layers: {names}") from e
    if len(backbone.outputs) > 1:
        # A backbone that also hands a feature map to the head (views.py, fusion "spatial"): the
        # exported backbone is the same layers up to the pooled features, its usual single output.
        return keras.Model(backbone.input, backbone.get_layer("pooled").output, name=backbone.name)
    return backbone


def single_view_classifier(backbone: keras.Model, head: keras.Model, image_size) -> keras.Model:
    """images -> backbone -> head, with the backbone and head as named sub-models."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    return keras.Model(inputs, head(backbone(inputs)), name="pretext_model")


__all__ = ["BACKBONE", "PRETEXT_HEAD", "PretextMethod", "extract_backbone", "single_view_classifier"]
