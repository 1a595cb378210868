"""Relative patch location pretext (Doersch, Gupta & Efros, ICCV 2015, "Unsupervised Visual
Representation Learning by Context Prediction").

A centre patch and one of its eight neighbours in a 3x3 grid; the label is which neighbour.
The details that keep it from being solved by low-level cues (Sec. 3 and 4 of the paper):

- "we include a gap in between the patches ... [and] randomly jitter each patch location": no
  continuing line or texture across the border tells the answer. The paper used 96 px patches,
  a gap of half a patch and jitter of up to 7 px; `patch_size`, `gap` and `jitter` say the
  same for our small images.
- Chromatic aberration: lenses shift green relative to magenta towards the image border, which a
  network can read to find where a patch lies ("the network can ... detect the separation between
  green and magenta"). Two defences, both from the paper:
    * "channel_drop": "randomly drop 2 of the 3 color channels from each patch, replacing the
      dropped colors with Gaussian noise (standard deviation ~1/100 the standard deviation of the
      remaining channel)". We fill the dropped channels at the dataset mean (what the backbone's
      normalisation maps to 0) plus that noise, chosen independently per patch.
    * "grey": "projection, shift green and magenta toward gray": the component of every pixel
      along the green-magenta axis (-1, 2, -1)/sqrt(6) is removed.
  "none" switches the defence off (for tests and ablations).
- Where the pair lies in the image. "The first patch is sampled uniformly" over a large photo
  (150k-450k pixels, 96 px patches), so where a patch sits in its photo says little about which
  neighbour it is. On small images a 3x3 grid covers almost the whole crop, and then a label fixes
  the neighbour's absolute position: one patch that looks like "top-left corner of a photo" (sky,
  vignetting, the photographer's framing) answers the task without its centre. `placement="pair"`
  (the default) samples the centre uniformly among the positions where the centre and *its*
  neighbour fit, so a neighbour's absolute position is shared by several labels; `placement="grid"`
  keeps the whole 3x3 grid inside the crop (what the first released entry trained with).

Patches are returned in [0, 255] space as the backbone expects (see `ssl_zoo.backbones.resnet`).
"""

from __future__ import annotations

import tensorflow as tf

from ssl_zoo.backbones.resnet import IMAGENET_MEAN
from ssl_zoo.data.augment import center_crop, resize_shorter
from ssl_zoo.errors import ConfigError

NUM_NEIGHBOURS = 8
# Label k -> (row, col) offset of the neighbour from the centre patch, in raster order.
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
CHROMA_DEFENCES = ("channel_drop", "grey", "none")
PLACEMENTS = ("pair", "grid")
_GREEN_MAGENTA = (-1.0 / 6**0.5, 2.0 / 6**0.5, -1.0 / 6**0.5)


def grid_extent(patch_size: int, gap: int, jitter: int) -> int:
    """Side of the square the 3x3 arrangement (with the largest jitter) occupies."""
    return 3 * patch_size + 2 * gap + 2 * jitter


def pair_extent(patch_size: int, gap: int, jitter: int) -> int:
    """Side a centre and a diagonal neighbour (with the largest jitter) occupy: 2 patches, 1 gap."""
    return 2 * patch_size + gap + 2 * jitter


def centre_range(offset, crop_size: int, patch_size: int, gap: int, jitter: int, placement: str):
    """[low, high] (inclusive, per axis) of the centre patch's nominal top-left corner for the
    neighbour at grid `offset` [2] (int32 in {-1, 0, 1}), such that both jittered patches fit."""
    step = patch_size + gap
    if placement == "grid":  # every neighbour fits, whatever the label
        low = tf.fill([2], jitter + step)
        return low, low + crop_size - grid_extent(patch_size, gap, jitter)
    return jitter + tf.maximum(-offset, 0) * step, crop_size - patch_size - jitter - tf.maximum(offset, 0) * step


def drop_channels(patches, seed, mean=IMAGENET_MEAN, noise_fraction: float = 0.01):
    """Per patch [n, s, s, 3]: keep one random channel; the others become the dataset mean plus
    Gaussian noise with 1/100 of the kept channel's standard deviation (Doersch et al. 2015)."""
    keep_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    n = tf.shape(patches)[0]
    keep = tf.random.stateless_uniform([n], keep_seed, 0, 3, dtype=tf.int32)
    mask = tf.one_hot(keep, 3, dtype=patches.dtype)[:, None, None, :]  # [n, 1, 1, 3]
    kept = tf.reduce_sum(patches * mask, axis=-1, keepdims=True)
    _, var = tf.nn.moments(kept, axes=[1, 2, 3], keepdims=True)
    noise = tf.random.stateless_normal(tf.shape(patches), noise_seed) * noise_fraction * tf.sqrt(var)
    fill = 255.0 * tf.constant(mean, patches.dtype) + noise
    return mask * patches + (1.0 - mask) * fill


