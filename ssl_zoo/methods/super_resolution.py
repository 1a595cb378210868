"""Super-resolution as a pretext (SRGAN-style: Ledig et al., CVPR 2017, "Photo-Realistic Single
Image Super-Resolution Using a Generative Adversarial Network"): shrink each view by `scale`,
and make a network put back the detail the shrinking took away, against a pixel loss, a content
loss in a feature space and a discriminator.

Composition plus its own step with two optimizers, "generator" and "discriminator"
(`ssl_zoo.methods.adversarial`, kept in the method state), as the context encoder:

- the transform shrinks the view by `scale` (bicubic, antialiased) and enlarges it back to the
  view's size (bicubic): the backbone sees that blurred full-size image, so the released backbone
  takes images at the size it was trained at, like every entry (SRCNN's pre-upsampling; SRGAN's
  generator works at low resolution and upsamples at its end);
- the generator is the backbone and a decoder that climbs back from the last stage to full
  resolution, joining the maps of `skip_stages` on the way (a U-Net's skips: detail that lives at
  high resolution) and predicts what to add to the blurred input;
- its loss: `pixel_weight` x the squared error + `content_weight` x the squared distance between
  the discriminator's feature maps of the output and of the true view + `adversarial_weight` x
  the non-saturating GAN loss. SRGAN's content features are a VGG-19 trained on ImageNet's labels;
  here they are the discriminator's own (its convolutions' activations), so no label and no
  network from outside the run enters. The discriminator then takes its step on true views
  against the generator's outputs.

The released backbone is the generator's encoder (the backbone above), not the discriminator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ssl_zoo import losses
from ssl_zoo.backbones import STAGES, last_stage_side, stage_model
from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD
from ssl_zoo.image_grid import draw_image_rows
from ssl_zoo.methods import training_curves
from ssl_zoo.methods.adversarial import (ImageDiscriminatorSteps, discriminator_features, to_rgb_range,
                                         to_unit_range)
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.methods.card import MethodCard

LAST_STAGE = "stage4"
DECODER = PRETEXT_HEAD  # dropped at export like every head
SKIPPABLE = STAGES[:STAGES.index(LAST_STAGE)]  # stem ... stage3


def shrink_and_enlarge(view, scale: int):
    """RGB [H, W, 3] in [0, 255] -> (the view shrunk by `scale` (bicubic, antialiased: what a
    camera with fewer pixels would see), that image enlarged back to [H, W] by bicubic
    interpolation), both clipped to [0, 255]."""
    size = tf.shape(view)[-3:-1]
    small = tf.clip_by_value(tf.image.resize(view, size // scale, "bicubic", antialias=True), 0.0, 255.0)
    return small, tf.clip_by_value(tf.image.resize(small, size, "bicubic"), 0.0, 255.0)


def psnr(target, prediction) -> tf.Tensor:
    """Per image peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = tf.reduce_mean(tf.square(tf.cast(target, tf.float32) - tf.cast(prediction, tf.float32)), axis=(1, 2, 3))
    return 10.0 * tf.math.log(4.0 / tf.maximum(mse, 1e-10)) / tf.math.log(10.0)


def detail_decoder(maps: dict[str, tuple[int, int]], image_size: int, base_channels: int,
                   name: str = DECODER) -> keras.Model:
    """Stage maps {name: (side, channels)}, the last stage first, the others in decreasing depth ->
    the detail [S, S, 3] to add to the enlarged input. From the last stage: per x2 step a 4x4
    transposed convolution + BN + ReLU; where a stage's map has that side it is concatenated and
    mixed by a 3x3 convolution + BN + ReLU; above the shallowest map the channels halve down to
    `base_channels`. The last 3x3 convolution starts at zero, so an untrained generator returns
    its input (bicubic) and training starts from that baseline rather than from noise."""
    names = list(maps)
    inputs = {s: keras.Input((maps[s][0], maps[s][0], maps[s][1]), name=s) for s in names}
    x, side = inputs[names[0]], maps[names[0]][0]
    width = maps[names[0]][1]
    i = 0
    while side < image_size:
        joining = [s for s in names[1:] if maps[s][0] == side * 2]
        width = maps[joining[0]][1] if joining else max(base_channels, width // 2)
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"{name}_up{i}")(x)
        x = layers.BatchNormalization(synchronized=True, name=f"{name}_up_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_up_relu{i}")(x)
        side *= 2
        if joining:
            x = layers.Concatenate(name=f"{name}_join{i}")([x, *(inputs[s] for s in joining)])
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_mix{i}")(x)
            x = layers.BatchNormalization(synchronized=True, name=f"{name}_mix_bn{i}")(x)
            x = layers.ReLU(name=f"{name}_mix_relu{i}")(x)
        i += 1
    detail = layers.Conv2D(3, 3, padding="same", kernel_initializer="zeros", name=f"{name}_detail")(x)
    return keras.Model(inputs, detail, name=name)


