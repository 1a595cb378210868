"""The one piece adversarial methods share: the discriminator, and its update.

Not a GAN trainer: a method with an adversarial term writes its own generator loss (inpainting,
super-resolution, BiGAN's encoder each have their own terms) and calls `discriminator_step` for the
other half, with its own optimizer (`PretextMethod.optimizer_names`). The discriminator lives in
the method's state, so it is checkpointed and restored with the run and never exported. The two
methods whose pretext model paints images for a `conv_discriminator` (context encoder,
super-resolution) take the order of their updates from `ImageDiscriminatorSteps`.
"""

from __future__ import annotations

from typing import ClassVar

import keras
import tensorflow as tf
from keras import layers

from ssl_zoo import losses

DISCRIMINATOR = "discriminator"
GENERATOR = "generator"


def to_unit_range(images):
    """RGB in [0, 255] -> [-1, 1], the pixel scale of generators' outputs and discriminators."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_rgb_range(images):
    return (tf.cast(images, tf.float32) + 1.0) * 127.5


def conv_discriminator(image_size: int, widths: tuple[int, ...] = (32, 64, 128), channels: int = 3,
                       name: str = DISCRIMINATOR) -> keras.Model:
    """Images in [-1, 1] -> one real/fake logit: a DCGAN discriminator (Radford et al. 2016), a 4x4
    stride-2 convolution per width with leaky ReLU (0.2), then a dense logit.

    No batch normalisation: its statistics would mix the real and the fake batch, and without it
    the discriminator is the same function on every replica's slice of the batch, so its
    gradients need no cross-replica statistics to be right."""
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = inputs
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 4, strides=2, padding="same", name=f"{name}_conv{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"{name}_lrelu{i}")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    return keras.Model(inputs, layers.Dense(1, name=f"{name}_logit")(x), name=name)


def discriminator_features(discriminator: keras.Model, images) -> list[tf.Tensor]:
    """The activations after each convolution of a `conv_discriminator` on `images` (inference
    mode): the feature space of a content loss that needs no network trained elsewhere."""
    features, x = [], images
    for layer in discriminator.layers[1:]:
        if isinstance(layer, layers.Flatten):
            break
        x = layer(x, training=False)
        if isinstance(layer, layers.LeakyReLU):
            features.append(x)
    return features


def discriminator_step(discriminator: keras.Model, optimizer, real, fake) -> dict[str, tf.Tensor]:
    """One replica's update of `discriminator` (and of nothing else) on a real and a fake batch
    of the same size: binary cross-entropy (`losses.gan_discriminator_loss`), reduced to this
    replica's share of the global mean. `fake` is a constant here: no gradient reaches whatever
    made it. `real`, `fake`: whatever the discriminator takes (images; BiGAN's (x, z) pairs).

    Returns sums over the replica's examples: "discriminator_loss_sum", and the discriminator's
    mean belief that a real ("d_real_sum") and a fake ("d_fake_sum") input is real, the balance
    to watch (a discriminator at 1 / 0 gives its generator nothing to learn from)."""
    fake = tf.nest.map_structure(tf.stop_gradient, fake)
    variables = discriminator.trainable_variables
    with tf.GradientTape() as tape:
        real_logits = discriminator(real, training=True)
        fake_logits = discriminator(fake, training=True)
        per_example = losses.gan_discriminator_loss(real_logits, fake_logits)
        loss = losses.replica_loss(per_example, discriminator)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return {
        "discriminator_loss_sum": tf.reduce_sum(per_example),
        "d_real_sum": tf.reduce_sum(tf.sigmoid(tf.cast(real_logits, tf.float32))),
        "d_fake_sum": tf.reduce_sum(tf.sigmoid(tf.cast(fake_logits, tf.float32))),
    }


def generator_update(method, ctx, batch, generator_losses):
    """One replica's update of the pretext model (the generator side: whatever `method` gives the
    GENERATOR optimizer) with the discriminator in the state held fixed. `generator_losses(model,
    discriminator, batch, training)` -> (per-example losses, parts); returns them."""
    model, discriminator = ctx.model, ctx.state[DISCRIMINATOR]
    with tf.GradientTape() as tape:
        per_example, parts = generator_losses(model, discriminator, batch, training=True)
        loss = losses.replica_loss(per_example, model)
    variables = method.optimizer_variables(GENERATOR, model, ctx.state)
    ctx.optimizers[GENERATOR].apply_gradients(zip(tape.gradient(loss, variables), variables))
    return per_example, parts


class ImageDiscriminatorSteps:
    """The steps of a method whose pretext model (the generator, holding the backbone) makes
    images that a `conv_discriminator` in its state judges against the real ones: the generator's
    update with the discriminator fixed, then the discriminator's on the real images against the
    generator's (now constant) output, each with its own optimizer.

    The method says what it trains: `_generator_losses(model, discriminator, batch, training)`
    returns per-example losses and a dict of parts in which `generated_part` names the images the
    discriminator sees; `_metrics(batch, per_example, parts)` the sums it reports. Mixed in before
    `PretextMethod`; the method has `image_size` and `discriminator_widths`."""

    optimizer_names: ClassVar[tuple[str, ...]] = (GENERATOR, DISCRIMINATOR)
    generated_part: ClassVar[str]

    def build_state(self, model):
        del model
        return {DISCRIMINATOR: conv_discriminator(self.image_size, self.discriminator_widths)}

    def optimizer_variables(self, name, model, state):
        return state[DISCRIMINATOR].trainable_variables if name == DISCRIMINATOR else model.trainable_variables

    def generator_step(self, ctx, batch) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """Updates the pretext model (only it) on one replica's batch; returns its metric sums and
        the generated images for the discriminator's step."""
        per_example, parts = generator_update(self, ctx, batch, self._generator_losses)
        return self._metrics(batch, per_example, parts), parts[self.generated_part]

    def train_step(self, ctx, batch):
        metrics, generated = self.generator_step(ctx, batch)
        metrics.update(discriminator_step(ctx.state[DISCRIMINATOR], ctx.optimizers[DISCRIMINATOR],
                                          batch["targets"]["image"], generated))
        return metrics

    def eval_step(self, ctx, batch):
        discriminator = ctx.state[DISCRIMINATOR]
        per_example, parts = self._generator_losses(ctx.model, discriminator, batch, training=False)
        metrics = self._metrics(batch, per_example, parts)
        metrics["discriminator_loss_sum"] = tf.reduce_sum(losses.gan_discriminator_loss(
            discriminator(batch["targets"]["image"], training=False),
            discriminator(parts[self.generated_part], training=False)))
        return metrics
