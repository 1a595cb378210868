"""The supervised reference: the same backbone trained with the data's labels, by the same loop,
recipe format, export and evaluation as every self-supervised entry.

It is not a pretext method. It is the ceiling the zoo measures the others against (Asano, Rupprecht
& Vedaldi 2020, Table 1: each layer's linear probe as a fraction of a supervised network's): a
self-supervised stage at 90 % of the supervised one at that stage learned most of what labels
teach there. The only method whose transform reads labels (`reads_labels`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import tensorflow as tf

from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import classification_head
from ssl_zoo.methods.base import PretextMethod, single_view_classifier
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.train.recipe import may_be_empty


@dataclasses.dataclass
class Supervised(PretextMethod):
    name: ClassVar[str] = "supervised"
    reads_labels: ClassVar[bool] = True
    card: ClassVar[MethodCard] = MethodCard(
        title="Supervised reference",
        paper="He, Zhang, Ren & Sun, \"Deep Residual Learning for Image Recognition\", CVPR 2016 (the "
              "backbone); the reference role follows Asano, Rupprecht & Vedaldi, \"A critical analysis of "
              "self-supervision, or what we can learn from a single image\", ICLR 2020",
        paragraph="**Trained with labels: a reference, not a self-supervised entry.** The same backbone and "
                  "training loop as the zoo's self-supervised entries, trained to classify the training "
                  "images into their classes with cross-entropy. Its per-stage probe is the ceiling the "
                  "leaderboard measures every self-supervised stage against.",
        pretext_classes="num_classes",
        pretext_eval="the held-out {split} split of {data}: its classes (this is supervised accuracy)",
        limitation="Its features are those of the labelled task; as a ceiling it is specific to this data "
                   "(a probe on other data measures transfer, where self-supervised features can do better).",
        view_size_field="image_size",
    )
    num_classes: int | None = None  # None: the training data's
    head_hidden_units: tuple[int, ...] = may_be_empty(())
    image_size: int | None = None

    def __post_init__(self):
        self.head_hidden_units = tuple(self.head_hidden_units)
        if self.num_classes is not None:
            self.require_positive("num_classes")

    def prepare(self, source, split: str, image_size: int) -> None:
        classes = source.num_classes()
        if classes is None:
            raise ConfigError(f"the supervised reference needs labelled data; {source.name} has no classes")
        if self.num_classes is not None and self.num_classes != classes:
            raise ConfigError(f"[method] supervised num_classes = {self.num_classes}, but {source.name} has "
                              f"{classes} classes")
        self.num_classes = classes

    def build_model(self) -> keras.Model:
        if self.num_classes is None:
            raise ConfigError("supervised: num_classes is unknown until prepare() has seen the data")
        head = classification_head(self.num_classes, self.head_hidden_units)
        return single_view_classifier(self.build_backbone(), head, self.image_size)

    def example_transform(self, image, size: int, seed, training: bool = True, index=None, label=None) -> dict:
        """The view and, when the pipeline hands one (`reads_labels`), its class as the target;
        without a label (a features pass) the view alone."""
        del index
        view = AUGMENTATIONS[self.augment if training else "center"](image, size, seed)
        if label is None:
            return {"inputs": view}
        label = tf.ensure_shape(tf.cast(label, tf.int64), [])
        with tf.control_dependencies([tf.debugging.assert_non_negative(
                label, message="supervised: an example without a label (-1) reached training")]):
            return {"inputs": tf.identity(view), "targets": label}
