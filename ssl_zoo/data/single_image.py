"""One photo as a whole training set (Asano, Rupprecht & Vedaldi, ICLR 2020, "A critical analysis of
self-supervision, or what we can learn from a single image").

`SingleImageSource` serves `n` examples per epoch, each a fresh augmented crop of the one photo,
with the paper's augmentation: a random crop of 1e-4 to all of the photo's area (area drawn
uniformly, aspect ratio log-uniform in 3/4 .. 4/3), rotation by up to ±35°, a horizontal flip, and
linear colour and intensity changes (contrast, brightness, per-channel gain). Crops are pure
functions of (epoch seed, example index): every epoch is new, a resumed run sees the same stream,
and two runs with the same seed see the same crops. A method's own augmentation then runs on top,
as on any source.

Spec: `single:PATH` (relative to the data dir), with options after `?`:
`height=H` keeps the photo's first H rows (the camera-trap photos' information strip),
`size=S` the side of the crops served (default 64), `n=N` examples per epoch (default 50,000,
CIFAR-10's epoch, so schedules compare). Every split serves the same kind of crops; the held-out
split (`test`) draws from its own seeds.
"""

from __future__ import annotations

import math
import urllib.parse
from pathlib import Path

import numpy as np
import tensorflow as tf

from ssl_zoo.data.decode import SkipStats, decode_file
from ssl_zoo.data.sources import DataError, Source

MIN_AREA = 1e-4
MAX_AREA = 1.0
ASPECT = (3.0 / 4.0, 4.0 / 3.0)
MAX_ROTATION_DEGREES = 35.0
CONTRAST = (0.6, 1.4)
BRIGHTNESS = 0.2  # +- this fraction of 255
CHANNEL_GAIN = (0.9, 1.1)
_SPLIT_SALT = {"train": 0, "test": 1, "val": 1, "validation": 1}


