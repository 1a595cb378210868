"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016): predict which permutation of a fixed set shuffled
the nine tiles of a crop. "The CFN ... is a siamese-ennead CNN ... the tiles are processed
independently ... up to the first fully connected layer" and only then combined (Sec. 3.1): a
context-free network, so no layer can compare pixels across tile borders.

Composition only: the per-example transform `ssl_zoo.pretext.jigsaw.jigsaw_example` (crop ->
3x3 grid of jittered, per-tile normalised and colour-jittered tiles in permuted order, label =
permutation index), one backbone shared by the nine tiles, their pooled features concatenated in
tile order, an MLP classifier over the N permutations, cross-entropy; the default step trains it.

The permutation set is part of the method's configuration: `permutations` holds it (one
9-digit string per class, in class order), generated deterministically from
(`num_permutations`, `permutation_seed`) when not given. It is therefore written with the run
(`run.json`), and a model can be re-paired with exactly the set it was trained on even if the
generator changed; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import numpy as np

from ssl_zoo.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import classification_head
from ssl_zoo.image_grid import Picture, PictureRow, for_display, mosaic
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.methods.views import FUSIONS, shared_backbone_over_views
from ssl_zoo.pretext.jigsaw import (
    NUM_TILES,
    decode_permutations,
    encode_permutations,
    jigsaw_example,
    maximal_hamming_permutations,
)
from ssl_zoo.train.recipe import at_least


@dataclasses.dataclass
class Jigsaw(PretextMethod):
    name: ClassVar[str] = "jigsaw"
    card: ClassVar[MethodCard] = MethodCard(
        title="Jigsaw puzzles",
        paper="Noroozi & Favaro, \"Unsupervised Learning of Visual Representations by Solving Jigsaw "
              "Puzzles\", ECCV 2016 (arXiv:1603.09246)",
        paragraph="A crop of each image is cut into a 3x3 grid; one tile is taken inside every cell at a "
                  "random offset (so tiles never share an edge and their borders cannot simply be matched), "
                  "normalised on its own and sometimes turned grey (so colour cannot tell neighbours apart). "
                  "The tiles are shuffled by one permutation of a fixed set chosen for maximal minimum "
                  "Hamming distance, and the network classifies which permutation it sees. Every tile goes "
                  "through the same backbone (shared weights); the tile features are concatenated in input "
                  "order and an MLP classifies the permutation. The backbone alone is released; the "
                  "permutation set is part of the method configuration below.",
        pretext_classes="num_permutations",  # the configuration field that holds it
        limitation="The backbone was trained on small tiles, not whole images: it has seen objects only in "
                   "parts, at the tile scale.",
        view_size_field="tile_size",
    )
    # "we use ... a set of 1000 permutations" is the paper's default; 100 is its cheaper setting
    # with a larger minimum Hamming distance (Table 3); both work here.
    num_permutations: int = 100
    permutation_seed: int = at_least(0, 0)
    # The set itself, filled from the two fields above when None; see the module docstring.
    permutations: tuple[str, ...] | None = None
    # Tiles are cut inside cells of crop_size // 3 (crop_size = the data's image_size). The paper
    # cuts 64 px tiles in 75 px cells (a gap of 11 px on average); 28 in 32 keeps that ratio.
    tile_size: int = 28
    jitter: bool = True
    grey_probability: float = 0.3
    saturation: tuple[float, float] = (0.4, 1.6)
    head_hidden_units: tuple[int, ...] = (512,)
    # What each tile contributes before fusion (`ssl_zoo.methods.views`): "pooled" features (the
    # released entry) or "spatial", the paper's per-tile fc6 on the unpooled last-stage map.
    fusion: str = "pooled"
    per_view_units: int = 512

    def __post_init__(self):
        if self.permutations is None:
            perms = maximal_hamming_permutations(self.num_permutations, self.permutation_seed)
            self.permutations = encode_permutations(perms)
        else:
            perms = decode_permutations(self.permutations)
            if len(perms) != self.num_permutations:
                raise ConfigError(
                    f"{len(perms)} permutations given but num_permutations={self.num_permutations}"
                )
            self.permutations = encode_permutations(perms)
        self._perms = perms
        self.require_choice("fusion", FUSIONS)
        size = self.backbone.get("image_size")
        if size is not None and size != self.tile_size:
            raise ConfigError(f"backbone image_size {size} must equal the jigsaw tile_size {self.tile_size}")
        self.saturation = tuple(self.saturation)
        self.head_hidden_units = tuple(self.head_hidden_units)

    @property
    def permutation_array(self):
        """The permutation set as int32 [num_permutations, 9]; row = class index."""
        return self._perms

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        head = classification_head(self.num_permutations, self.head_hidden_units)
        return shared_backbone_over_views(backbone, head, NUM_TILES, self.tile_size, input_name="tiles",
                                          fusion=self.fusion, per_view_units=self.per_view_units)

    def example_transform(self, image, size: int, seed, training: bool = True, index=None):
        del index
        tiles, permutation = jigsaw_example(
            image, seed, self._perms, crop_size=size, tile_size=self.tile_size, training=training,
            jitter=self.jitter, grey_probability=self.grey_probability, saturation=self.saturation,
            mean=tuple(self.backbone.get("mean", IMAGENET_MEAN)),
            std=tuple(self.backbone.get("std", IMAGENET_STD)),
        )
        return {"inputs": tiles, "targets": permutation}

    def pretext_picture(self, source, split: str, image_size: int, backbone=None) -> Picture:
        batch = self.pretext_batch(source, split, image_size, batch_size=6)
        given, solved = [], []
        for tiles, label in zip(for_display(batch["inputs"]), batch["targets"]):
            given.append(mosaic(tiles))
            placed = np.empty_like(tiles)
            placed[self._perms[label]] = tiles  # tile i belongs in grid cell permutation[i]
            solved.append(mosaic(placed))
        captions = [f"class {int(t)}: {''.join(map(str, self._perms[t]))}" for t in batch["targets"]]
        return Picture(f"Jigsaw: the nine tiles in the order the network gets them (each normalised on its own); "
                       f"it names the permutation among {self.num_permutations}",
                       [PictureRow("tiles as given", np.stack(given), captions),
                        PictureRow("put back by the label", np.stack(solved))])
