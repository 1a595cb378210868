"""Jigsaw pretext (Noroozi & Favaro, ECCV 2016, "Unsupervised Learning of Visual Representations
by Solving Jigsaw Puzzles").

A crop is split into a 3x3 grid; one tile is cut inside each cell, the nine tiles are shuffled by
one permutation out of a fixed set, and the network predicts which permutation it was.

What decides whether it learns something other than shortcuts (Sec. 3.2-3.3 of the paper):

- The permutation set is chosen for a large Hamming distance between its members: "the
  minimum Hamming distance ... between the permutations plays an important role" (Table 3).
  `maximal_hamming_permutations` picks them greedily, maximising the *minimum* distance to the
  permutations already chosen (ties: the larger summed distance, which is the criterion of the
  paper's Algorithm 1, then a seeded random order), from all 9! candidates, vectorised in NumPy.
- "we leave a random gap between the tiles": each tile is smaller than its cell and placed at a
  random offset inside it, so continuing edges and textures across borders give no answer.
- "we normalize the mean and the standard deviation of each patch independently" and jitter
  colour per tile, so low-level statistics (chromatic aberration, overall colour) cannot
  identify a tile's position.

Per-tile normalisation and the backbone: our backbones take images in [0, 255] and normalise
inside with the dataset's per-channel `mean`/`std` (`ssl_zoo.backbones.resnet`). Each tile is
standardised per channel with its own statistics (z = (tile - m_tile) / s_tile) and then mapped
back to pixel space as 255 * (mean + std * z), so the backbone's own normalisation turns it into
exactly z. The tile is therefore per-tile standardised when it reaches the first convolution, and
the exported backbone keeps its ordinary contract (a natural image in [0, 255] normalised with the
dataset statistics is also roughly zero-mean, unit-variance). The mapped tile is not clipped to
[0, 255]: clipping would undo the standardisation for high-contrast tiles.

Colour jitter: brightness and contrast changes of a tile are per-channel affine maps, which the
per-tile standardisation removes exactly; what survives it and defeats chromatic cues is mixing
the channels, so each tile gets a random saturation change and is made grey with probability
`grey_probability` (the authors' released training code converts 30% of images to grey).
"""

from __future__ import annotations

import tensorflow as tf

from ssl_zoo.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD
from ssl_zoo.data.augment import center_crop, resize_shorter
from ssl_zoo.errors import ConfigError
from ssl_zoo.pretext.permutations import (  # noqa: F401  (re-exported: the jigsaw API in one place)
    decode_permutations,
    encode_permutations,
    maximal_hamming_permutations,
    min_hamming_distance,
)

GRID = 3
NUM_TILES = GRID * GRID  # = permutations.NUM_TILES
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as tf.image.rgb_to_grayscale


