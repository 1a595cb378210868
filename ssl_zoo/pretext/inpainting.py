"""Inpainting pretext pieces (Pathak et al., CVPR 2016, "Context Encoders: Feature Learning by
Inpainting"): which pixels are hidden, how they are hidden, and the reconstruction loss.

Pure TF ops; masks are float32 [S, S, 1], 1 in the hole. The random-region mask is a pure
function of its stateless seed, so a resumed run hides the same pixels as an unbroken one.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ssl_zoo.errors import ConfigError

MASKS = ("center", "random_region")


def center_mask(size: int, area: float = 0.25) -> tf.Tensor:
    """The central square covering `area` of the image (Pathak's central region: area 1/4, a
    square of half the side)."""
    side = int(round(size * float(np.sqrt(area))))
    if not 0 < side < size:
        raise ConfigError(f"a central hole of area {area} in a {size} px image is {side} px wide; "
                          f"it must hide something and leave a border")
    lo = (size - side) // 2
    mask = np.zeros((size, size, 1), np.float32)
    mask[lo:lo + side, lo:lo + side] = 1.0
    return tf.constant(mask)


def random_region_mask(size: int, seed, area: float = 0.25, grid: int = 4) -> tf.Tensor:
    """A random smooth region covering `area` of the image: uniform noise on a grid x grid
    lattice, upsampled (bicubic) to the image, hidden where it is in its top `area` quantile.

    Pathak et al.'s random regions are object shapes from PASCAL VOC segmentations pasted at random
    places; without segmentations, these are blobs of the same total area (one or a few, of random
    shape and place), so the hole cannot be learned as a fixed position as the central one can."""
    noise = tf.random.stateless_uniform([1, grid, grid, 1], seed)
    field = tf.reshape(tf.image.resize(noise, [size, size], method="bicubic"), [-1])
    hidden = max(1, int(round(area * size * size)))
    threshold = tf.math.top_k(field, hidden).values[-1]
    return tf.reshape(tf.cast(field >= threshold, tf.float32), [size, size, 1])


def make_mask(kind: str, size: int, seed, area: float) -> tf.Tensor:
    if kind == "center":
        return center_mask(size, area)
    if kind == "random_region":
        return random_region_mask(size, seed, area)
    raise ConfigError(f"unknown inpainting mask {kind!r}; one of {list(MASKS)}")


def loss_weights(hole, overlap: int, overlap_weight: float) -> tf.Tensor:
    """Per-pixel weights of the reconstruction loss: 1 in the hole, `overlap_weight` on the ring of
    `overlap` visible pixels around it, 0 elsewhere. Pathak et al. predict a region 4 px wider than
    the hole (at 128 px) and weight that overlap 10x, so that the prediction agrees with the
    context it has to join."""
    if overlap <= 0:
        return hole
    batched = hole if hole.shape.rank == 4 else hole[None]
    dilated = tf.nn.max_pool2d(batched, 2 * overlap + 1, 1, "SAME")
    dilated = dilated if hole.shape.rank == 4 else dilated[0]
    return hole + overlap_weight * (dilated - hole)


def fill_hole(image, hole, fill) -> tf.Tensor:
    """`image` with the hole replaced by the constant colour `fill` (broadcast over pixels)."""
    return image * (1.0 - hole) + tf.cast(fill, image.dtype) * hole


def masked_l2(target, prediction, weights, hole) -> tf.Tensor:
    """Per image [B]: sum of weights * squared error over pixels and channels, divided by the
    hole's pixel count x channels: the mean squared error per hidden value (eq. 1 of the paper,
    normalised so that it does not depend on the hole's size or the image's)."""
    target, prediction = tf.cast(target, tf.float32), tf.cast(prediction, tf.float32)
    weighted = tf.cast(weights, tf.float32) * tf.square(prediction - target)
    per_image = tf.reduce_sum(weighted, axis=(1, 2, 3))
    hidden = tf.reduce_sum(tf.cast(hole, tf.float32), axis=(1, 2, 3)) * float(target.shape[-1])
    return per_image / tf.maximum(hidden, 1.0)
