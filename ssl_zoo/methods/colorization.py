"""Colorization (Zhang, Isola & Efros, ECCV 2016, "Colorful Image Colorization"): from the grey
image, predict each pixel's colour as a distribution over the quantised ab plane.

Composition only, on the default step: the transform hands the network an RGB view (the backbone's
fixed grey front, `resnet(grey=True)`, removes its colour) and the view's ab channels at the
head's resolution as the target; the loss soft-encodes them over the in-gamut bins that `prepare`
found in the training data and weights each pixel by the rarity of its colour
(`ssl_zoo.pretext.colorization`). The head upsamples the last stage x2 (1/4 of the input with the
CIFAR stem, the paper's 56 of 224) and classifies every position into the Q bins.

The paper's network sees L*, a cube root of linear luminance; stock Keras layers cannot take a
cube root, so the released backbone (which must take RGB in [0, 255] and load in safe mode on every
backend) sees Rec. 709 luma, the same weights as CIE Y applied to the sRGB values: a lightness
signal with the same colour weighting, without L*'s curve. Training and release see the same grey.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ssl_zoo import losses
from ssl_zoo.backbones import last_stage_side, stage_model
from ssl_zoo.data.augment import AUGMENTATIONS, center_crop
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD
from ssl_zoo.image_grid import draw_image_rows
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.methods import training_curves
from ssl_zoo.methods.card import MethodCard, pct
from ssl_zoo.pretext.colorization import (ANNEAL_T, AbGamut, annealed_mean, lab_to_rgb, rgb_to_lab, soft_encode,
                                          squared_distances)
from ssl_zoo.train.recipe import at_least

log = logging.getLogger(__name__)

LAST_STAGE = "stage4"
HEAD_UPSAMPLING = 2


def colour_head(num_bins: int, hidden_units: int, name: str = PRETEXT_HEAD) -> keras.Sequential:
    """Last stage's map -> x2 bilinear upsampling -> 3x3 conv -> BN -> ReLU -> 1x1 conv to bin logits."""
    return keras.Sequential([
        layers.UpSampling2D(HEAD_UPSAMPLING, interpolation="bilinear", name=f"{name}_upsample"),
        layers.Conv2D(hidden_units, 3, padding="same", use_bias=False, name=f"{name}_conv"),
        layers.BatchNormalization(synchronized=True, name=f"{name}_bn"),
        layers.ReLU(name=f"{name}_relu"),
        layers.Conv2D(num_bins, 1, name=f"{name}_logits"),
    ], name=name)