@dataclasses.dataclass
class SuperResolution(ImageDiscriminatorSteps, PretextMethod):
    name: ClassVar[str] = "super_resolution"
    generated_part: ClassVar[str] = "output"
    card: ClassVar[MethodCard] = MethodCard(
        title="Super-resolution (SRGAN-style)",
        paper="Ledig, Theis, Huszár, Caballero, Cunningham, Acosta, Aitken, Tejani, Totz, Wang & Shi, "
              "\"Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial Network\", "
              "CVPR 2017 (arXiv:1609.04802)",
        paragraph="Every training image is shrunk by the scale factor and enlarged back (bicubic); the backbone "
                  "encodes that blurred image and a decoder, joining the backbone's intermediate stages on its way "
                  "back to full resolution, predicts the detail to add to it. The loss is the squared error to the "
                  "true image + a content loss (squared distance between the discriminator's feature maps of the "
                  "output and of the true image; SRGAN uses an ImageNet-supervised VGG there, which would bring "
                  "labels in) + 1e-3 x the adversarial loss of a discriminator trained in turn with its own "
                  "optimizer. The released backbone is the generator's encoder; decoder and discriminator are "
                  "dropped after training.",
        pretext_eval="the held-out {split} split of {data}: the PSNR of the super-resolved images against that of "
                     "the bicubic enlargement the backbone saw",
        limitation="Restoring detail is mostly a local task (edges, textures): the decoder's skips carry it "
                   "from the backbone's early stages, and the deep stages need learn little. The backbone is "
                   "trained on blurred images and used on sharp ones.",
        view_size_field="image_size",
    )
    card_training = staticmethod(training_curves.card_lines)
    card_plot = staticmethod(training_curves.card_plot)
    image_size: int = 32
    augment: str = "crop_flip"
    scale: int = 2
    skip_stages: tuple[str, ...] = ("stage3", "stage2")
    decoder_channels: int = 16
    discriminator_widths: tuple[int, ...] = (32, 64, 128)
    pixel_weight: float = 1.0
    content_weight: float = 0.1
    adversarial_weight: float = 1e-3  # SRGAN's

    def __post_init__(self):
        self.require_positive("image_size", "decoder_channels")
        if self.scale < 2 or self.image_size % self.scale:
            raise ConfigError(f"[method] super_resolution scale must be >= 2 and divide image_size "
                              f"{self.image_size}, got {self.scale}")
        self.skip_stages = tuple(self.skip_stages)
        unknown = [s for s in self.skip_stages if s not in SKIPPABLE]
        if unknown:
            raise ConfigError(f"[method] super_resolution skip_stages {unknown} are not stages before "
                              f"{LAST_STAGE}: {list(SKIPPABLE)}")
        if min(self.pixel_weight, self.content_weight, self.adversarial_weight) < 0:
            raise ConfigError("[method] super_resolution loss weights must be >= 0")
        self.discriminator_widths = tuple(self.discriminator_widths)
        last_stage_side(self.backbone, self.image_size, self.name)  # refuses a size the stride does not divide

    # ---- data -----------------------------------------------------------------------------------
    def example_transform(self, image, size: int, seed, training: bool = True, index=None) -> dict:
        del index, size  # views are cut at the method's image_size, the size its decoder paints
        view = AUGMENTATIONS[self.augment if training else "center"](image, self.image_size, seed)
        _, enlarged = shrink_and_enlarge(tf.cast(view, tf.float32), self.scale)
        return {"inputs": enlarged, "targets": {"image": to_unit_range(view), "enlarged": to_unit_range(enlarged)}}

    # ---- composition ----------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        """RGB in [0, 255] (the enlarged image) -> the super-resolved image in [-1, 1]: the input
        on that scale + the decoder's detail."""
        backbone = self.build_backbone()
        inputs = keras.Input((self.image_size, self.image_size, 3), name="images")
        decoded = (LAST_STAGE, *sorted(self.skip_stages, key=STAGES.index, reverse=True))
        # Same layers and name as the backbone, more outputs (`extract_backbone` keeps the pooled one).
        with_maps = stage_model(backbone, ("pooled", *decoded), name=backbone.name)
        maps = with_maps(inputs)
        shapes = {s: (int(maps[s].shape[1]), int(maps[s].shape[-1])) for s in decoded}
        decoder = detail_decoder(shapes, self.image_size, self.decoder_channels)
        detail = decoder({s: maps[s] for s in decoded})
        base = layers.Rescaling(1 / 127.5, offset=-1.0, name="enlarged_unit_range")(inputs)
        return keras.Model(inputs, layers.Add(name="super_resolved")([base, detail]), name="pretext_model")

    # ---- steps ----------------------------------------------------------------------------------
    def content_loss(self, discriminator, real, output) -> tf.Tensor:
        """Per image: the mean over the discriminator's convolutions of the mean squared distance
        between its activations on `output` and on `real` (a constant target)."""
        pairs = zip(discriminator_features(discriminator, output),
                    [tf.stop_gradient(f) for f in discriminator_features(discriminator, real)])
        return tf.add_n([tf.reduce_mean(tf.square(a - b), axis=(1, 2, 3)) for a, b in pairs]) / len(
            self.discriminator_widths)

    def _generator_losses(self, model, discriminator, batch, training: bool):
        real = batch["targets"]["image"]
        output = tf.cast(model(batch["inputs"], training=training), tf.float32)
        pixel = tf.reduce_mean(tf.square(output - real), axis=(1, 2, 3))
        content = self.content_loss(discriminator, real, output)
        adversarial = losses.gan_generator_loss(discriminator(output, training=False))
        per_example = (self.pixel_weight * pixel + self.content_weight * content
                       + self.adversarial_weight * adversarial)
        return per_example, {"pixel": pixel, "content": content, "adversarial": adversarial, "output": output}

    def _metrics(self, batch, per_example, parts) -> dict[str, tf.Tensor]:
        """Sums over images: the loss and its three terms, and the PSNR of the output and of the
        bicubic enlargement the backbone saw (the baseline it must beat)."""
        t = batch["targets"]
        return {
            "loss_sum": tf.reduce_sum(per_example),
            "pixel_sum": tf.reduce_sum(parts["pixel"]),
            "content_sum": tf.reduce_sum(parts["content"]),
            "adversarial_sum": tf.reduce_sum(parts["adversarial"]),
            "psnr_sum": tf.reduce_sum(psnr(t["image"], parts["output"])),
            "bicubic_psnr_sum": tf.reduce_sum(psnr(t["image"], t["enlarged"])),
            "count": tf.cast(tf.shape(per_example)[0], tf.float32),
        }

    # ---- what it learned ------------------------------------------------------------------------
    def diagnose(self, run_dir, *, recipe, data_dir=None, split: str | None = None, max_examples: int | None = None,
                 batch_size: int = 250, picture: str | Path | None = None, picture_images: int = 12) -> dict:
        """{"super_resolution_check": report}: on held-out images, the mean PSNR (and squared error)
        of the super-resolved image against the bicubic enlargement the backbone saw and the
        nearest-neighbour one; with `picture`, a PNG of bicubic input / super-resolved / original."""
        from ssl_zoo.methods.held_out import held_out_batches, held_out_means

        sums = dict.fromkeys(("psnr", "bicubic_psnr", "nearest_psnr", "error", "bicubic_error", "count"), 0.0)
        shown = None
        for batch, outputs in held_out_batches(self, run_dir, recipe, data_dir, split, max_examples, batch_size):
            real, enlarged = batch["targets"]["image"], batch["targets"]["enlarged"]
            outputs = tf.clip_by_value(tf.cast(outputs, tf.float32), -1.0, 1.0)
            small, _ = shrink_and_enlarge(to_rgb_range(real), self.scale)
            nearest = to_unit_range(tf.image.resize(small, [self.image_size] * 2, "nearest"))
            sums["psnr"] += float(tf.reduce_sum(psnr(real, outputs)))
            sums["bicubic_psnr"] += float(tf.reduce_sum(psnr(real, enlarged)))
            sums["nearest_psnr"] += float(tf.reduce_sum(psnr(real, nearest)))
            sums["error"] += float(tf.reduce_sum(tf.reduce_mean(tf.square(outputs - real), axis=(1, 2, 3))))
            sums["bicubic_error"] += float(tf.reduce_sum(tf.reduce_mean(tf.square(enlarged - real), axis=(1, 2, 3))))
            sums["count"] += float(tf.shape(outputs)[0])
            if shown is None:
                shown = [to_rgb_range(x[:picture_images]).numpy() for x in (enlarged, outputs, real)]
        report = {**held_out_means(self, sums, recipe, split, "super-resolution check"), "scale": self.scale}
        if picture is not None and shown is not None:
            draw_super_resolutions(*shown, Path(picture), self.scale)
            report["picture"] = Path(picture).name
        return {"super_resolution_check": report}

    @staticmethod
    def card_diagnostics(diagnostics: dict) -> list[str]:
        c = diagnostics.get("super_resolution_check")
        if not c:
            return []
        return [f"- Held-out super-resolution (`ssl-zoo diagnose`, {c['examples']} images of `{c['split']}`, x{c['scale']}): "
                f"PSNR {c['psnr']:.2f} dB, against {c['bicubic_psnr']:.2f} dB for the bicubic enlargement the backbone "
                f"saw and {c['nearest_psnr']:.2f} dB for nearest-neighbour (squared error per value, pixels in "
                f"[-1, 1]: {c['error']:.4f} vs {c['bicubic_error']:.4f})."]


def draw_super_resolutions(enlarged: np.ndarray, output: np.ndarray, original: np.ndarray, path: Path,
                           scale: int) -> Path:
    """Rows of held-out images: the bicubic enlargement the backbone saw, the super-resolved image,
    the original."""
    return draw_image_rows([(f"bicubic x{scale} (input)", enlarged), ("super-resolved", output), ("original", original)],
                           f"super-resolution on held-out images (x{scale})", path)
