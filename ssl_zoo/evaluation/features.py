"""Frozen features of any backbone stage, pooled to a fixed size for linear probes.

Asano, Rupprecht & Vedaldi (2020) probe every stage after average-pooling it "to roughly 9k
dimensions" so that stages of different shapes are compared at similar capacity. We pool each
stage map to the largest g x g grid (g dividing its side) whose g*g*C stays within `max_dims`.

Features are held in memory by default: CIFAR-10's training split at every stage is about 3.3 GB
per model. For a split whose features do not fit, `extract(..., to_dir=DIR)` appends each batch's
features to one raw float32 file per stage in DIR and returns read-only `np.memmap`s of them; the
probe (`linear_probe`) reads them from disk in batches, and the kNN loads only its own stage (the
pooled features, 128 dimensions at quarter width).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

from ssl_zoo.backbones import stage_model
from ssl_zoo.data.pipeline import build_dataset
from ssl_zoo.data.sources import Source
from ssl_zoo.errors import ConfigError
from ssl_zoo.progress import Progress


def grid_for(side: int, channels: int, max_dims: int) -> int:
    best = 1
    for g in range(1, side + 1):
        if side % g == 0 and g * g * channels <= max_dims:
            best = g
    return best


def probe_model(backbone: keras.Model, stages, image_size: int, max_dims: int = 4096) -> keras.Model:
    """images -> {stage: flat pooled features}; shares the backbone's weights (inference mode)."""
    staged = stage_model(backbone, stages)
    inputs = keras.Input((image_size, image_size, 3))
    maps = staged(inputs, training=False)
    outputs = {}
    for name in stages:
        x = maps[name]
        if len(x.shape) == 4:
            side, channels = int(x.shape[1]), int(x.shape[-1])
            g = grid_for(side, channels, max_dims)
            x = keras.layers.AveragePooling2D(side // g, name=f"{name}_probe_pool")(x)
            x = keras.layers.Flatten(name=f"{name}_probe_flat")(x)
        outputs[name] = x
    return keras.Model(inputs, outputs)


def extract(
    backbone: keras.Model,
    source: Source,
    split: str,
    stages,
    image_size: int,
    batch_size: int = 500,
    max_examples: int | None = None,
    max_dims: int = 4096,
    label: str | None = None,
    to_dir=None,
):
    """Returns ({stage: float32 [N, D]}, labels [N]) over the split, centre view, no augmentation.
    Logs its progress (`ssl_zoo.progress`) as `label` (default: the backbone's name and the split).
    `to_dir`: stream the features to files there instead of memory (read-only memmaps returned)."""
    model = probe_model(backbone, stages, image_size, max_dims)
    sink = DiskFeatures(to_dir, label or f"{backbone.name}_{split}", stages) if to_dir else MemoryFeatures(stages)
    forward = tf.function(lambda x: model(x, training=False))
    ds = build_dataset(source, split, batch_size=batch_size, image_size=image_size, augment="center")
    if max_examples:
        ds = ds.unbatch().take(max_examples).batch(batch_size)
    labels = []
    total = source.num_examples(split)
    progress = Progress(label or f"{backbone.name} features of {split}",
                        min(total, max_examples) if total and max_examples else total or max_examples, unit="images")
    done = 0
    try:
        for images, y in ds:
            out = forward(images)
            sink.add({s: out[s].numpy().astype(np.float32) for s in stages})
            labels.append(y.numpy())
            done += len(labels[-1])
            progress.update(done)
    except BaseException:
        sink.close()  # a failed or interrupted extraction leaves no open file behind
        raise
    if not labels:
        raise ConfigError(f"{source.name}/{split} gave no images to extract features from")
    progress.finish(f"{done} images")
    return sink.arrays(), np.concatenate(labels)


class MemoryFeatures:
    """Each stage's batches in memory, concatenated at the end."""

    def __init__(self, stages):
        self.parts = {s: [] for s in stages}

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for s, v in batch.items():
            self.parts[s].append(v)

    def arrays(self) -> dict[str, np.ndarray]:
        return {s: np.concatenate(v) for s, v in self.parts.items()}

    def close(self) -> None:
        self.parts.clear()


class DiskFeatures:
    """Each stage's batches appended to `DIR/NAME.STAGE.f32` (raw float32, row after row), so the
    memory used is one batch whatever the split's size; read back as read-only memmaps."""

    def __init__(self, folder, name: str, stages):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        self.paths = {s: self.folder / f"{safe}.{s}.f32" for s in stages}
        self.files = {s: open(path, "wb") for s, path in self.paths.items()}
        self.rows, self.dims = 0, {}

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for s, v in batch.items():
            self.dims[s] = v.shape[1]
            self.files[s].write(np.ascontiguousarray(v, np.float32).tobytes())
        self.rows += len(next(iter(batch.values())))

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def arrays(self) -> dict[str, np.memmap]:
        self.close()
        return {s: np.memmap(path, np.float32, "r", shape=(self.rows, self.dims[s])) for s, path in self.paths.items()}


def feature_bytes(num_examples: int, dims: dict[str, int]) -> int:
    """Bytes the features of `num_examples` images take at the given per-stage widths (float32)."""
    return 4 * int(num_examples) * sum(int(d) for d in dims.values())
