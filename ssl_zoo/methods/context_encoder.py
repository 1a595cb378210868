"""Context encoder (Pathak, Krähenbühl, Donahue, Darrell & Efros, CVPR 2016, "Context Encoders:
Feature Learning by Inpainting"): hide a region of the image and make an encoder-decoder paint
it back, against a masked L2 loss and, so that it does not settle for the blurry average of what
could be there, a discriminator.

Composition plus its own step with two optimizers, "generator" (encoder + decoder) and
"discriminator" (`ssl_zoo.methods.adversarial`, kept in the method state):

- the transform (`ssl_zoo.pretext.inpainting`) hides a central square or a random region of
  `hole_area` of each view with the backbone's mean colour (which its normalisation maps to 0),
  and hands the true view and the hole as the target;
- the encoder is the backbone up to its last stage; the decoder a channel-wise fully connected
  layer (the paper's bridge that lets every position of the map see every other) and x2
  transposed convolutions back to the image, tanh, in [-1, 1];
- the generator's loss is `reconstruction_weight` x the masked L2 (the hole, and a ring of
  `overlap` visible pixels weighted `overlap_weight`) + `adversarial_weight` x the non-saturating
  GAN loss of the discriminator on the completed image (real pixels outside the hole); 0.999 /
  0.001 as in the paper. The discriminator then takes its own step on real views against the
  completed images.

The released backbone is the encoder, taking RGB in [0, 255] as every entry's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ssl_zoo import losses
from ssl_zoo.backbones import last_stage_side, stage_model
from ssl_zoo.backbones.resnet import IMAGENET_MEAN
from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD
from ssl_zoo.image_grid import draw_image_rows
from ssl_zoo.methods.adversarial import ImageDiscriminatorSteps, to_rgb_range, to_unit_range
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.methods import training_curves
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.pretext.inpainting import MASKS, fill_hole, loss_weights, make_mask, masked_l2

log = logging.getLogger(__name__)

LAST_STAGE = "stage4"
DECODER = PRETEXT_HEAD  # the pretext head: dropped at export like every head


def inpainting_decoder(map_size: int, channels: int, upsamplings: int, base_channels: int,
                       name: str = DECODER) -> keras.Sequential:
    """Last stage's map [m, m, C] -> image [m 2^u, m 2^u, 3] in [-1, 1]: channel-wise fully
    connected (each channel's m x m map to m x m, its own weights per channel, Pathak et al.
    Sec. 3.1), a 1x1 convolution to mix the channels, then per x2 step a 4x4 transposed
    convolution + BN + ReLU (channels halving down to `base_channels`), and a 3x3 convolution +
    tanh to RGB."""
    positions = map_size * map_size
    stack: list = [
        layers.Reshape((positions, channels), name=f"{name}_flatten"),
        layers.EinsumDense("bpc,pqc->bqc", output_shape=(positions, channels), bias_axes="qc",
                           name=f"{name}_channelwise_fc"),
        layers.Reshape((map_size, map_size, channels), name=f"{name}_unflatten"),
        layers.ReLU(name=f"{name}_fc_relu"),
        layers.Conv2D(channels, 1, name=f"{name}_mix"),
    ]
    for i in range(upsamplings):
        width = base_channels * 2 ** (upsamplings - 1 - i)
        stack += [
            layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"{name}_up{i}"),
            layers.BatchNormalization(synchronized=True, name=f"{name}_bn{i}"),
            layers.ReLU(name=f"{name}_relu{i}"),
        ]
    stack.append(layers.Conv2D(3, 3, padding="same", activation="tanh", name=f"{name}_rgb"))
    return keras.Sequential(stack, name=name)


@dataclasses.dataclass
class ContextEncoder(ImageDiscriminatorSteps, PretextMethod):
    name: ClassVar[str] = "context_encoder"
    generated_part: ClassVar[str] = "completed"
    card: ClassVar[MethodCard] = MethodCard(
        title="Context encoder",
        paper="Pathak, Krähenbühl, Donahue, Darrell & Efros, \"Context Encoders: Feature Learning by "
              "Inpainting\", CVPR 2016 (arXiv:1604.07379)",
        paragraph="A region of every training image (a random smooth region or the central square, a quarter "
                  "of the area) is painted over with the mean colour; the backbone encodes what is left, a "
                  "decoder (channel-wise fully connected bridge, transposed convolutions) paints the region "
                  "back, and the loss is 0.999 x the squared error in the region (and 10 x on a 1-pixel ring "
                  "around it) + 0.001 x the adversarial loss of a discriminator that tells completed images "
                  "from real ones, trained in turn with its own optimizer. Decoder and discriminator are "
                  "dropped after training; the encoder is the released backbone.",
        pretext_eval="the held-out {split} split of {data}: the squared error per hidden value (pixels in "
                     "[-1, 1]) against that of the mean-colour fill the encoder saw",
        limitation="Inpainting rewards low-level continuation (edges and colours across the hole's border) "
                   "as much as recognising the object, and the encoder is trained on images with a hole, "
                   "never on whole ones: expect its early stages to be its best.",
        view_size_field="image_size",
    )
    # The card's loss curves (no single accuracy shows a generative pretext's progress).
    card_training = staticmethod(training_curves.card_lines)
    card_plot = staticmethod(training_curves.card_plot)
    image_size: int = 32
    augment: str = "crop_flip"
    mask: str = "random_region"  # Pathak et al.'s better features came from random regions
    hole_area: float = 0.25
    overlap: int = 1  # visible pixels around the hole the decoder must also paint (4 at 128 px)
    overlap_weight: float = 10.0
    decoder_channels: int = 32  # at full resolution, doubling per x2 step towards the encoder
    discriminator_widths: tuple[int, ...] = (32, 64, 128)
    reconstruction_weight: float = 0.999
    adversarial_weight: float = 0.001

    def __post_init__(self):
        self.require_positive("image_size", "decoder_channels")
        self.require_choice("mask", MASKS)
        if not 0.0 < self.hole_area < 1.0:
            raise ConfigError(f"[method] context_encoder hole_area must be in (0, 1), got {self.hole_area}")
        if self.overlap < 0 or self.overlap_weight < 0 or self.reconstruction_weight < 0 or self.adversarial_weight < 0:
            raise ConfigError("[method] context_encoder overlap, overlap_weight and the loss weights must be >= 0")
        self.discriminator_widths = tuple(self.discriminator_widths)
        last_stage_side(self.backbone, self.image_size, self.name)  # refuses a size the stride does not divide
        if self.mask == "center":
            make_mask("center", self.image_size, None, self.hole_area)  # refuses a hole that hides nothing

    # ---- data -----------------------------------------------------------------------------------
    @property
    def fill_rgb(self) -> tf.Tensor:
        """The hole's colour: the backbone's normalisation mean, so the encoder sees 0 there."""
        return tf.constant([255.0 * m for m in self.backbone.get("mean", IMAGENET_MEAN)], tf.float32)

    def example_transform(self, image, size: int, seed, training: bool = True, index=None) -> dict:
        del index, size  # views are cut at the method's image_size, the size its decoder paints
        view_seed, mask_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        view = AUGMENTATIONS[self.augment if training else "center"](image, self.image_size, view_seed)
        hole = make_mask(self.mask, self.image_size, mask_seed, self.hole_area)
        return {"inputs": fill_hole(view, hole, self.fill_rgb),
                "targets": {"image": to_unit_range(view), "hole": hole,
                            "weights": loss_weights(hole, self.overlap, self.overlap_weight)}}

    # ---- composition ----------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        side = last_stage_side(self.backbone, self.image_size, self.name)
        inputs = keras.Input((self.image_size, self.image_size, 3), name="images")
        # Same layers and name as the backbone, one more output: the last stage's map for the decoder
        # (`extract_backbone` keeps only the pooled output at export).
        with_map = stage_model(backbone, ("pooled", LAST_STAGE), name=backbone.name)
        feature_map = with_map(inputs)[LAST_STAGE]
        decoder = inpainting_decoder(side, feature_map.shape[-1], int(math.log2(self.image_size // side)),
                                     self.decoder_channels)
        return keras.Model(inputs, decoder(feature_map), name="pretext_model")

    # ---- steps ----------------------------------------------------------------------------------
    def _generator_losses(self, model, discriminator, batch, training: bool):
        targets = batch["targets"]
        real, hole = targets["image"], targets["hole"]
        painted = model(batch["inputs"], training=training)
        completed = fill_hole(real, hole, 0.0) + tf.cast(painted, tf.float32) * hole
        reconstruction = masked_l2(real, painted, targets["weights"], hole)
        # The discriminator is not trained here (and has no batch statistics to update).
        adversarial = losses.gan_generator_loss(discriminator(completed, training=False))
        per_example = self.reconstruction_weight * reconstruction + self.adversarial_weight * adversarial
        return per_example, {"reconstruction": reconstruction, "adversarial": adversarial,
                             "hole_error": masked_l2(real, painted, hole, hole), "completed": completed}

    def _metrics(self, batch, per_example, parts) -> dict[str, tf.Tensor]:
        """Sums over images: the generator's loss and its two terms, the squared error per hidden
        value ("hole_error") next to that of the mean-colour fill the encoder saw ("fill_error")."""
        targets = batch["targets"]
        fill = tf.broadcast_to(to_unit_range(self.fill_rgb), tf.shape(targets["image"]))
        return {
            "loss_sum": tf.reduce_sum(per_example),
            "reconstruction_sum": tf.reduce_sum(parts["reconstruction"]),
            "adversarial_sum": tf.reduce_sum(parts["adversarial"]),
            "hole_error_sum": tf.reduce_sum(parts["hole_error"]),
            "fill_error_sum": tf.reduce_sum(masked_l2(targets["image"], fill, targets["hole"], targets["hole"])),
            "count": tf.cast(tf.shape(per_example)[0], tf.float32),
        }

    # ---- what it learned ------------------------------------------------------------------------
    def diagnose(self, run_dir, *, recipe, data_dir=None, split: str | None = None, max_examples: int | None = None,
                 batch_size: int = 250, picture: str | Path | None = None, picture_images: int = 12) -> dict:
        """{"inpainting_check": report}: on held-out images, the squared error per hidden value of
        the painted hole against the mean-colour fill's and against `onion_peel_fill` (the smooth
        guess from the context alone); with `picture`, a PNG of masked
        input / inpainted / original."""
        from ssl_zoo.methods.held_out import held_out_batches, held_out_means

        sums = dict.fromkeys(("hole_error", "fill_error", "context_fill_error", "count"), 0.0)
        shown = None
        for batch, outputs in held_out_batches(self, run_dir, recipe, data_dir, split, max_examples, batch_size):
            t = batch["targets"]
            fill = tf.broadcast_to(to_unit_range(self.fill_rgb), tf.shape(t["image"]))
            sums["hole_error"] += float(tf.reduce_sum(masked_l2(t["image"], outputs, t["hole"], t["hole"])))
            sums["fill_error"] += float(tf.reduce_sum(masked_l2(t["image"], fill, t["hole"], t["hole"])))
            guess = onion_peel_fill(t["image"], t["hole"])
            sums["context_fill_error"] += float(tf.reduce_sum(masked_l2(t["image"], guess, t["hole"], t["hole"])))
            sums["count"] += float(tf.shape(outputs)[0])
            if shown is None:
                shown = (batch["inputs"][:picture_images].numpy(), to_rgb_range(outputs[:picture_images]).numpy(),
                         t["hole"][:picture_images].numpy(), to_rgb_range(t["image"][:picture_images]).numpy())
        report = {**held_out_means(self, sums, recipe, split, "inpainting check"), "mask": self.mask,
                  "hole_area": self.hole_area}
        if picture is not None and shown is not None:
            draw_inpaintings(*shown, Path(picture), self.mask)
            report["picture"] = Path(picture).name
        return {"inpainting_check": report}

    @staticmethod
    def card_diagnostics(diagnostics: dict) -> list[str]:
        c = diagnostics.get("inpainting_check")
        if not c:
            return []
        return [f"- Held-out inpainting (`ssl-zoo diagnose`, {c['examples']} images of `{c['split']}`, "
                f"{c['mask'].replace('_', ' ')} holes of {c['hole_area']:.0%} of the area): squared error per "
                f"hidden value (pixels in [-1, 1]) {c['hole_error']:.4f}, against {c['fill_error']:.4f} for the "
                f"mean-colour fill the encoder saw and {c['context_fill_error']:.4f} for filling it from its border inwards with the "
                f"average of the visible neighbours."]


def onion_peel_fill(images, hole, passes: int | None = None) -> tf.Tensor:
    """A guess for the hole from its context alone: ring by ring from the border inwards, each
    hidden pixel that touches known ones gets their 3x3 average ("onion peel"), `passes` rings
    (default half the side: the whole of any hole). The smooth, context-consistent fill an
    L2-only network tends to: the painting must beat it to have learned more than continuation."""
    known = 1.0 - tf.cast(hole, tf.float32)
    values = tf.cast(images, tf.float32) * known
    for _ in range(passes or images.shape[1] // 2):
        total = tf.nn.avg_pool2d(values, 3, 1, "SAME")
        weight = tf.nn.avg_pool2d(known, 3, 1, "SAME")
        reached = tf.cast(weight > 0, tf.float32) * (1.0 - known)
        values += reached * total / tf.maximum(weight, 1e-6)
        known += reached
    return values


def draw_inpaintings(masked: np.ndarray, painted: np.ndarray, hole: np.ndarray, original: np.ndarray, path: Path,
                     mask: str) -> Path:
    """Rows of held-out images: what the encoder saw, the decoder's painting pasted into the hole,
    the original."""
    completed = original * (1.0 - hole) + painted * hole
    return draw_image_rows([("input (hole filled)", masked), ("inpainted", completed), ("original", original)],
                           f"context encoder on held-out images ({mask.replace('_', ' ')} holes)", path)
