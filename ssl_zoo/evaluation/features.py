"""Frozen features of any backbone stage, pooled to a fixed size for linear probes.

Asano, Rupprecht & Vedaldi (2020) probe every stage after average-pooling it "to roughly 9k
dimensions" so that stages of different shapes are compared at similar capacity. We pool each
stage map to the largest g x g grid (g dividing its side) whose g*g*C stays within `max_dims`.
"""

from __future__ import annotations

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
):
    """Returns ({stage: float32 [N, D]}, labels [N]) over the split, centre view, no augmentation.
    Logs its progress (`ssl_zoo.progress`) as `label` (default: the backbone's name and the split)."""
    model = probe_model(backbone, stages, image_size, max_dims)
    forward = tf.function(lambda x: model(x, training=False))
    ds = build_dataset(source, split, batch_size=batch_size, image_size=image_size, augment="center")
    if max_examples:
        ds = ds.unbatch().take(max_examples).batch(batch_size)
    feats = {s: [] for s in stages}
    labels = []
    total = source.num_examples(split)
    progress = Progress(label or f"{backbone.name} features of {split}",
                        min(total, max_examples) if total and max_examples else total or max_examples, unit="images")
    done = 0
    for images, y in ds:
        out = forward(images)
        for s in stages:
            feats[s].append(out[s].numpy().astype(np.float32))
        labels.append(y.numpy())
        done += len(labels[-1])
        progress.update(done)
    if not labels:
        raise ConfigError(f"{source.name}/{split} gave no images to extract features from")
    progress.finish(f"{done} images")
    return {s: np.concatenate(v) for s, v in feats.items()}, np.concatenate(labels)
