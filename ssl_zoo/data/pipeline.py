"""The one input pipeline every method and evaluation uses.

source examples -> shard (per input pipeline) -> shuffle (seeded) -> per-example transform
(stateless seed from (seed, epoch, pipeline, position)) -> batch -> skip (resume) -> batch
transform -> prefetch.

Two front ends share it:

- `build_dataset`: batches of `(images, labels)` views for evaluation and fine-tuning (a named
  view augmentation such as "center" or "crop_flip");
- `build_pretext_dataset`: a method's training / evaluation batches, always a dict
  `{"inputs": ..., "targets": ... (if the pretext has labels), "index": int64 [B]}`. A method's
  per-example transform returns `{"inputs": ..., "targets": ...}` itself (`pretext_example`), so
  the pipeline never guesses whether a tuple is `(inputs, target)` or `(view1, view2)`; `index`
  is each source image's identity (see `ssl_zoo.data.sources`), for per-image state.

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
from ssl_zoo.errors import ConfigError

log = logging.getLogger(__name__)

Augment = Callable[[tf.Tensor, int, tf.Tensor], tf.Tensor]
EXAMPLE_KEYS = ("inputs", "targets")


def pretext_example(out, who: str = "the transform") -> dict:
    """Checks a per-example (or batch) transform's result: a dict with "inputs" and optionally
    "targets", nothing else. Anything else is a ConfigError naming `who` and what it returned."""
    if not isinstance(out, dict) or "inputs" not in out or set(out) - set(EXAMPLE_KEYS):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise ConfigError(f"{who} must return a dict {{'inputs': ..., 'targets': ...}} ('targets' optional, multi-view "
                          f"methods put their views in 'inputs'); it returned {got}")
    return out


def _transformed(source, split, transform, *, training, seed, epoch, shuffle_buffer, input_context, repeat):
    """Unbatched `transform(example, stateless_seed)` over the (sharded, shuffled) split."""
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

    # Not converted by AutoGraph: transforms are written with tf ops (no Python control flow on
    # tensors), and a ConfigError a transform raises then reaches the user as itself, not as
    # AutoGraph's StagingError.
    @tf.autograph.experimental.do_not_convert
    def prepare(position, ex):
        # The seed comes from the stream position (not the image's index), so that every epoch
        # and every repeat of an image draws a new augmentation.
        example_seed = tf.stack(
            [tf.constant(epoch_seed, tf.int64), tf.cast(pipeline_id, tf.int64) * (1 << 40) + position]
        )
        return transform(ex, example_seed)

    return ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _batched(ds, batch_size, *, drop_remainder, skip_batches, batch_transform):
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if skip_batches:
        ds = ds.skip(skip_batches)
    if batch_transform is not None:
        ds = ds.map(batch_transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def build_dataset(
    source: Source,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    augment: str | Augment = "center",
    training: bool = False,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    shuffle_buffer: int = 10_000,
    input_context: tf.distribute.InputContext | None = None,
    drop_remainder: bool | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batched dataset of `(images, labels)`: float32 views in [0, 255] and the source's labels
    (-1 where it has none). `augment` names a view augmentation (`ssl_zoo.data.augment`) or is a
    function `(image, size, seed) -> view`. With `repeat` the dataset is endless: the caller
    takes the number of steps it wants. `batch_size` is per input pipeline (per replica when
    built through `strategy.distribute_datasets_from_function`)."""
    augment_fn = AUGMENTATIONS[augment] if isinstance(augment, str) else augment

    def view(ex, example_seed):
        out = augment_fn(ex["image"], image_size, example_seed)
        if not isinstance(out, tf.Tensor):
            raise ConfigError(f"augment must return one view tensor, got {type(out).__name__}; a method's "
                              f"pretext examples are built by build_pretext_dataset")
        return out, ex["label"]

    ds = _transformed(source, split, view, training=training, seed=seed, epoch=epoch, shuffle_buffer=shuffle_buffer,
                      input_context=input_context, repeat=repeat)
    return _batched(ds, batch_size, drop_remainder=training if drop_remainder is None else drop_remainder,
                    skip_batches=skip_batches, batch_transform=None)


