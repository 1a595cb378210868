"""Label efficiency: how much a pretrained backbone saves in labels. The backbone is fine-tuned
(`ssl_zoo.finetune`: a Dense head on the frozen backbone, then every layer at a lower rate) on a
class-balanced fraction of the training labels, 1 % and 10 % by default (the semi-supervised
fractions of Zhai et al. 2019 and Chen et al. 2020), next to the same architecture from random
initialisation under the same schedule, and tested on the whole held-out split.

Every fraction gets the same number of optimizer steps (a fixed schedule in steps, not in epochs),
so the curve measures what the labels are worth, not how long each point trained: 1 % of CIFAR-10
(500 images) is seen about ten times as often as 10 %.

The subset is a pure function of (labels, fraction, seed): `balanced_subset` takes the same share of
every class, at least one image each, so 1 % of a dataset never misses a class.

With `out`, the report is written after every fraction, and a run given the `out` of an earlier one
(same model, data and settings) keeps the fractions it finished: an interrupted run loses at most
the fraction it was in, and 100 % can be added to a report of 1 % and 10 % without redoing them.

The random-init twin depends only on the architecture, the examples, the schedule and the seed, so
with a `random_init_cache` (the CLI's default) an entry whose architecture was measured before
reuses that floor (`ssl_zoo.finetune.RandomInitCache`) and costs half as much.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from ssl_zoo.data.sources import Source
from ssl_zoo.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.01, 0.1)


def balanced_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Positions (sorted) of round(fraction x n_c) images of every class c, at least one, drawn
    without replacement by a seeded shuffle; all of them for fraction 1. Labels < 0 (unknown) are
    never chosen."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"a label fraction must be in (0, 1], not {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        take = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:take])
    if not chosen:
        raise ConfigError("no labelled images to choose a subset from")
    return np.sort(np.concatenate(chosen))


def read_labels(source, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(index, label) of every example of `split`, one pass (images decoded, then dropped)."""
    ds = source.examples(split).map(lambda ex: (ex["index"], ex["label"])).batch(4096)
    index, labels = zip(*((i.numpy(), y.numpy()) for i, y in ds))
    return np.concatenate(index), np.concatenate(labels)


# Subsets up to this many examples are kept in memory after their first pass: the filter reads the
# whole split to find them, which for 1 % of the labels would decode 100 images per image kept, on
# every pass. Larger subsets (10 % of ImageNet) are filtered on each pass instead.
CACHE_UP_TO = 50_000


class SubsetSource(Source):
    """`source` with `split` cut down to the examples whose `index` is in `keep_index` (the other
    splits as they are); `label` names the subset in logs and reports. The whole split is the base
    split itself; a subset of at most `CACHE_UP_TO` examples is cached in memory after one pass."""

    def __init__(self, source: Source, split: str, keep_index, label: str):
        self.source, self.split, self.keep_index = source, split, np.asarray(keep_index, np.int64)
        self.name, self.stats = f"{source.name}[{label}]", source.stats
        digest = hashlib.sha256(np.sort(self.keep_index).tobytes()).hexdigest()[:16]
        self.examples_id = f"{source.name}/{split}[{len(self.keep_index)} examples, sha256 {digest}]"
        self._mask = np.zeros(int(self.keep_index.max()) + 1, bool)
        self._mask[self.keep_index] = True

    def examples(self, split, shuffle_seed=None):
        ds = self.source.examples(split, shuffle_seed=shuffle_seed)
        if split != self.split or len(self.keep_index) == self.source.num_examples(split):
            return ds
        keep = tf.constant(self._mask)
        inside = tf.cast(tf.size(keep), tf.int64)
        ds = ds.filter(lambda ex: tf.logical_and(ex["index"] < inside,
                                                 tf.gather(keep, tf.minimum(ex["index"], inside - 1))))
        return ds.cache() if len(self.keep_index) <= CACHE_UP_TO else ds

    def num_examples(self, split):
        return len(self.keep_index) if split == self.split else self.source.num_examples(split)

    def num_classes(self):
        return self.source.num_classes()

    def held_out_split(self):
        return self.source.held_out_split()


