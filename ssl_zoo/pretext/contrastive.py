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

from ssl_zoo.data.augment import CROP_SAMPLERS, random_resized_crop
from ssl_zoo.errors import ConfigError


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n))


def _with_probability(p: float, seed, fn, image):
    draw = tf.random.stateless_uniform([], seed=seed)
    return tf.cond(draw < p, lambda: fn(image), lambda: image)


JITTER_STYLES = ("paper", "torchvision")


def colour_jitter(image01, seed, strength: float, style: str = "paper"):
    """Brightness, contrast, saturation (each 0.8 s) and hue (0.2 s) on an image in [0, 1].

    "paper": the SimCLR paper's Appendix A code, tf.image's ops in a fixed order: brightness
    *added* (a shift of up to 0.8 s), contrast about each channel's mean. "torchvision":
    torchvision's ColorJitter, which the PyTorch implementations use (LightlySSL, solo-learn):
    brightness *multiplied* by a factor in [1 - 0.8 s, 1 + 0.8 s] (as SimCLR's own code later
    does too, its "simclrv2" setting), contrast about the grey image's mean, the four in a random
    order, each clipped to [0, 1]. The additive shift is harsher: at s = 0.5 a dark image can be
    lifted by 0.4."""
    if style not in JITTER_STYLES:
        raise ValueError(f"colour jitter style must be one of {JITTER_STYLES}, got {style!r}")
    if style == "paper":
        b, c, s, h = _split(seed, 4)
        x = tf.image.stateless_random_brightness(image01, 0.8 * strength, seed=b)
        x = tf.image.stateless_random_contrast(x, 1 - 0.8 * strength, 1 + 0.8 * strength, seed=c)
        x = tf.image.stateless_random_saturation(x, 1 - 0.8 * strength, 1 + 0.8 * strength, seed=s)
        x = tf.image.stateless_random_hue(x, 0.2 * strength, seed=h)
        return tf.clip_by_value(x, 0.0, 1.0)
    order_seed, b, c, s, h = _split(seed, 5)

    def factor(op_seed):
        return tf.random.stateless_uniform([], seed=op_seed, minval=max(0.0, 1 - 0.8 * strength),
                                           maxval=1 + 0.8 * strength)

    ops = [lambda x: scale_brightness(x, factor(b)), lambda x: blend_contrast(x, factor(c)),
           lambda x: blend_saturation(x, factor(s)),
           lambda x: tf.clip_by_value(tf.image.stateless_random_hue(x, 0.2 * strength, seed=h), 0.0, 1.0)]
    order = random_order(order_seed, len(ops))
    x = image01
    for position in range(len(ops)):
        x = tf.switch_case(order[position], [lambda op=op, x=x: op(x) for op in ops])
    return x


def require_view_settings(jitter_style: str, crop_sampler: str) -> None:
    """A method's `jitter_style` and `crop_sampler` settings, checked when the recipe is read."""
    if jitter_style not in JITTER_STYLES:
        raise ConfigError(f"[method] jitter_style must be one of {JITTER_STYLES}, got {jitter_style!r}")
    if crop_sampler not in CROP_SAMPLERS:
        raise ConfigError(f"[method] crop_sampler must be one of {CROP_SAMPLERS}, got {crop_sampler!r}")


def random_order(seed, n: int):
    """A uniformly random permutation of range(n) from a stateless seed."""
    return tf.argsort(tf.random.stateless_uniform([n], seed=seed))


def scale_brightness(image01, f):
    """torchvision's adjust_brightness: the image times `f`, clipped."""
    return tf.clip_by_value(image01 * f, 0.0, 1.0)


def blend_contrast(image01, f):
    """torchvision's adjust_contrast: blended with the mean of its grey image, one scalar."""
    mean = tf.reduce_mean(tf.image.rgb_to_grayscale(image01))
    return tf.clip_by_value(f * image01 + (1.0 - f) * mean, 0.0, 1.0)


def blend_saturation(image01, f):
    """torchvision's adjust_saturation: blended with its grey image, pixel by pixel."""
    return tf.clip_by_value(f * image01 + (1.0 - f) * tf.image.rgb_to_grayscale(image01), 0.0, 1.0)


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
                jitter_probability: float = 0.8, grey_probability: float = 0.2, blur_probability: float = 0.0,
                jitter_style: str = "paper", crop_sampler: str = "tf"):
    """One augmented view, float32 [size, size, 3] in [0, 255]. CIFAR-10 settings by default
    (jitter strength 0.5, no blur: "we do not use Gaussian blur" on CIFAR, Appendix B.9); the
    ImageNet setting is strength 1.0 and blur probability 0.5. `jitter_style` is `colour_jitter`'s
    style, `crop_sampler` `random_resized_crop`'s sampler."""
    crop_seed, jitter_seed, jitter_gate, grey_gate, blur_seed, blur_gate = _split(seed, 6)
    x = random_resized_crop(image, size, crop_seed, scale=tuple(scale), sampler=crop_sampler) / 255.0
    x = _with_probability(jitter_probability, jitter_gate,
                          lambda im: colour_jitter(im, jitter_seed, jitter_strength, jitter_style), x)
    x = _with_probability(grey_probability, grey_gate, greyscale, x)
    if blur_probability > 0:
        x = _with_probability(blur_probability, blur_gate, lambda im: gaussian_blur(im, blur_seed, size), x)
    return tf.ensure_shape(x * 255.0, [size, size, 3])


def two_views(image, size: int, seed, **kwargs):
    """Two independent views of one image (each from its own seed split off `seed`)."""
    first, second = _split(seed, 2)
    return simclr_view(image, size, first, **kwargs), simclr_view(image, size, second, **kwargs)
