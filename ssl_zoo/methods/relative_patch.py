"""Relative patch location, "context prediction" (Doersch, Gupta & Efros, ICCV 2015): given a centre
patch and one of its eight neighbours, predict which neighbour it is. "We argue that doing well on
this task requires the model to learn to recognize objects and their parts" (Sec. 1).

Composition only: the per-example transform `ssl_zoo.pretext.relative_patch.relative_patch_example`
(two patches with a gap and jitter, chromatic-aberration defence, label = neighbour index), a
siamese backbone (one backbone, shared weights, over both patches; "the two patches are processed
by ... networks with tied weights ... fused" after fc6, Fig. 3), fusion = concatenation of the two
patches' features (pooled, or the paper's per-patch fc6 on the unpooled map) followed by an MLP,
an 8-way softmax, cross-entropy; the default step trains it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras

from ssl_zoo.backbones.resnet import IMAGENET_MEAN
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import classification_head
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.methods.views import FUSIONS, shared_backbone_over_views
from ssl_zoo.pretext.relative_patch import (CHROMA_DEFENCES, NUM_NEIGHBOURS, PLACEMENTS,
                                             relative_patch_example)


@dataclasses.dataclass
class RelativePatch(PretextMethod):
    name: ClassVar[str] = "relative_patch"
    # The paper: 96 px patches, a gap of 48 px, jitter up to 7 px, in images of 150k-450k pixels.
    # On 96 px images: 3 x 24 + 2 x 8 + 2 x 3 = 94 px; the gap stays a third of a patch.
    patch_size: int = 24
    gap: int = 8
    jitter: int = 3
    chroma_defence: str = "channel_drop"  # "channel_drop" | "grey" | "none"
    # "pair": the centre goes anywhere its neighbour fits; "grid": the whole 3x3 grid must fit,
    # which on 96 px images lets one patch's place in the photo give the label away (see the
    # transform's module docstring).
    placement: str = "pair"
    head_hidden_units: tuple[int, ...] = (512, 512)
    # What each patch contributes before fusion (`ssl_zoo.methods.views`): "pooled" features (the
    # released entries) or "spatial", the paper's per-patch fc6 on the unpooled last-stage map,
    # which keeps where in the patch a feature lies; `per_view_units` is that fc6's width.
    fusion: str = "pooled"
    per_view_units: int = 512

    def __post_init__(self):
        if self.chroma_defence not in CHROMA_DEFENCES:
            raise ConfigError(f"chroma_defence must be one of {CHROMA_DEFENCES}, got {self.chroma_defence!r}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        size = self.backbone.get("image_size")
        if size is not None and size != self.patch_size:
            raise ConfigError(f"backbone image_size {size} must equal patch_size {self.patch_size}")
        self.head_hidden_units = tuple(self.head_hidden_units)

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        head = classification_head(NUM_NEIGHBOURS, self.head_hidden_units)
        return shared_backbone_over_views(backbone, head, 2, self.patch_size, input_name="patches",
                                          fusion=self.fusion, per_view_units=self.per_view_units)

    def example_transform(self, image, size: int, seed, training: bool = True):
        return relative_patch_example(
            image, seed, crop_size=size, patch_size=self.patch_size, gap=self.gap, jitter=self.jitter,
            training=training, chroma_defence=self.chroma_defence, placement=self.placement,
            mean=tuple(self.backbone.get("mean", IMAGENET_MEAN)),
        )