def label_efficiency(model: str, *, dataset="tfds:cifar10", data_dir=None,
                     fractions=DEFAULT_FRACTIONS, steps_per_epoch: int = 50, epochs_frozen: int = 4,
                     epochs_unfrozen: int = 4, lr_frozen: float = 1e-3, lr_unfrozen: float = 1e-4,
                     batch_size: int = 128, image_size: int | None = None, train_split: str = "train",
                     test_split: str | None = None, max_test_examples: int | None = None, seed: int = 0,
                     out=None, run_eagerly: bool = False, robustness: dict | None = None,
                     random_init_cache=None) -> dict:
    """Fine-tunes `model` (anything `load_backbone` takes; loaded afresh for every fraction) and its
    random-init twin on each fraction of `dataset`'s labels (a source spec such as "tfds:cifar10",
    or a `Source`); returns (and with `out` writes) the report: per fraction the number of labels
    and both runs' test accuracy after each phase. `robustness`, `run_eagerly`: as `finetune`'s
    (FGSM / PGD accuracy of every final classifier; tests). `random_init_cache`: a folder or
    `RandomInitCache` of earlier random-init runs to reuse and extend (None: each floor measured)."""
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.finetune import RandomInitCache, finetune
    from ssl_zoo.train.recipe import FinetuneConfig

    fractions = sorted({float(f) for f in fractions})
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ConfigError(f"--fractions: each must be in (0, 1], not {f}")
    FinetuneConfig(epochs_frozen=epochs_frozen, epochs_unfrozen=epochs_unfrozen, lr_frozen=lr_frozen,
                   lr_unfrozen=lr_unfrozen, batch_size=batch_size, steps_per_epoch=steps_per_epoch, seed=seed,
                   image_size=image_size, max_test_examples=max_test_examples)
    if random_init_cache is not None and not isinstance(random_init_cache, RandomInitCache):
        random_init_cache = RandomInitCache(random_init_cache)
    t0 = time.time()
    data = open_source(dataset, data_dir) if isinstance(dataset, str) else dataset
    if not data.num_classes():
        raise ConfigError(f"{dataset} has no class labels to fine-tune on")
    test_split = test_split or data.held_out_split()
    log.info("label efficiency of %s: reading the labels of %s/%s", model, data.name, train_split)
    index, labels = read_labels(data, train_split)
    report = {
        "model": str(model),
        "dataset": dataset if isinstance(dataset, str) else data.name,
        "protocol": {
            # The fractions measured are the keys of "fractions" below, not part of the protocol: a
            # report with 100 % added is measured the same way as one without, and shares its tables.
            "kind": "label_efficiency",
            "subset": f"class-balanced, seed {seed}", "train_split": train_split,
            "test_split": test_split, "image_size": image_size, "batch_size": batch_size,
            "schedule": f"Dense head on the frozen backbone for {epochs_frozen} x {steps_per_epoch} steps (Adam "
                        f"{lr_frozen}), then all layers for {epochs_unfrozen} x {steps_per_epoch} steps (Adam "
                        f"{lr_unfrozen}); random crop + flip; the same steps for every fraction",
            "max_test_examples": max_test_examples, "seed": seed,
            "robustness": (f"FGSM and PGD-{robustness.get('pgd_steps', 10)} (random start, step 2.5 eps / steps) "
                           f"at L-inf eps {list(robustness.get('epsilons', (2.0, 8.0)))} in [0, 255], first "
                           f"{robustness.get('max_examples', 1000)} test images") if robustness else None,
        },
        "fractions": {},
    }
    report["fractions"], seconds_before = finished_fractions(out, report)
    for i, fraction in enumerate(fractions):
        keep = index[balanced_subset(labels, fraction, seed)]
        name = f"{fraction:g} of labels"
        if f"{fraction:g}" in report["fractions"]:
            log.info("label efficiency %d/%d: %s already measured in %s, kept", i + 1, len(fractions), name, out)
            continue
        log.info("label efficiency %d/%d: %s = %d images", i + 1, len(fractions), name, len(keep))
        run = finetune(str(model), dataset=SubsetSource(data, train_split, keep, name), epochs_frozen=epochs_frozen,
                       epochs_unfrozen=epochs_unfrozen, lr_frozen=lr_frozen, lr_unfrozen=lr_unfrozen,
                       batch_size=batch_size, steps_per_epoch=steps_per_epoch, max_test_examples=max_test_examples,
                       seed=seed, image_size=image_size, train_split=train_split, test_split=test_split,
                       run_eagerly=run_eagerly, robustness=robustness, random_init_cache=random_init_cache)
        report["fractions"][f"{fraction:g}"] = {"num_labels": int(len(keep)), "trained": run["trained"],
                                                "random_init": run["random_init"]}
        report["protocol"]["image_size"] = run["protocol"]["image_size"]
        _write(report, out, seconds_before + time.time() - t0)
    report["fractions"] = dict(sorted(report["fractions"].items(), key=lambda kv: float(kv[0])))
    _write(report, out, seconds_before + time.time() - t0)
    return report


def finished_fractions(out, report: dict) -> tuple[dict, float]:
    """({fraction: row} already measured in `out`, the seconds they took) when `out` holds a report
    of the same model, data and settings (the image size compared once it is known); ({}, 0) when
    there is none. Refuses to extend a report measured otherwise."""
    if not out or not Path(out).is_file():
        return {}, 0.0
    previous = json.loads(Path(out).read_text())
    theirs = dict(previous.get("protocol") or {})
    if report["protocol"].get("image_size") is None:  # the backbone's own size: the earlier run's
        report["protocol"]["image_size"] = theirs.get("image_size")
    if (previous.get("model"), previous.get("dataset"), theirs) != (report["model"], report["dataset"],
                                                                     report["protocol"]):
        raise ConfigError(f"{out} holds label efficiency measured on another model, dataset or settings: "
                          "give another --out")
    return dict(previous.get("fractions") or {}), float(previous.get("seconds") or 0.0)


def _write(report: dict, out, seconds: float) -> None:
    """Sets the report's protocol id and seconds so far, and writes it to `out` (if any) atomically."""
    from ssl_zoo.evaluation.protocol import protocol_id
    from ssl_zoo.preset import write_json

    report["protocol_id"] = protocol_id(report)
    report["seconds"] = round(seconds, 1)
    if out:
        write_json(report, out, sort_keys=True)

