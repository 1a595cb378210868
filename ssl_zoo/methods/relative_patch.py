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
import numpy as np

from ssl_zoo.backbones.resnet import IMAGENET_MEAN
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import classification_head
from ssl_zoo.image_grid import Picture, PictureRow, for_display, mosaic
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.methods.relative_patch_diagnostics import card_lines, run_context_check
from ssl_zoo.methods.views import FUSIONS, shared_backbone_over_views
from ssl_zoo.pretext.relative_patch import (CHROMA_DEFENCES, NUM_NEIGHBOURS, OFFSETS, PLACEMENTS,
                                             relative_patch_example)


def _card_limitation(config: dict) -> str:
    # Depends on the run's chromatic-aberration defence (channel drop was the only one at first).
    return "The backbone was trained on small patches, not whole images" + {
        "channel_drop": ", and mostly on single colour channels (the chromatic-aberration defence).",
        "grey": ", with the green-magenta colour axis projected out (the chromatic-aberration defence).",
    }.get(config.get("chroma_defence", "channel_drop"), ".")


@dataclasses.dataclass
class RelativePatch(PretextMethod):
    name: ClassVar[str] = "relative_patch"
    card: ClassVar[MethodCard] = MethodCard(
        title="Relative patch location",
        paper="Doersch, Gupta & Efros, \"Unsupervised Visual Representation Learning by Context "
              "Prediction\", ICCV 2015 (arXiv:1505.05192)",
        paragraph="A centre patch and one of its eight neighbours are cut from an image with a gap and a "
                  "random jitter between them (so low-level cues such as continuing lines do not give the "
                  "answer away), and the network predicts which of the eight positions the second patch came "
                  "from. Against chromatic aberration, a lens cue that reveals where a patch sits in the "
                  "frame, two colour channels are dropped and replaced with noise (or the patches are "
                  "projected towards grey, a parameter). Both patches go through the same backbone; their "
                  "features are concatenated and an MLP classifies the position. The backbone alone is "
                  "released.",
        pretext_classes=NUM_NEIGHBOURS,
        limitation=_card_limitation,
        view_size_field="patch_size",
    )
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
        self.require_choice("chroma_defence", CHROMA_DEFENCES)
        self.require_choice("fusion", FUSIONS)
        self.require_choice("placement", PLACEMENTS)
        size = self.backbone.get("image_size")
        if size is not None and size != self.patch_size:
            raise ConfigError(f"backbone image_size {size} must equal patch_size {self.patch_size}")
        self.head_hidden_units = tuple(self.head_hidden_units)

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        head = classification_head(NUM_NEIGHBOURS, self.head_hidden_units)
        return shared_backbone_over_views(backbone, head, 2, self.patch_size, input_name="patches",
                                          fusion=self.fusion, per_view_units=self.per_view_units)

    def example_transform(self, image, size: int, seed, training: bool = True, index=None):
        del index
        patches, neighbour = relative_patch_example(
            image, seed, crop_size=size, patch_size=self.patch_size, gap=self.gap, jitter=self.jitter,
            training=training, chroma_defence=self.chroma_defence, placement=self.placement,
            mean=tuple(self.backbone.get("mean", IMAGENET_MEAN)),
        )
        return {"inputs": patches, "targets": neighbour}

    def pretext_picture(self, source, split: str, image_size: int, backbone=None) -> Picture:
        batch = self.pretext_batch(source, split, image_size, batch_size=6)
        pairs = for_display(batch["inputs"])
        placed = []
        for (centre, neighbour), label in zip(pairs, batch["targets"]):
            cells = np.full((9,) + centre.shape, 255.0, np.float32)
            dr, dc = OFFSETS[label]
            cells[4], cells[4 + 3 * dr + dc] = centre, neighbour
            placed.append(mosaic(cells))
        captions = [f"class {int(t)}: {neighbour_name(OFFSETS[t])}" for t in batch["targets"]]
        return Picture(f"Relative patch location: a centre patch and one of its {NUM_NEIGHBOURS} neighbours; the "
                       f"network names where the neighbour was ({NUM_NEIGHBOURS}-way)",
                       [PictureRow("centre", pairs[:, 0]), PictureRow("neighbour", pairs[:, 1], captions),
                        PictureRow("where the label puts it", np.stack(placed))])

    # ---- diagnostics (`ssl-zoo diagnose`, the card) ------------------------------------------------
    def diagnose(self, run_dir, *, recipe, data_dir=None, split: str | None = None,
                 max_examples: int | None = None, batch_size: int = 200) -> dict:
        """{"context_check": report}: does the trained pretext model of `run_dir` need its centre
        patch? (`ssl_zoo.methods.relative_patch_diagnostics`.)"""
        return {"context_check": run_context_check(self, run_dir, recipe, data_dir=data_dir, split=split,
                                                   max_examples=max_examples, batch_size=batch_size)}

    @staticmethod
    def card_diagnostics(diagnostics: dict) -> list[str]:
        return card_lines(diagnostics)


def neighbour_name(offset) -> str:
    """(row, column) offset of a neighbour -> its place in words: (-1, 1) -> "above right"."""
    vertical = {-1: "above", 0: "", 1: "below"}[offset[0]]
    horizontal = {-1: "left", 0: "", 1: "right"}[offset[1]]
    return " ".join(w for w in (vertical, horizontal) if w)