# ---- the transform ----------------------------------------------------------------------------
def tile_positions(crop_size: int, tile_size: int, seed, jitter: bool):
    """Top-left corners [9, 2] (row, col) of the tiles in raster order of the grid cells.

    Each tile lies inside its own cell; with `jitter` at a uniformly random offset, else centred.
    """
    cell = crop_size // GRID
    if tile_size > cell:
        raise ConfigError(f"tile_size {tile_size} is larger than a grid cell ({crop_size} // 3 = {cell})")
    slack = cell - tile_size
    if jitter and slack > 0:
        offsets = tf.random.stateless_uniform([NUM_TILES, 2], seed, minval=0, maxval=slack + 1, dtype=tf.int32)
    else:
        offsets = tf.fill([NUM_TILES, 2], slack // 2)
    k = tf.range(NUM_TILES, dtype=tf.int32)
    cells = tf.stack([k // GRID, k % GRID], axis=1) * cell
    return cells + offsets


def cut_tiles(crop, positions, tile_size: int):
    """Tiles [n, t, t, C] whose top-left corners are `positions` [n, 2] in `crop` [H, W, C]."""
    r = tf.range(tile_size, dtype=tf.int32)
    rows = positions[:, 0:1] + r  # [n, t]
    cols = positions[:, 1:2] + r
    strips = tf.gather(crop, rows, axis=0)  # [n, t, W, C]
    return tf.gather(strips, cols, axis=2, batch_dims=1)  # [n, t, t, C]


def jitter_colour(tiles, seed, grey_probability: float, saturation: tuple[float, float]):
    """Per tile: random saturation (blend with its grey version), then grey with a probability."""
    sat_seed, grey_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    n = tf.shape(tiles)[0]
    grey = tf.reduce_sum(tiles * tf.constant(_LUMA, tiles.dtype), axis=-1, keepdims=True)
    lo, hi = saturation
    factor = tf.random.stateless_uniform([n, 1, 1, 1], sat_seed, lo, hi)
    tiles = grey + factor * (tiles - grey)
    make_grey = tf.random.stateless_uniform([n, 1, 1, 1], grey_seed) < grey_probability
    return tf.where(make_grey, tf.broadcast_to(grey, tf.shape(tiles)), tiles)


def standardize_tiles(tiles, mean=IMAGENET_MEAN, std=IMAGENET_STD, eps: float = 1.0):
    """Each tile, per channel, to zero mean / unit std, expressed in the backbone's [0, 255] space.

    The result x satisfies (x / 255 - mean) / std == (tile - m_tile) / max(s_tile, eps), i.e. the
    backbone's built-in normalisation yields the per-tile standardised tile. `eps` (in pixel
    units) keeps flat tiles from being amplified into noise."""
    m, var = tf.nn.moments(tiles, axes=[1, 2], keepdims=True)
    z = (tiles - m) / tf.maximum(tf.sqrt(var), eps)
    mean = tf.constant(mean, tiles.dtype)
    std = tf.constant(std, tiles.dtype)
    return 255.0 * (mean + std * z)


def jigsaw_example(
    image,
    seed,
    permutations,
    *,
    crop_size: int,
    tile_size: int,
    training: bool = True,
    jitter: bool = True,
    colour: bool = True,
    normalize: bool = True,
    grey_probability: float = 0.3,
    saturation: tuple[float, float] = (0.4, 1.6),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    return_debug: bool = False,
):
    """One image -> (tiles [9, t, t, 3] float32 in permuted order, permutation index int32).

    `tiles[i]` is the tile of grid cell `permutations[label][i]` (cells in raster order), so
    putting `tiles[i]` back into cell `permutations[label][i]` re-assembles the crop.

    At training the crop is random (`crop_size` square after resizing the shorter side to
    `crop_size`, random horizontal flip), tiles are jittered inside their cells and colours
    jittered per tile; at evaluation (`training=False`) the crop is central, tiles centred, no
    colour jitter; the permutation is drawn from `seed` in both cases. `jitter`, `colour` and
    `normalize` switch the corresponding steps off (for tests and pictures). With `return_debug`
    a third element is returned: {"crop": the crop, "positions": [9, 2] top-left corner of each
    output tile in the crop}.
    """
    permutations = tf.convert_to_tensor(permutations, tf.int32)
    crop_seed, flip_seed, pos_seed, perm_seed, colour_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
    )
    if training:
        crop = resize_shorter(image, crop_size)
        crop = tf.image.stateless_random_crop(crop, [crop_size, crop_size, 3], seed=crop_seed)
        crop = tf.image.stateless_random_flip_left_right(crop, seed=flip_seed)
    else:
        crop = center_crop(image, crop_size)
    crop = tf.ensure_shape(tf.cast(crop, tf.float32), [crop_size, crop_size, 3])

    label = tf.random.stateless_uniform([], perm_seed, 0, tf.shape(permutations)[0], dtype=tf.int32)
    order = tf.gather(permutations, label)  # output slot i shows grid cell order[i]
    positions = tf.gather(tile_positions(crop_size, tile_size, pos_seed, jitter and training), order)
    tiles = cut_tiles(crop, positions, tile_size)
    if colour and training:
        tiles = jitter_colour(tiles, colour_seed, grey_probability, saturation)
    if normalize:
        tiles = standardize_tiles(tiles, mean, std)
    tiles = tf.ensure_shape(tiles, [NUM_TILES, tile_size, tile_size, 3])
    if return_debug:
        return tiles, label, {"crop": crop, "positions": positions}
    return tiles, label
