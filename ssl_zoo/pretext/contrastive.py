"""SimCLR's view augmentation (Chen, Kornblith, Norouzi & Hinton 2020, Appendix A): "random
cropping followed by resize back to the original size, random color distortions, and random
Gaussian blur", with colour jitter applied with probability 0.8 and greyscale with 0.2.

Every view draws its randomness from its own stateless seed, split from the example's seed: two
views of one image differ, the same seed gives the same views (eagerly and in `tf.data`), and a
resumed run sees the views an unbroken run saw. The views are returned as separate tensors,
never packed on the channel axis.
"""

from __future__ import annotations

import tensorflow as tf

from ssl_zoo.data.augment import random_resized_crop


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n))


def _with_probability(p: float, seed, fn, image):
    draw = tf.random.stateless_uniform([], seed=seed)
    return tf.cond(draw < p, lambda: fn(image), lambda: image)


def colour_jitter(image01, seed, strength: float):
    """Brightness, contrast, saturation (each 0.8 s) and hue (0.2 s) on an image in [0, 1], in
    this fixed order (the paper randomises the order; a fixed one is the common simplification)."""
    b, c, s, h = _split(seed, 4)
    x = tf.image.stateless_random_brightness(image01, 0.8 * strength, seed=b)
    x = tf.image.stateless_random_contrast(x, 1 - 0.8 * strength, 1 + 0.8 * strength, seed=c)
    x = tf.image.stateless_random_saturation(x, 1 - 0.8 * strength, 1 + 0.8 * strength, seed=s)
    x = tf.image.stateless_random_hue(x, 0.2 * strength, seed=h)
    return tf.clip_by_value(x, 0.0, 1.0)


def greyscale(image01):
    return tf.tile(tf.image.rgb_to_grayscale(image01), [1, 1, 3])


def gaussian_blur(image01, seed, size: int, sigma_range=(0.1, 2.0)):
    """Blur with a Gaussian of random sigma and a kernel of 10 % of the side (Appendix A)."""
    sigma = tf.random.stateless_uniform([], seed=seed, minval=sigma_range[0], maxval=sigma_range[1])
    radius = max(size // 20, 1)
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 3, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(image01[None], horizontal, [1, 1, 1, 1], "SAME")
    out = tf.nn.depthwise_conv2d(out, vertical, [1, 1, 1, 1], "SAME")
    return out[0]


def simclr_view(image, size: int, seed, *, scale=(0.08, 1.0), jitter_strength: float = 0.5,
                jitter_probability: float = 0.8, grey_probability: float = 0.2, blur_probability: float = 0.0):
    """One augmented view, float32 [size, size, 3] in [0, 255]. CIFAR-10 settings by default
    (jitter strength 0.5, no blur: "we do not use Gaussian blur" on CIFAR, Appendix B.9); the
    ImageNet setting is strength 1.0 and blur probability 0.5."""
    crop_seed, jitter_seed, jitter_gate, grey_gate, blur_seed, blur_gate = _split(seed, 6)
    x = random_resized_crop(image, size, crop_seed, scale=tuple(scale)) / 255.0
    x = _with_probability(jitter_probability, jitter_gate, lambda im: colour_jitter(im, jitter_seed, jitter_strength), x)
    x = _with_probability(grey_probability, grey_gate, greyscale, x)
    if blur_probability > 0:
        x = _with_probability(blur_probability, blur_gate, lambda im: gaussian_blur(im, blur_seed, size), x)
    return tf.ensure_shape(x * 255.0, [size, size, 3])


def two_views(image, size: int, seed, **kwargs):
    """Two independent views of one image (each from its own seed split off `seed`)."""
    first, second = _split(seed, 2)
    return simclr_view(image, size, first, **kwargs), simclr_view(image, size, second, **kwargs)
