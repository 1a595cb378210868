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
from ssl_zoo.image_grid import Picture, PictureRow
from ssl_zoo.methods.base import PretextMethod, single_view_classifier
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.pretext.rotation import NUM_ROTATIONS, rotate_batch


@dataclasses.dataclass
class RotNet(PretextMethod):
    name: ClassVar[str] = "rotnet"
    card: ClassVar[MethodCard] = MethodCard(
        title="RotNet",
        paper="Gidaris, Singh & Komodakis, \"Unsupervised Representation Learning by Predicting Image "
              "Rotations\", ICLR 2018 (arXiv:1803.07728)",
        paragraph="Every training image is shown at 0, 90, 180 and 270 degrees and the network is trained "
                  "to classify which rotation it sees. No human label is used: to recognise the rotation "
                  "\"the ConvNet model must learn to localize salient objects in the image, recognize their "
                  "orientation and object type\" (Sec. 1). The rotation head is dropped after training; "
                  "the backbone's features are what this entry releases.",
        pretext_classes=4,
        limitation="RotNet's features depend on images having a canonical orientation; rotation-invariant "
                   "data (aerial, microscopy) gives the pretext task no signal.",
        view_size_field="image_size",
    )
    head_hidden_units: tuple[int, ...] = (256,)
    image_size: int | None = None

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        head = classification_head(NUM_ROTATIONS, tuple(self.head_hidden_units))
        return single_view_classifier(backbone, head, self.image_size)

    def __post_init__(self):
        self.batch_transform = self.rotations

    @staticmethod
    def rotations(batch: dict) -> dict:
        """A batch of B views -> its 4B rotations, labelled by rotation (`rotate_batch`)."""
        inputs, targets = rotate_batch(batch["inputs"])
        return {"inputs": inputs, "targets": targets}

    def pretext_picture(self, source, split: str, image_size: int, backbone=None) -> Picture:
        batch = self.pretext_batch(source, split, image_size, batch_size=6)
        inputs, images = batch["inputs"], len(batch["index"])
        return Picture(f"RotNet: each image in its {NUM_ROTATIONS} rotations, one batch; the network names the "
                       f"rotation ({NUM_ROTATIONS}-way)",
                       [PictureRow(f"label {r}: {90 * r} deg", inputs[r * images:(r + 1) * images])
                        for r in range(NUM_ROTATIONS)])