def remove_green_magenta(patches):
    """Projects every pixel onto the plane orthogonal to the green-magenta axis."""
    axis = tf.constant(_GREEN_MAGENTA, patches.dtype)
    return patches - tf.reduce_sum(patches * axis, axis=-1, keepdims=True) * axis


def relative_patch_example(
    image,
    seed,
    *,
    crop_size: int,
    patch_size: int,
    gap: int,
    jitter: int,
    training: bool = True,
    chroma_defence: str = "channel_drop",
    placement: str = "pair",
    mean=IMAGENET_MEAN,
    return_debug: bool = False,
):
    """One image -> (patches [2, P, P, 3] float32: centre then neighbour, label int32 in [0, 8)).

    The neighbour's nominal top-left corner is the centre's plus `OFFSETS[label] * (P + gap)`; each
    patch is then moved by up to `jitter` px in each direction (training only). The centre lies
    at a random position of a `crop_size` crop (after resizing the shorter side to `crop_size`)
    where the pair fits (`placement="pair"`) or where the whole 3x3 grid fits ("grid"). At
    evaluation the crop is the centre one and nothing is jittered; a "pair" is still placed by the
    seed (so held-out accuracy measures the task that was trained), a "grid" is centred. With
    `return_debug` a third element {"crop", "positions" [2, 2] (row, col) top-left corners} is
    returned.
    """
    if chroma_defence not in CHROMA_DEFENCES:
        raise ConfigError(f"chroma_defence must be one of {CHROMA_DEFENCES}, got {chroma_defence!r}")
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "grid":
        extent, what = grid_extent(patch_size, gap, jitter), "3 patches of {p} + 2 gaps of {g}"
    else:
        extent, what = pair_extent(patch_size, gap, jitter), "2 patches of {p} + a gap of {g}"
    if extent > crop_size:
        what = what.format(p=patch_size, g=gap)
        raise ConfigError(f"{what} + 2 x jitter {jitter} = {extent} px do not fit in {crop_size}")
    crop_seed, place_seed, label_seed, jitter_seed, chroma_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
    )
    label = tf.random.stateless_uniform([], label_seed, 0, NUM_NEIGHBOURS, dtype=tf.int32)
    offset = tf.gather(tf.constant(OFFSETS, tf.int32), label)
    low, high = centre_range(offset, crop_size, patch_size, gap, jitter, placement)
    if training:
        crop = resize_shorter(image, crop_size)
        crop = tf.image.stateless_random_crop(crop, [crop_size, crop_size, 3], seed=crop_seed)
        shifts = tf.random.stateless_uniform([2, 2], jitter_seed, -jitter, jitter + 1, dtype=tf.int32)
    else:
        crop = center_crop(image, crop_size)
        shifts = tf.zeros([2, 2], tf.int32)
    if placement == "pair":
        # Per axis, uniform in [low, high]; the bounds differ by axis, so a [0, 1) draw is scaled.
        u = tf.random.stateless_uniform([2], place_seed)
        centre = low + tf.cast(tf.floor(u * tf.cast(high - low + 1, tf.float32)), tf.int32)
    elif training:  # the same draw as the first release, so its recipe reproduces it exactly
        centre = low + tf.random.stateless_uniform([2], place_seed, 0, crop_size - extent + 1, dtype=tf.int32)
    else:
        centre = (low + high) // 2
    crop = tf.ensure_shape(tf.cast(crop, tf.float32), [crop_size, crop_size, 3])

    neighbour = centre + offset * (patch_size + gap)
    positions = tf.stack([centre, neighbour]) + shifts  # [2, 2]
    patches = tf.stack(
        [tf.slice(crop, [positions[i, 0], positions[i, 1], 0], [patch_size, patch_size, 3]) for i in range(2)]
    )
    if chroma_defence == "channel_drop":
        patches = drop_channels(patches, chroma_seed, mean)
    elif chroma_defence == "grey":
        patches = remove_green_magenta(patches)
    patches = tf.ensure_shape(patches, [2, patch_size, patch_size, 3])
    if return_debug:
        return patches, label, {"crop": crop, "positions": positions}
    return patches, label