def build_pretext_dataset(
    source: Source,
    split: str,
    method,
    *,
    batch_size: int,
    image_size: int,
    training: bool = False,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    shuffle_buffer: int = 10_000,
    input_context: tf.distribute.InputContext | None = None,
    drop_remainder: bool | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of `method`'s pretext examples: `{"inputs", "targets"?, "index"}` (module docstring).

    `method.example_transform(image, size, seed, training=, index=)` makes each example (with
    `label=` too for a method whose `reads_labels` is true) and
    `method.batch_transform(batch)` (if any) each batch; `index` is the source images' identity
    (for RotNet's four rotations per image it stays the B source indices)."""
    who = f"{type(method).__name__}.example_transform"

    # Only a method that says it reads labels (the supervised reference) is handed them.
    labels = {"label"} if getattr(method, "reads_labels", False) else set()

    def example(ex, example_seed):
        extra = {k: ex[k] for k in labels}
        out = pretext_example(method.example_transform(ex["image"], image_size, example_seed, training=training,
                                                       index=ex["index"], **extra), who)
        return {**out, "index": ex["index"]}

    batch_transform = None
    if method.batch_transform is not None:
        @tf.autograph.experimental.do_not_convert
        def batch_transform(batch):
            index = batch.pop("index")
            out = pretext_example(method.batch_transform(batch), f"{type(method).__name__}.batch_transform")
            return {**out, "index": index}

    ds = _transformed(source, split, example, training=training, seed=seed, epoch=epoch,
                      shuffle_buffer=shuffle_buffer, input_context=input_context, repeat=repeat)
    return _batched(ds, batch_size, drop_remainder=training if drop_remainder is None else drop_remainder,
                    skip_batches=skip_batches, batch_transform=batch_transform)


def keras_pairs(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Pretext batches as the `(inputs, targets)` pairs Keras `fit` takes (default-step methods)."""
    return ds.map(lambda batch: (batch["inputs"], batch["targets"]))


def check_not_empty(ds: tf.data.Dataset, source: Source, split: str) -> None:
    """Fails before training, with the skip counts, if nothing survives decoding."""
    for _ in ds.take(1):
        return
    raise DataError(
        f"{source.name}/{split} yields no usable batch ({source.stats.summary()}); "
        "check the path, the split, and that the batch size is not larger than the dataset"
    )


def build_inference_dataset(
    source: Source,
    split: str,
    transform: Callable,
    *,
    global_batch: int,
    image_size: int,
    num_examples: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """The whole split once, in listing order, for an in-order pass on every replica: batches of
    `{"inputs", "index", "label"}` (label -1 where the source has none; for reporting, such as
    the NMI of cluster assignments against the true classes) with `transform(image, size, seed, index=)` -> `{"inputs": ...}`.

    Every input pipeline yields the same number of full per-replica batches (a collective
    must never wait for a replica that ran out): each shard is padded with copies of its first
    example marked `index = -1`, which the caller drops. `num_examples` is the split's listed
    size (images that fail to decode are dropped and padded over, and so absent from the result).
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    replicas = input_context.num_replicas_in_sync if input_context else 1
    per_replica = input_context.get_per_replica_batch_size(global_batch) if input_context else global_batch
    local_replicas = max(replicas // pipelines, 1)
    per_shard = -(-num_examples // pipelines)
    steps = -(-per_shard // (per_replica * local_replicas))
    if num_examples < pipelines:
        raise DataError(f"{source.name}/{split}: {num_examples} examples cannot be shared by {pipelines} input pipelines")

    def example(ex, example_seed):
        out = pretext_example(transform(ex["image"], image_size, example_seed, index=ex["index"]), "inference transform")
        return {"inputs": out["inputs"], "index": ex["index"], "label": ex["label"]}

    ds = _transformed(source, split, example, training=False, seed=0, epoch=0, shuffle_buffer=1,
                      input_context=input_context, repeat=False)
    padding = ds.take(1).map(lambda ex: {"inputs": ex["inputs"], "index": tf.constant(-1, tf.int64),
                                         "label": tf.constant(-1, tf.int64)}).repeat()
    ds = ds.concatenate(padding).batch(per_replica, drop_remainder=True).take(steps * local_replicas)
    return ds.prefetch(tf.data.AUTOTUNE)
