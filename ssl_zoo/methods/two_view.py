"""What SimCLR, MoCo v2 and BYOL share: two augmented views of every image (SimCLR's recipe:
random resized crop and flip, colour jitter, greyscale, optional blur; `ssl_zoo.pretext.contrastive`),
an MLP projection head on the backbone, and metrics counted per view.

Each method keeps its own step (NT-Xent over the batch, InfoNCE against a queue, a prediction of an
EMA target); only the views and the bookkeeping are the same.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import tensorflow as tf

from ssl_zoo.heads import projection_head
from ssl_zoo.image_grid import Picture, PictureRow
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.pretext.contrastive import require_view_settings, two_views


@dataclasses.dataclass
class TwoViewMethod(PretextMethod):
    image_size: int = 32
    head_hidden_units: tuple[int, ...] = (512,)
    projection_dim: int = 128
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter_strength: float = 0.5
    jitter_probability: float = 0.8
    grey_probability: float = 0.2
    blur_probability: float = 0.0  # the papers blur ImageNet views (0.5), not CIFAR's
    jitter_style: str = "paper"  # or "torchvision" (`ssl_zoo.pretext.contrastive.colour_jitter`)
    crop_sampler: str = "tf"  # or "torchvision" (`ssl_zoo.data.augment.random_resized_crop`)
    head_output_batch_norm: bool = False  # a batch norm after the projection (`heads.projection_head`)
    # What the network does with the two views, for the picture of the pretext task.
    pair_task: ClassVar[str] = ""

    def __post_init__(self):
        # TOML gives lists; the dataclass's config (and the recorded recipe) keeps tuples.
        self.head_hidden_units = tuple(self.head_hidden_units)
        self.crop_scale = tuple(self.crop_scale)
        require_view_settings(self.jitter_style, self.crop_sampler)

    def projection_model(self, **head) -> keras.Model:
        """Backbone + MLP projection head on `image_size` images (the trained model of SimCLR and
        of MoCo's query encoder)."""
        backbone = self.build_backbone()
        images = keras.Input((self.image_size, self.image_size, 3), name="images")
        head = projection_head(self.head_hidden_units, self.projection_dim,
                               output_batch_norm=self.head_output_batch_norm, **head)
        return keras.Model(images, head(backbone(images)), name="pretext_model")

    def example_transform(self, image, size: int, seed, training: bool = True, index=None) -> dict:
        """Two views, also at evaluation (fixed seeds there): with two identical centre crops the
        held-out task would be trivial."""
        del training, index
        views = two_views(image, size, seed, scale=self.crop_scale, jitter_strength=self.jitter_strength,
                          jitter_probability=self.jitter_probability, grey_probability=self.grey_probability,
                          blur_probability=self.blur_probability, jitter_style=self.jitter_style,
                          crop_sampler=self.crop_sampler)
        return {"inputs": views}

    def pretext_picture(self, source, split: str, image_size: int, backbone=None) -> Picture:
        first, second = self.pretext_batch(source, split, image_size, batch_size=8)["inputs"]
        return Picture(f"{self.card.title}: two augmented views of each image (a column); {self.pair_task}",
                       [PictureRow("view 1", first), PictureRow("view 2", second)])


# How a step passes the two views through a network: "both" stacks them into one call of 2N views, so
# that (synchronised) batch norm normalises them together (the SimCLR authors' code); "each" makes one
# call per view, each batch normalised by its own N views' statistics (the PyTorch implementations that
# call the model twice: LightlySSL's examples, the BYOL authors' code).
BATCH_NORM_VIEWS = ("both", "each")


def through_network(network, first, second, training: bool, batch_norm_views: str = "both"):
    """(network(first), network(second)) for views [N, ...] each, as `batch_norm_views` says; the
    outputs may be any structure of tensors with the batch first (a dict of heads)."""
    if batch_norm_views == "each":
        return network(first, training=training), network(second, training=training)
    local = tf.shape(first)[0]
    out = network(tf.concat([first, second], axis=0), training=training)
    return (tf.nest.map_structure(lambda t: t[:local], out),
            tf.nest.map_structure(lambda t: t[local:], out))


def per_view_metrics(per_view_loss, correct) -> dict:
    """The trainer's sums, counted per view (2 per image): each view's loss and whether its
    positive won."""
    return {"loss_sum": tf.reduce_sum(per_view_loss), "correct": tf.reduce_sum(tf.cast(correct, tf.float32)),
            "count": tf.cast(tf.shape(per_view_loss)[0], tf.float32)}
