"""RotNet (Gidaris, Singh & Komodakis, ICLR 2018): predict which of 0/90/180/270 degrees an image
was rotated by. "in order to ... recognize the rotation ... the ConvNet model must learn to
localize salient objects in the image, recognize their orientation and object type" (Sec. 1).

Composition only: the rotation batch transform, a 4-way classification head on the pooled
features, cross-entropy; the shared loop's default step trains it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras

from ssl_zoo.heads import classification_head
from ssl_zoo.methods.base import PretextMethod, single_view_classifier
from ssl_zoo.pretext.rotation import NUM_ROTATIONS, rotate_batch


@dataclasses.dataclass
class RotNet(PretextMethod):
    name: ClassVar[str] = "rotnet"
    head_hidden_units: tuple[int, ...] = (256,)
    image_size: int | None = None

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        head = classification_head(NUM_ROTATIONS, tuple(self.head_hidden_units))
        return single_view_classifier(backbone, head, self.image_size)

    def __post_init__(self):
        self.batch_transform = rotate_batch