@dataclasses.dataclass
class Colorization(PretextMethod):
    name: ClassVar[str] = "colorization"
    card: ClassVar[MethodCard] = MethodCard(
        title="Colorization",
        paper="Zhang, Isola & Efros, \"Colorful Image Colorization\", ECCV 2016 (arXiv:1603.08511)",
        paragraph="The network sees a grey image and predicts the colour of every position as a "
                  "distribution over the ab plane of CIE Lab, cut into squares of side 10 of which only "
                  "those the training images occupy are classes. Each target is soft-encoded over its 5 "
                  "nearest bins (Gaussian, sigma 5) and weighted by the inverse of how common its colour "
                  "is (lambda 0.5), so that the network cannot win by predicting the desaturated colours "
                  "that dominate photos. The colour head is dropped after training; the backbone, with "
                  "its fixed RGB-to-grey front (Rec. 709 luma where the paper has L*, which stock layers "
                  "cannot compute), is what this entry releases: it takes RGB and ignores the colour.",
        pretext_eval="the held-out {split} split of {data}: the fraction of positions whose most "
                     "likely bin is the true colour's nearest bin",
        limitation="The backbone never sees colour: downstream tasks that depend on hue (flowers, fruit, "
                   "traffic lights) lose that cue, and the random-init floor it is compared with is the "
                   "same grey network.",
        view_size_field="image_size",
    )
    # The card's loss curves (no single accuracy shows a generative pretext's progress).
    card_training = staticmethod(training_curves.card_lines)
    card_plot = staticmethod(training_curves.card_plot)
    image_size: int = 32
    augment: str = "crop_flip"
    head_hidden_units: int = 128
    gamut_images: int = 5000  # training images whose ab histogram gives the bins and weights
    rebalance_lambda: float = 0.5
    gamut_seed: int = at_least(0, 0)

    def __post_init__(self):
        if self.backbone.get("grey") is False:
            raise ConfigError("[backbone] grey = false: colorization's network must not see colour "
                              "(leave grey out or set it true)")
        self.backbone = {**self.backbone, "grey": True}
        self.require_positive("image_size", "head_hidden_units", "gamut_images")
        last_stage_side(self.backbone, self.image_size, self.name)  # refuses a size the stride does not divide
        self.gamut: AbGamut | None = None
        self.batch_transform = self.with_targets

    # ---- data -----------------------------------------------------------------------------------
    @property
    def target_size(self) -> int:
        """Side of the head's output: the last stage's map, upsampled x2."""
        return last_stage_side(self.backbone, self.image_size, self.name) * HEAD_UPSAMPLING

    def view_ab(self, view) -> tf.Tensor:
        """An RGB view [S, S, 3] in [0, 255] -> its ab channels, area-averaged to the head's grid."""
        lab = rgb_to_lab(view)
        return tf.image.resize(lab[..., 1:], [self.target_size] * 2, method="area")

    def example_transform(self, image, size: int, seed, training: bool = True, index=None) -> dict:
        del index, size  # views are cut at the method's image_size, the size its head's grid assumes
        return {"inputs": AUGMENTATIONS[self.augment if training else "center"](image, self.image_size, seed)}

    def with_targets(self, batch: dict) -> dict:
        """A batch of views -> the views and their targets (`targets_of`). Computed per batch, not per
        image: the Lab conversion is a few dozen small ops whose cost is per call, and per image they
        were most of the input pipeline's time (`benchmarks/step_profile.py`)."""
        return {"inputs": batch["inputs"], "targets": self.targets_of(batch["inputs"])}

    def targets_of(self, views) -> tf.Tensor:
        """Views [B, S, S, 3] -> what the network must predict: their ab on the head's grid."""
        return self.view_ab(views)

    def prepare(self, source, split: str, image_size: int) -> None:
        """The ab bins and their weights, from the first `gamut_images` training images (the
        split read in the order `gamut_seed` shuffles it: the same on every run and resume)."""
        del image_size
        ds = (source.examples(split, shuffle_seed=self.gamut_seed).take(self.gamut_images)
              .map(lambda ex: self.view_ab(center_crop(ex["image"], self.image_size)),
                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256))
        ab = np.concatenate([b.reshape(-1, 2) for b in ds.as_numpy_iterator()] or [np.zeros((0, 2))])
        self.set_gamut(AbGamut.from_ab(ab, rebalance_lambda=self.rebalance_lambda))
        log.info("%s: %d in-gamut ab bins from %d pixels of %s/%s (weights %.2f .. %.2f)",
                 self.name, self.gamut.num_bins, self.gamut.pixels, source.name, split, self.gamut.weights.min(),
                 self.gamut.weights.max())

    def set_gamut(self, gamut: AbGamut) -> None:
        self.gamut = gamut
        self._centres = tf.constant(gamut.centres)
        self._weights = tf.constant(gamut.weights)

    def require_gamut(self) -> AbGamut:
        if self.gamut is None:
            raise ConfigError("colorization has no ab gamut yet: call prepare(source, split, size) with the "
                              "training data (the trainer does) or set_gamut()")
        return self.gamut

    # ---- composition ----------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        gamut = self.require_gamut()
        backbone = self.build_backbone()
        inputs = keras.Input((self.image_size, self.image_size, 3), name="images")
        # Same layers and name as the backbone, one more output: the last stage's map for the head
        # (`extract_backbone` keeps only the pooled output at export).
        with_map = stage_model(backbone, ("pooled", LAST_STAGE), name=backbone.name)
        logits = colour_head(gamut.num_bins, self.head_hidden_units)(with_map(inputs)[LAST_STAGE])
        return keras.Model(inputs, logits, name="pretext_model")

    # ---- loss and metrics -----------------------------------------------------------------------
    def loss(self, targets, outputs):
        """Per image: the mean over positions of the rebalanced soft cross-entropy (eq. 2 and 3)."""
        soft, nearest = soft_encode(targets, self._centres)
        return losses.weighted_soft_cross_entropy(soft, tf.gather(self._weights, nearest), outputs)

    def metrics(self, targets, outputs, per_example) -> dict[str, tf.Tensor]:
        """Sums over images of: the loss, and `ab_metrics`."""
        return {"loss_sum": tf.reduce_sum(per_example), **self.ab_metrics(targets, outputs),
                "count": tf.cast(tf.shape(per_example)[0], tf.float32)}

    def ab_metrics(self, ab, logits) -> dict[str, tf.Tensor]:
        """Sums over images of: the fraction of positions whose top bin is the target's nearest
        ("accuracy"), and the mean ab distance of the annealed-mean colour to the truth
        ("ab_error") next to that of predicting grey, ab = 0 ("grey_ab_error")."""
        # The nearest bin alone: an argmin, not the soft encoding's top-5 (the loss already paid for that).
        nearest = tf.argmin(squared_distances(ab, self._centres), -1, output_type=tf.int32)
        top = tf.argmax(logits, -1, output_type=tf.int32)
        positions = (1, 2)
        return {
            "correct": tf.reduce_sum(tf.reduce_mean(tf.cast(tf.equal(top, nearest), tf.float32), positions)),
            "ab_error_sum": tf.reduce_sum(tf.reduce_mean(tf.norm(annealed_mean(logits, self._centres) - ab, axis=-1),
                                                         positions)),
            "grey_ab_error_sum": tf.reduce_sum(tf.reduce_mean(tf.norm(ab, axis=-1), positions)),
        }

    @staticmethod
    def ab_part(targets, outputs):
        """(ab targets, ab logits) of a batch: all of colorization's; split-brain's L -> ab half."""
        return targets, outputs

    # ---- what it learned ------------------------------------------------------------------------
    def diagnose(self, run_dir, *, recipe, data_dir=None, split: str | None = None, max_examples: int | None = None,
                 batch_size: int = 250, picture: str | Path | None = None, picture_images: int = 12) -> dict:
        """{"colorization_check": report}: on held-out images, the pixel bin accuracy against
        always answering the commonest bin, the annealed-mean colour's ab error against grey's,
        and the gamut; with `picture`, a PNG of grey input / colorized / true colour."""
        from ssl_zoo.methods.held_out import held_out_batches

        batches = held_out_batches(self, run_dir, recipe, data_dir, split, max_examples, batch_size)
        gamut = self.require_gamut()
        commonest = int(np.argmax(gamut.prior))
        sums = dict.fromkeys(("loss_sum", "correct", "ab_error_sum", "grey_ab_error_sum", "count", "weighted_right",
                              "weighted_commonest", "weight_total"), 0.0)
        commonest_correct, shown = 0.0, None
        extra: dict[str, Any] = {}
        for batch, outputs in batches:
            ab, logits = self.ab_part(batch["targets"], outputs)
            soft, nearest = soft_encode(ab, self._centres)
            colour_loss = losses.weighted_soft_cross_entropy(soft, tf.gather(self._weights, nearest), logits)
            for k, v in {"loss_sum": tf.reduce_sum(colour_loss), **self.ab_metrics(ab, logits),
                         "count": tf.shape(logits)[0]}.items():
                sums[k] += float(v)
            commonest_correct += float(tf.reduce_sum(tf.reduce_mean(tf.cast(tf.equal(nearest, commonest),
                                                                             tf.float32), (1, 2))))
            # The same two accuracies with each position weighted by its colour's rebalancing weight:
            # what the rebalanced loss asks for (rare colours count more; with lambda = 1, the same).
            weight = tf.gather(self._weights, nearest)
            top = tf.argmax(logits, -1, output_type=tf.int32)
            sums["weighted_right"] += float(tf.reduce_sum(weight * tf.cast(tf.equal(top, nearest), tf.float32)))
            sums["weighted_commonest"] += float(tf.reduce_sum(weight * tf.cast(tf.equal(nearest, commonest),
                                                                                tf.float32)))
            sums["weight_total"] += float(tf.reduce_sum(weight))
            for k, v in self.held_out_extra(batch["targets"], outputs).items():
                extra[k] = extra.get(k, 0) + v
            if shown is None:
                shown = (batch["inputs"][:picture_images].numpy(), logits[:picture_images].numpy())
        split = split or recipe.data.eval_split
        n = sums.pop("count")
        if n == 0:
            raise ConfigError(f"colorization check: no images in split {split!r}")
        report: dict[str, Any] = {
            "examples": int(n), "data": recipe.data.source, "split": split,
            "accuracy": sums["correct"] / n, "commonest_bin_accuracy": commonest_correct / n,
            "uniform_chance": 1.0 / gamut.num_bins, "loss": sums["loss_sum"] / n,
            "ab_error": sums["ab_error_sum"] / n, "grey_ab_error": sums["grey_ab_error_sum"] / n,
            "num_bins": gamut.num_bins, "gamut_pixels": gamut.pixels,
            "weights": [float(gamut.weights.min()), float(gamut.weights.max())],
            "rebalanced_accuracy": sums["weighted_right"] / sums["weight_total"],
            "rebalanced_commonest_bin_accuracy": sums["weighted_commonest"] / sums["weight_total"],
            "annealed_mean_temperature": ANNEAL_T,
            "method": {k: v for k, v in self.config().items() if k != "backbone"},
        }
        if picture is not None and shown is not None:
            draw_colorizations(shown[0], shown[1], gamut, Path(picture), self.target_size)
            report["picture"] = Path(picture).name
        return {"colorization_check": report, **self.held_out_reports(extra, split)}

    def held_out_extra(self, targets, outputs) -> dict[str, Any]:
        """Sums a subclass adds to the held-out pass (split-brain's other half). None here."""
        del targets, outputs
        return {}

    def held_out_reports(self, extra: dict, split: str) -> dict[str, dict]:
        """Reports a subclass makes of its `held_out_extra` sums. None here."""
        del extra, split
        return {}

    @staticmethod
    def card_diagnostics(diagnostics: dict) -> list[str]:
        c = diagnostics.get("colorization_check")
        if not c:
            return []
        lines = [f"- Held-out colorization (`ssl-zoo diagnose`, {c['examples']} images of `{c['split']}`, "
                 f"{c['num_bins']} in-gamut bins): the top bin is the true colour's at {pct(c['accuracy'])} of "
                 f"positions, against {pct(c['commonest_bin_accuracy'])} for always answering the commonest bin "
                 f"and {pct(c['uniform_chance'])} for a uniform guess"
                 + (f" (weighting each position by its colour's rebalancing weight, as the loss does: "
                    f"{pct(c['rebalanced_accuracy'])} against {pct(c['rebalanced_commonest_bin_accuracy'])})"
                    if "rebalanced_accuracy" in c and c["weights"][0] != c["weights"][1] else "")
                 + "; the annealed-mean colour "
                 f"(T = {c['annealed_mean_temperature']}) is {c['ab_error']:.2f} ab units from the truth, "
                 f"predicting grey {c['grey_ab_error']:.2f}."]
        return lines


def draw_colorizations(views: np.ndarray, logits: np.ndarray, gamut: AbGamut, path: Path, target_size: int) -> Path:
    """Rows of held-out images: the grey the network saw, its colorization (its annealed-mean ab
    upsampled onto the true L), the true colour."""
    lab = rgb_to_lab(views).numpy()
    ab = tf.image.resize(annealed_mean(logits, gamut.centres), views.shape[1:3], method="bilinear").numpy()
    grey = lab_to_rgb(np.concatenate([lab[..., :1], np.zeros_like(ab)], -1)).numpy()
    coloured = lab_to_rgb(np.concatenate([lab[..., :1], ab], -1)).numpy()
    return draw_image_rows([("grey input (L)", grey), ("colorized", coloured), ("true colour", views)],
                           f"colorization on held-out images (annealed mean, T = {ANNEAL_T}; "
                           f"predicted at {target_size}x{target_size})", path)