def single_image_crop(photo, size: int, seed) -> tf.Tensor:
    """One augmented crop (uint8 [size, size, 3]) of `photo` (uint8 [H, W, 3]) for stateless `seed`."""
    s = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8))
    h = tf.cast(tf.shape(photo)[0], tf.float32)
    w = tf.cast(tf.shape(photo)[1], tf.float32)
    area = tf.random.stateless_uniform([], s[0], MIN_AREA, MAX_AREA) * h * w
    log_ratio = tf.random.stateless_uniform([], s[1], math.log(ASPECT[0]), math.log(ASPECT[1]))
    ratio = tf.exp(log_ratio)
    crop_w = tf.minimum(tf.sqrt(area * ratio), w)
    crop_h = tf.minimum(tf.sqrt(area / ratio), h)
    angle = tf.random.stateless_uniform([], s[2], -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES) * (math.pi / 180.0)
    # The axis-aligned box that holds the crop at any angle up to this one, so that rotating it
    # and cutting the centre leaves no empty corner (clipped to the photo near its edges).
    grow = tf.abs(tf.cos(angle)) + tf.abs(tf.sin(angle))
    box_w, box_h = tf.minimum(crop_w * grow, w), tf.minimum(crop_h * grow, h)
    cy = box_h / 2 + tf.random.stateless_uniform([], s[3], 0.0, 1.0) * (h - box_h)
    cx = box_w / 2 + tf.random.stateless_uniform([], s[4], 0.0, 1.0) * (w - box_w)
    big = int(math.ceil(size * math.sqrt(2.0)))
    box = tf.stack([(cy - box_h / 2) / h, (cx - box_w / 2) / w, (cy + box_h / 2) / h, (cx + box_w / 2) / w])
    patch = tf.image.crop_and_resize(tf.cast(photo, tf.float32)[None], box[None], [0], [big, big])  # [1, big, big, 3]
    # Rotate about the patch centre (the projective transform maps output to input coordinates).
    cos, sin = tf.cos(angle), tf.sin(angle)
    c = (big - 1) / 2.0
    transform = tf.stack([cos, -sin, c - c * cos + c * sin, sin, cos, c - c * sin - c * cos, 0.0, 0.0])
    patch = tf.raw_ops.ImageProjectiveTransformV3(
        images=patch, transforms=transform[None], output_shape=tf.constant([big, big]), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    # The crop's own extent inside the (grown) box, resized to the output size.
    inner_h, inner_w = crop_h / box_h, crop_w / box_w
    inner = tf.stack([0.5 - inner_h / 2, 0.5 - inner_w / 2, 0.5 + inner_h / 2, 0.5 + inner_w / 2])
    crop = tf.image.crop_and_resize(patch, inner[None], [0], [size, size])[0]
    crop = tf.image.stateless_random_flip_left_right(crop, seed=s[5])
    # Linear colour and intensity changes: contrast about the mean, brightness, per-channel gain.
    contrast = tf.random.stateless_uniform([], s[6], *CONTRAST)
    mean = tf.reduce_mean(crop, axis=(0, 1), keepdims=True)
    rng = tf.random.stateless_uniform([4], s[7], 0.0, 1.0)
    brightness = (2.0 * rng[0] - 1.0) * BRIGHTNESS * 255.0
    gains = CHANNEL_GAIN[0] + rng[1:] * (CHANNEL_GAIN[1] - CHANNEL_GAIN[0])
    crop = ((crop - mean) * contrast + mean + brightness) * gains
    return tf.ensure_shape(tf.cast(tf.clip_by_value(tf.round(crop), 0.0, 255.0), tf.uint8), [size, size, 3])


class SingleImageSource(Source):
    """`n` augmented crops of one photo per epoch (module docstring). Labels are -1."""

    def __init__(self, path: str | Path, *, size: int = 64, n: int = 50_000, height: int | None = None):
        self.path = Path(path).expanduser()
        self.name = f"single:{self.path.name}"
        self.stats = SkipStats()
        if size < 8 or n < 1:
            raise DataError(f"{self.name}: size must be >= 8 and n >= 1, got size={size}, n={n}")
        photo = decode_file(str(self.path), min_side=size, stats=self.stats) if self.path.is_file() else None
        if photo is None:
            why = self.stats.summary() if self.path.is_file() else "no such file"
            raise DataError(f"single-image source {self.path}: {why}")
        if height is not None:
            if not 0 < height <= photo.shape[0]:
                raise DataError(f"{self.name}: height={height} is outside the photo's {photo.shape[0]} rows")
            photo = photo[:height]
        self.photo = np.ascontiguousarray(photo)
        self.size, self.n = size, n

    def examples(self, split, shuffle_seed=None):
        salt = self._salt(split)
        photo = tf.constant(self.photo)
        # An epoch's seed (the pipeline passes its epoch seed as shuffle_seed when training) makes
        # every epoch's crops new; without one (evaluation) the crops are fixed.
        epoch = tf.constant(shuffle_seed if shuffle_seed is not None else -1, tf.int64)

        def example(i):
            seed = tf.stack([epoch * 4 + salt, i])
            return {"image": single_image_crop(photo, self.size, seed), "label": tf.constant(-1, tf.int64), "index": i}

        return tf.data.Dataset.range(self.n).map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def num_examples(self, split):
        self._salt(split)
        return self.n

    def _salt(self, split: str) -> int:
        if split not in _SPLIT_SALT:
            raise DataError(f"{self.name} has splits {sorted(_SPLIT_SALT)}, not {split!r}")
        return _SPLIT_SALT[split]


def open_single_image(value: str, root) -> SingleImageSource:
    """`single:PATH?height=H&size=S&n=N` -> the source (PATH relative to the data dir `root`)."""
    path_text, _, query = value.partition("?")
    options = urllib.parse.parse_qs(query, strict_parsing=bool(query))
    unknown = sorted(set(options) - {"height", "size", "n"})
    if unknown:
        raise DataError(f"single-image source options are height, size and n; got {unknown}")
    try:
        kwargs = {k: int(v[-1]) for k, v in options.items()}
    except ValueError as e:
        raise DataError(f"single-image source options must be integers: {query!r}") from e
    path = Path(path_text).expanduser()
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    return SingleImageSource(path, **kwargs)
