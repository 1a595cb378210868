"""The one input pipeline every method and evaluation uses.

source examples -> shard (per input pipeline) -> shuffle (seeded) -> per-example augmentation
(stateless seed from (seed, epoch, pipeline, index)) -> batch -> skip (resume) -> pretext batch
transform -> prefetch.

A training pipeline is built per epoch from `(seed, epoch)`. That makes the data order of every
epoch a pure function of the recipe, so a run resumed mid-epoch skips exactly the batches it
already trained on and sees the same images as an unbroken run.
"""

from __future__ import annotations

import logging
from typing import Callable

import tensorflow as tf

from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.data.sources import DataError, Source

log = logging.getLogger(__name__)

Augment = Callable[[tf.Tensor, int, tf.Tensor], tf.Tensor]


def build_dataset(
    source: Source,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    augment: str | Augment = "center",
    batch_transform: Callable | None = None,
    training: bool = False,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    shuffle_buffer: int = 10_000,
    input_context: tf.distribute.InputContext | None = None,
    drop_remainder: bool | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batched dataset of `(inputs, targets)`.

    Without `batch_transform` the elements are `(images, labels)`: float32 images in [0, 255] and
    the source's labels (-1 where it has none). With `repeat` the dataset is endless: the caller
    takes the number of steps it wants. `batch_size` is per input pipeline (per replica
    when built through `strategy.distribute_datasets_from_function`).
    """
    augment_fn = AUGMENTATIONS[augment] if isinstance(augment, str) else augment
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    epoch_seed = seed * 1_000_003 + epoch
    ds = source.examples(split, shuffle_seed=epoch_seed if training else None)
    if input_context and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, pipeline_id)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    if repeat:
        # Every worker must run the same number of steps; a shard that lost files to decoding
        # errors wraps around instead of ending early (which would hang the collectives).
        ds = ds.repeat()

    def prepare(index, ex):
        example_seed = tf.stack(
            [tf.constant(epoch_seed, tf.int64), tf.cast(pipeline_id, tf.int64) * (1 << 40) + index]
        )
        out = augment_fn(ex["image"], image_size, example_seed)
        # A per-example pretext transform returns its own (inputs, target); a view keeps the label.
        return out if isinstance(out, tuple) else (out, ex["label"])

    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=training if drop_remainder is None else drop_remainder)
    if skip_batches:
        ds = ds.skip(skip_batches)
    if batch_transform is not None:
        ds = ds.map(batch_transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def check_not_empty(ds: tf.data.Dataset, source: Source, split: str) -> None:
    """Fails before training, with the skip counts, if nothing survives decoding."""
    for _ in ds.take(1):
        return
    raise DataError(
        f"{source.name}/{split} yields no usable batch ({source.stats.summary()}); "
        "check the path, the split, and that the batch size is not larger than the dataset"
    )
