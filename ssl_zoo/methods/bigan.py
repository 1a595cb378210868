"""BiGAN (Donahue, Krähenbühl & Darrell, ICLR 2017, "Adversarial Feature Learning"; Dumoulin et
al.'s ALI is the same model): a generator G maps a latent code z to an image, an encoder E maps an
image to a code, and a discriminator D sees pairs, (x, E(x)) for real images and (G(z), z) for
generated ones, and must tell which is which. At the optimum E inverts G; the encoder is what
is released.

Composition plus its own step with two optimizers, "generator" (E and G together, which share
one objective: make D swap its labels) and "discriminator" (D, kept in the method state; its
update is `ssl_zoo.methods.adversarial.discriminator_step` on pairs):

- the transform gives each view its latent code z ~ U[-1, 1]^latent_dim drawn from the
  example's own seed, so a run resumed from a checkpoint draws the same codes it would have;
- the pretext model takes {"images", "z"} and returns {"code": E(x), "generated": G(z)}: E is
  the backbone and a linear layer to the code (the pretext head, dropped at export), G a DCGAN
  generator (Radford et al. 2016: dense to 4 x 4, x2 transposed convolutions + BN + ReLU, tanh);
- E and G minimise the non-saturating loss with the labels swapped, -log(1 - D(x, E(x))) -
  log D(G(z), z); D then takes its step on the same pairs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import ClassVar

import keras
import tensorflow as tf
from keras import layers

from ssl_zoo import losses
from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD
from ssl_zoo.image_grid import draw_image_rows
from ssl_zoo.methods import training_curves
from ssl_zoo.methods.adversarial import (DISCRIMINATOR, GENERATOR, discriminator_step, generator_update,
                                         to_rgb_range, to_unit_range)
from ssl_zoo.methods.base import PretextMethod
from ssl_zoo.methods.card import MethodCard

START_SIDE = 4  # the generator's first map, as DCGAN's


def dcgan_generator(latent_dim: int, image_size: int, base_channels: int, name: str = GENERATOR) -> keras.Model:
    """z [latent_dim] -> image [S, S, 3] in [-1, 1]: dense to a 4 x 4 map of base x 2^(u-1)
    channels + BN + ReLU, then u = log2(S / 4) x2 steps, each a 4x4 transposed convolution
    (channels halving, to base; 3 and tanh at the last) + BN + ReLU."""
    steps = int(math.log2(image_size // START_SIDE))
    z = keras.Input((latent_dim,), name="z")
    x = layers.Dense(START_SIDE * START_SIDE * base_channels * 2 ** steps, use_bias=False, name=f"{name}_project")(z)
    x = layers.Reshape((START_SIDE, START_SIDE, base_channels * 2 ** steps), name=f"{name}_map")(x)
    x = layers.BatchNormalization(synchronized=True, name=f"{name}_bn_project")(x)
    x = layers.ReLU(name=f"{name}_relu_project")(x)
    for i in range(steps - 1):
        x = layers.Conv2DTranspose(base_channels * 2 ** (steps - 1 - i), 4, strides=2, padding="same", use_bias=False,
                                   name=f"{name}_up{i}")(x)
        x = layers.BatchNormalization(synchronized=True, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    image = layers.Conv2DTranspose(3, 4, strides=2, padding="same", activation="tanh", name=f"{name}_rgb")(x)
    return keras.Model(z, image, name=name)


def joint_discriminator(image_size: int, latent_dim: int, widths: tuple[int, ...], hidden: int,
                        name: str = DISCRIMINATOR) -> keras.Model:
    """[image in [-1, 1], code] -> one real/fake logit for the pair: the image through DCGAN
    convolutions (4x4 stride 2, leaky ReLU 0.2, no batch norm, as `conv_discriminator`, so that
    the real and the fake batch never share statistics), the code through a dense layer, the two
    joined by a dense layer."""
    image = keras.Input((image_size, image_size, 3), name="images")
    code = keras.Input((latent_dim,), name="code")
    x = image
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 4, strides=2, padding="same", name=f"{name}_conv{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"{name}_lrelu{i}")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    c = layers.LeakyReLU(0.2, name=f"{name}_code_lrelu")(layers.Dense(hidden, name=f"{name}_code")(code))
    joint = layers.Concatenate(name=f"{name}_join")([x, c])
    joint = layers.LeakyReLU(0.2, name=f"{name}_joint_lrelu")(layers.Dense(hidden, name=f"{name}_joint")(joint))
    return keras.Model([image, code], layers.Dense(1, name=f"{name}_logit")(joint), name=name)


@dataclasses.dataclass
class BiGAN(PretextMethod):
    name: ClassVar[str] = "bigan"
    optimizer_names: ClassVar[tuple[str, ...]] = (GENERATOR, DISCRIMINATOR)
    card: ClassVar[MethodCard] = MethodCard(
        title="BiGAN",
        paper="Donahue, Krähenbühl & Darrell, \"Adversarial Feature Learning\", ICLR 2017 (arXiv:1605.09782)",
        paragraph="A generator G turns a random code z into an image and the backbone, with a linear layer on "
                  "top (the encoder E), turns an image into a code; a discriminator sees (image, code) pairs, "
                  "(x, E(x)) for training images and (G(z), z) for generated ones, and learns to tell them apart "
                  "while E and G, with one optimizer, learn to make it swap its labels. At the optimum E inverts "
                  "G. Each image's z is drawn from its example seed (a resumed run draws the same). G, D and the "
                  "linear layer are dropped after training; the released backbone is the encoder's.",
        pretext_eval="the held-out {split} split of {data}: how close G(E(x)) comes to x, against the "
                     "reconstruction of another image",
        limitation="The encoder learns only through the discriminator's judgement of pairs, the slowest signal "
                   "of any method here: at this scale G and E are far from inverting each other, and the "
                   "encoder's features carry what the discriminator found useful to check.",
        view_size_field="image_size",
    )
    card_training = staticmethod(training_curves.card_lines)
    card_plot = staticmethod(training_curves.card_plot)
    image_size: int = 32
    augment: str = "crop_flip"
    latent_dim: int = 128
    generator_channels: int = 32  # at full resolution, doubling per x2 step towards the code
    discriminator_widths: tuple[int, ...] = (32, 64, 128)
    discriminator_hidden: int = 256

    def __post_init__(self):
        self.require_positive("image_size", "latent_dim", "generator_channels", "discriminator_hidden")
        ratio = self.image_size // START_SIDE
        if self.image_size % START_SIDE or ratio < 2 or ratio & (ratio - 1):
            raise ConfigError(f"[method] bigan image_size must be {START_SIDE} x a power of 2 (8, 16, 32, 64, ...), "
                              f"got {self.image_size}")
        self.discriminator_widths = tuple(self.discriminator_widths)

    # ---- data -----------------------------------------------------------------------------------
    def example_transform(self, image, size: int, seed, training: bool = True, index=None) -> dict:
        del index, size  # views are cut at the method's image_size, the size its generator draws
        view_seed, z_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        view = AUGMENTATIONS[self.augment if training else "center"](image, self.image_size, view_seed)
        z = tf.random.stateless_uniform((self.latent_dim,), z_seed, -1.0, 1.0)
        return {"inputs": {"images": view, "z": z}, "targets": {"image": to_unit_range(view)}}

    # ---- composition ----------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        images = keras.Input((self.image_size, self.image_size, 3), name="images")
        z = keras.Input((self.latent_dim,), name="z")
        code = layers.Dense(self.latent_dim, name=PRETEXT_HEAD)(backbone(images))
        generated = dcgan_generator(self.latent_dim, self.image_size, self.generator_channels)(z)
        return keras.Model({"images": images, "z": z}, {"code": code, "generated": generated}, name="pretext_model")

    def build_state(self, model):
        del model
        return {DISCRIMINATOR: joint_discriminator(self.image_size, self.latent_dim, self.discriminator_widths,
                                                   self.discriminator_hidden)}

    def optimizer_variables(self, name, model, state):
        # E and G share the "generator" optimizer: one objective, as in the paper.
        return state[DISCRIMINATOR].trainable_variables if name == DISCRIMINATOR else model.trainable_variables

    # ---- steps ----------------------------------------------------------------------------------
    def _losses(self, model, discriminator, batch, training: bool):
        """Per example: the encoder's and the generator's halves of the swapped-label loss, and the
        pairs D judges."""
        outputs = model(batch["inputs"], training=training)
        real = [batch["targets"]["image"], tf.cast(outputs["code"], tf.float32)]
        fake = [tf.cast(outputs["generated"], tf.float32), batch["inputs"]["z"]]
        # D is not trained here (and has no batch statistics to update).
        real_logits, fake_logits = discriminator(real, training=False), discriminator(fake, training=False)
        encoder = losses.gan_generator_loss(-real_logits)  # -log(1 - D(x, E(x)))
        generator = losses.gan_generator_loss(fake_logits)  # -log D(G(z), z)
        return encoder + generator, {"encoder": encoder, "generator": generator, "real": real, "fake": fake,
                                     "real_logits": real_logits, "fake_logits": fake_logits}

    def generator_step(self, ctx, batch):
        """Updates E and G (only them) on one replica's batch; returns the metric sums and the
        real and fake pairs for the discriminator's step."""
        per_example, parts = generator_update(self, ctx, batch, self._losses)
        return self._metrics(per_example, parts), (parts["real"], parts["fake"])

    def train_step(self, ctx, batch):
        metrics, (real, fake) = self.generator_step(ctx, batch)
        # The real pair's code is a constant for D's step, as the fake pair is.
        real = [real[0], tf.stop_gradient(real[1])]
        metrics.update(discriminator_step(ctx.state[DISCRIMINATOR], ctx.optimizers[DISCRIMINATOR], real, fake))
        return metrics

    def eval_step(self, ctx, batch):
        model = ctx.model
        per_example, parts = self._losses(model, ctx.state[DISCRIMINATOR], batch, training=False)
        metrics = self._metrics(per_example, parts)
        metrics["discriminator_loss_sum"] = tf.reduce_sum(
            losses.gan_discriminator_loss(parts["real_logits"], parts["fake_logits"]))
        rebuilt = model.get_layer(GENERATOR)(parts["real"][1], training=False)
        metrics["reconstruction_error_sum"] = tf.reduce_sum(
            tf.reduce_mean(tf.square(tf.cast(rebuilt, tf.float32) - parts["real"][0]), axis=(1, 2, 3)))
        return metrics

    @staticmethod
    def _metrics(per_example, parts) -> dict[str, tf.Tensor]:
        return {
            "loss_sum": tf.reduce_sum(per_example),
            "encoder_loss_sum": tf.reduce_sum(parts["encoder"]),
            "generator_loss_sum": tf.reduce_sum(parts["generator"]),
            "count": tf.cast(tf.shape(per_example)[0], tf.float32),
        }

    # ---- what it learned ------------------------------------------------------------------------
    def diagnose(self, run_dir, *, recipe, data_dir=None, split: str | None = None, max_examples: int | None = None,
                 batch_size: int = 250, picture: str | Path | None = None, picture_images: int = 12) -> dict:
        """{"bigan_check": report}: on held-out images, the squared error per value of G(E(x))
        against x, next to that of another image's reconstruction G(E(x')) (the batch rolled by
        one: how much of x, not of the average image, the code keeps); and whether E inverts G on
        the codes it was trained on: the squared error of E(G(z)) against z next to that against
        another z. With `picture`, a PNG of originals, reconstructions and samples G(z)."""
        from ssl_zoo.methods.held_out import held_out_batches, held_out_means, load_pretext_model

        # The same model answers both directions: its "generated" output is G of whatever code is
        # fed as "z", its "code" output E of whatever image is fed as "images".
        model = load_pretext_model(run_dir)
        sums = dict.fromkeys(("reconstruction_error", "other_image_error", "code_error", "other_code_error",
                              "count"), 0.0)
        shown = None
        for batch, outputs in held_out_batches(self, run_dir, recipe, data_dir, split, max_examples, batch_size):
            x, z = batch["targets"]["image"], batch["inputs"]["z"]
            generated = tf.cast(outputs["generated"], tf.float32)
            rebuilt = tf.cast(model({"images": batch["inputs"]["images"], "z": outputs["code"]},
                                    training=False)["generated"], tf.float32)
            recovered = tf.cast(model({"images": to_rgb_range(generated), "z": z}, training=False)["code"], tf.float32)
            sums["reconstruction_error"] += _sum_of_mean_squares(rebuilt, x)
            sums["other_image_error"] += _sum_of_mean_squares(tf.roll(rebuilt, 1, axis=0), x)
            sums["code_error"] += _sum_of_mean_squares(recovered, z)
            sums["other_code_error"] += _sum_of_mean_squares(tf.roll(recovered, 1, axis=0), z)
            sums["count"] += float(tf.shape(x)[0])
            if shown is None:
                shown = [to_rgb_range(t[:picture_images]).numpy() for t in (x, rebuilt, generated)]
        # Two images at least: the baselines compare each image with another one's.
        report = held_out_means(self, sums, recipe, split, "BiGAN check", least=2)
        if picture is not None and shown is not None:
            draw_image_rows([("x", shown[0]), ("G(E(x))", shown[1]), ("G(z), random z", shown[2])],
                            "BiGAN on held-out images", Path(picture))
            report["picture"] = Path(picture).name
        return {"bigan_check": report}

    @staticmethod
    def card_diagnostics(diagnostics: dict) -> list[str]:
        c = diagnostics.get("bigan_check")
        if not c:
            return []
        return [f"- Held-out reconstructions (`ssl-zoo diagnose`, {c['examples']} images of `{c['split']}`): squared "
                f"error per value of G(E(x)) against x (pixels in [-1, 1]) {c['reconstruction_error']:.4f}, against "
                f"{c['other_image_error']:.4f} for another image's reconstruction; E(G(z)) against z "
                f"{c['code_error']:.4f}, against {c['other_code_error']:.4f} for another z (z is uniform in "
                f"[-1, 1]: a code of zeros would be at 0.3333)."]


def _sum_of_mean_squares(a, b) -> float:
    """Sum over the batch of each example's mean squared difference."""
    return float(tf.reduce_sum(tf.reduce_mean(tf.square(a - b), axis=list(range(1, a.shape.rank)))))
