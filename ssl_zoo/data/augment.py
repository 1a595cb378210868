"""Per-example view augmentations. Pure TF ops with stateless seeds (shape [2] int), so a
pipeline is reproducible from its seed and a resumed run sees the same images as an unbroken one.

Inputs are uint8 or float images in [0, 255] of any size; outputs are float32 [size, size, 3] in
[0, 255] (models normalise internally, see `ssl_zoo.backbones.resnet`).
"""

from __future__ import annotations

import math

import tensorflow as tf

CROP_SAMPLERS = ("tf", "torchvision")


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n))


def resize_shorter(image, size: int):
    """Resizes so that the shorter side is `size`; leaves images already at that size untouched."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)

    def resize():
        scale = tf.cast(size, tf.float32) / tf.cast(short, tf.float32)
        new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        # Antialiased (Lanczos-like) kernels overshoot slightly: clip back to the pixel range.
        return tf.clip_by_value(tf.image.resize(tf.cast(image, tf.float32), [new_h, new_w], antialias=True), 0.0, 255.0)

    return tf.cond(tf.equal(short, size), lambda: tf.cast(image, tf.float32), resize)


def center_crop(image, size: int):
    """Resize the shorter side to `size`, then the central square: the evaluation view."""
    image = resize_shorter(image, size)
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    image = image[top : top + size, left : left + size]
    return tf.ensure_shape(image, [size, size, 3])


def random_crop_flip(image, size: int, seed, pad_fraction: float = 0.125):
    """The standard CIFAR augmentation: reflect-pad by `pad_fraction` of the side, random crop,
    random horizontal flip."""
    crop_seed, flip_seed = _split(seed, 2)
    image = resize_shorter(image, size)
    pad = int(round(size * pad_fraction))
    if pad:
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.ensure_shape(image, [size, size, 3])


def random_resized_crop(
    image,
    size: int,
    seed,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    flip: bool = True,
    sampler: str = "tf",
):
    """Inception-style crop (Szegedy et al. 2015): a random area fraction in `scale` and aspect
    ratio in `ratio`, resized to `size`; optional horizontal flip.

    `sampler` draws the box: "tf" is `tf.image.sample_distorted_bounding_box`; "torchvision" is
    `torchvision_crop_box`, torchvision's RandomResizedCrop. They differ: on 32 px images at the
    default scale and ratio, TF's boxes cover 41 % of the image on average (median 37 %),
    torchvision's 49 % (median 49 %), measured over 4,000 draws each."""
    if sampler not in CROP_SAMPLERS:
        raise ValueError(f"crop sampler must be one of {CROP_SAMPLERS}, got {sampler!r}")
    box_seed, flip_seed = _split(seed, 2)
    shape = tf.shape(image)
    if sampler == "torchvision":
        begin, crop_size = torchvision_crop_box(shape, box_seed, scale, ratio)
    else:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=box_seed,
            min_object_covered=0.0,
            aspect_ratio_range=ratio,
            area_range=scale,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
    crop = tf.slice(image, begin, crop_size)
    crop = tf.clip_by_value(tf.image.resize(tf.cast(crop, tf.float32), [size, size], antialias=True), 0.0, 255.0)
    if flip:
        crop = tf.image.stateless_random_flip_left_right(crop, seed=flip_seed)
    return tf.ensure_shape(crop, [size, size, 3])


def torchvision_crop_box(shape, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10):
    """(begin, size) of a box drawn as torchvision's RandomResizedCrop.get_params draws it: up to
    `attempts` candidates with an area fraction uniform in `scale` and a log-uniform aspect
    ratio (width / height), sides rounded; the first that fits is placed uniformly; if none
    fits, the centred crop of the whole image at the nearest allowed ratio. Stateless (all
    candidates drawn at once, the first fitting one kept)."""
    area_seed, ratio_seed, y_seed, x_seed = _split(seed, 4)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    area = height * width * tf.random.stateless_uniform([attempts], area_seed, scale[0], scale[1])
    aspect = tf.exp(tf.random.stateless_uniform([attempts], ratio_seed, math.log(ratio[0]), math.log(ratio[1])))
    w, h = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32))
    image_ratio = width / height
    fallback_w = tf.where(image_ratio > ratio[1], tf.round(height * ratio[1]), width)
    fallback_h = tf.where(image_ratio < ratio[0], tf.round(width / ratio[0]), height)
    found = tf.reduce_any(fits)
    h = tf.cast(tf.where(found, h[first], fallback_h), tf.int32)
    w = tf.cast(tf.where(found, w[first], fallback_w), tf.int32)
    free_y, free_x = tf.cast(height, tf.int32) - h, tf.cast(width, tf.int32) - w
    y = tf.where(found, tf.random.stateless_uniform([], y_seed, 0, free_y + 1, dtype=tf.int32), free_y // 2)
    x = tf.where(found, tf.random.stateless_uniform([], x_seed, 0, free_x + 1, dtype=tf.int32), free_x // 2)
    return tf.stack([y, x, 0]), tf.stack([h, w, -1])


AUGMENTATIONS = {
    "center": lambda image, size, seed: center_crop(image, size),
    "crop_flip": random_crop_flip,
    "resized_crop": random_resized_crop,
}
