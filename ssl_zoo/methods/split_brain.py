"""Split-brain autoencoder (Zhang, Isola & Efros, CVPR 2017, "Split-Brain Autoencoders:
Unsupervised Learning by Cross-Channel Prediction"): cut the network in two halves along its
channels; one half sees the grey level and predicts the colour, the other sees the colour and
predicts the grey level; both predictions are classifications over quantised values. The features
of the two halves, concatenated, are the representation.

Colorization's composition twice over (it subclasses `Colorization`: the same ab bins from the
training data, soft-encoded targets, annealed-mean pictures, held-out check), on the split backbone
`split_resnet` (two half-width ResNets: the grey half behind the fixed Rec. 709 luma front, the
colour half behind a fixed chroma front B - Y, R - Y; every stage the two halves' channels
concatenated under the usual stage names):

- L -> ab: the grey half's last stage, upsampled x2, classifies each position's ab over the
  in-gamut bins (soft-encoded; `rebalance_lambda` 1 by default: no class rebalancing, the paper's
  plain classification loss);
- ab -> L: the colour half's last stage the same way classifies each position's L* into `l_bins`
  equal bins of [0, 100];
- the loss is their sum.

Where the paper feeds its halves L* and ab of CIE Lab (non-linear functions that stock layers cannot
compute), the released backbone's fronts are the linear luma and colour-difference signals of the
same RGB; the targets are CIE Lab, as in the paper.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.backbones import SPLIT_PREFIXES, last_stage_side
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD
from ssl_zoo.methods.card import MethodCard, pct
from ssl_zoo.methods.colorization import LAST_STAGE, Colorization, colour_head
from ssl_zoo.pretext.colorization import rgb_to_lab

LIGHTNESS_HEAD = "lightness_head"
L_MAX = 100.0  # L* of white


def lightness_bins(lightness, bins: int) -> tf.Tensor:
    """L* in [0, 100] -> the index of its bin among `bins` equal ones (int32, same shape)."""
    index = tf.floor(tf.cast(lightness, tf.float32) * (bins / L_MAX))
    return tf.clip_by_value(tf.cast(index, tf.int32), 0, bins - 1)


@dataclasses.dataclass
class SplitBrain(Colorization):
    name: ClassVar[str] = "split_brain"
    card: ClassVar[MethodCard] = MethodCard(
        title="Split-brain autoencoder",
        paper="Zhang, Isola & Efros, \"Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel "
              "Prediction\", CVPR 2017 (arXiv:1611.09842)",
        paragraph="The backbone is two ResNets of half the width side by side. One sees the grey level of the "
                  "image (Rec. 709 luma) and predicts the colour of every position as a class among the ab "
                  "bins of CIE Lab (squares of side 10 that the training images occupy, soft-encoded over the "
                  "5 nearest); the other sees only the colour (the fixed colour-difference signals B - Y and "
                  "R - Y) and predicts the lightness L* as one of equal bins of [0, 100]. The loss is the sum of "
                  "the two cross-entropies. Both heads are dropped after training; the released backbone takes "
                  "RGB and every stage is the two halves' features concatenated (grey half's channels first) "
                  "under the usual stage names.",
        pretext_eval="the held-out {split} split of {data}: the fraction of positions whose most likely ab bin "
                     "(grey half) is the true colour's nearest bin",
        limitation="Each half is trained on a part of the signal only (grey, or colour without grey); the "
                   "concatenation is only as good as the weaker half at tasks that need both at once.",
        view_size_field="image_size",
    )
    head_hidden_units: int = 64
    l_bins: int = 50
    rebalance_lambda: float = 1.0

    def __post_init__(self):
        if self.backbone.get("arch", "resnet") != "split_resnet":
            raise ConfigError("[backbone] arch must be \"split_resnet\" for split_brain (two half-width networks, "
                              "one on grey and one on colour)")
        self.require_positive("image_size", "head_hidden_units", "gamut_images", "l_bins")
        last_stage_side(self.backbone, self.image_size, self.name)  # refuses a size the stride does not divide
        self.gamut = None
        self.batch_transform = self.with_targets

    # ---- data -----------------------------------------------------------------------------------
    def targets_of(self, views) -> dict[str, tf.Tensor]:
        """Views -> both halves' targets on the heads' grid: ab (grey half) and L* (colour half)."""
        lab = tf.image.resize(rgb_to_lab(views), [self.target_size] * 2, method="area")
        return {"ab": lab[..., 1:], "lightness": lab[..., 0]}

    # ---- composition ----------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        gamut = self.require_gamut()
        backbone = self.build_backbone()
        grey_half, colour_half = (f"{prefix}{LAST_STAGE}" for prefix in SPLIT_PREFIXES)
        # Same layers and name as the backbone, the halves' last-stage maps as more outputs
        # (`extract_backbone` keeps only the pooled output at export).
        with_maps = keras.Model(backbone.input, {"pooled": backbone.output,
                                                 grey_half: backbone.get_layer(grey_half).output,
                                                 colour_half: backbone.get_layer(colour_half).output},
                                name=backbone.name)
        inputs = keras.Input((self.image_size, self.image_size, 3), name="images")
        maps = with_maps(inputs)
        return keras.Model(inputs, {
            "ab": colour_head(gamut.num_bins, self.head_hidden_units, name=PRETEXT_HEAD)(maps[grey_half]),
            "lightness": colour_head(self.l_bins, self.head_hidden_units, name=LIGHTNESS_HEAD)(maps[colour_half]),
        }, name="pretext_model")

    @staticmethod
    def ab_part(targets, outputs):
        return targets["ab"], outputs["ab"]

    # ---- loss and metrics -----------------------------------------------------------------------
    def _lightness_loss(self, targets, outputs):
        per_position = losses.sparse_cross_entropy(lightness_bins(targets["lightness"], self.l_bins),
                                                   outputs["lightness"])
        return tf.reduce_mean(per_position, axis=(1, 2))

    def loss(self, targets, outputs):
        """Per image: the L -> ab soft cross-entropy + the ab -> L cross-entropy, each the mean over
        positions."""
        return super().loss(targets["ab"], outputs["ab"]) + self._lightness_loss(targets, outputs)

    def metrics(self, targets, outputs, per_example) -> dict[str, tf.Tensor]:
        """Sums over images of: the loss and each half's ("colour_loss", "lightness_loss"), the
        grey half's `ab_metrics` ("accuracy" is its bin accuracy), and the colour half's bin
        accuracy ("lightness_accuracy")."""
        lightness_loss = self._lightness_loss(targets, outputs)
        top = tf.argmax(outputs["lightness"], -1, output_type=tf.int32)
        right = tf.equal(top, lightness_bins(targets["lightness"], self.l_bins))
        return {
            "loss_sum": tf.reduce_sum(per_example),
            "colour_loss_sum": tf.reduce_sum(per_example - lightness_loss),
            "lightness_loss_sum": tf.reduce_sum(lightness_loss),
            **self.ab_metrics(targets["ab"], outputs["ab"]),
            "lightness_accuracy_sum": tf.reduce_sum(tf.reduce_mean(tf.cast(right, tf.float32), (1, 2))),
            "count": tf.cast(tf.shape(per_example)[0], tf.float32),
        }

    # ---- what it learned ------------------------------------------------------------------------
    def held_out_extra(self, targets, outputs) -> dict[str, Any]:
        """The colour half on the held-out pass: its right positions and the histogram of the true
        L* bins (whose largest count is the best any constant answer could score)."""
        truth = lightness_bins(targets["lightness"], self.l_bins)
        top = tf.argmax(outputs["lightness"], -1, output_type=tf.int32)
        return {"lightness_right": float(tf.reduce_sum(tf.cast(tf.equal(top, truth), tf.float32))),
                "lightness_positions": float(tf.size(truth)),
                "lightness_histogram": np.bincount(truth.numpy().ravel(), minlength=self.l_bins).astype(np.float64)}

    def held_out_reports(self, extra: dict, split: str) -> dict[str, dict]:
        positions = extra["lightness_positions"]
        return {"lightness_check": {
            "split": split, "l_bins": self.l_bins, "accuracy": extra["lightness_right"] / positions,
            "commonest_bin_accuracy": float(extra["lightness_histogram"].max() / positions),
            "uniform_chance": 1.0 / self.l_bins,
        }}

    @staticmethod
    def card_diagnostics(diagnostics: dict) -> list[str]:
        lines = Colorization.card_diagnostics(diagnostics)
        c = diagnostics.get("lightness_check")
        if c:
            lines.append(f"- Held-out lightness from colour (the other half, {c['l_bins']} bins of L*): the top bin is "
                         f"the true one at {pct(c['accuracy'])} of positions, against "
                         f"{pct(c['commonest_bin_accuracy'])} for the commonest bin of these images and "
                         f"{pct(c['uniform_chance'])} for a uniform guess.")
        return lines
