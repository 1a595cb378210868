"""`ssl-zoo evaluate`: per-stage linear probes and kNN for a backbone and for the same
architecture at random initialisation (the floor every number must be read against)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from ssl_zoo.backbones import FIXED_LAYERS
from ssl_zoo.data.sources import open_source
from ssl_zoo.errors import ConfigError
from ssl_zoo.evaluation.features import extract, feature_bytes, probe_model
from ssl_zoo.evaluation.knn import knn_accuracy
from ssl_zoo.evaluation.linear_probe import linear_probe
from ssl_zoo.evaluation.protocol import protocol_id
from ssl_zoo.train.recipe import EvalConfig, ProbeConfig, evaluation_protocol

log = logging.getLogger(__name__)


def random_init_like(backbone: keras.Model, seed: int = 0) -> keras.Model:
    """Same architecture and preprocessing, freshly initialised weights. Frozen layers (a fixed
    input filter such as the Sobel front, `FIXED_LAYERS`) are part of the architecture, not of what was learned:
    their weights are copied, or the floor would be a different network."""
    keras.utils.set_random_seed(seed)
    fresh = keras.Model.from_config(backbone.get_config())
    for layer in backbone.layers:
        if layer.name in FIXED_LAYERS:
            fresh.get_layer(layer.name).set_weights(layer.get_weights())
    return fresh


def architecture_fingerprint(backbone: keras.Model) -> str:
    """sha256 of everything `random_init_like` keeps: the backbone's config (its name aside, which
    each method sets) and the weights of its fixed layers. Two backbones with the same fingerprint
    have the same random-init twin at a given seed."""
    config = backbone.get_config()
    config.pop("name", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for layer in backbone.layers:
        if layer.name in FIXED_LAYERS:
            for weight in layer.get_weights():
                digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def evaluate_backbone(
    backbone: keras.Model,
    *,
    source,
    stages,
    image_size: int,
    knn_k: int = 200,
    train_split: str = "train",
    test_split: str | None = None,
    max_train_examples: int | None = None,
    probe_epochs: int = 30,
    seed: int = 0,
    label: str | None = None,
    features_dir=None,
) -> dict:
    """`test_split` None: the source's held-out split (`Source.held_out_split`). `label` names the
    model in the progress lines (default: the backbone's name). `features_dir`: stream the features
    to a temporary folder there (removed when this model's probes are done) instead of memory."""
    test_split = test_split or source.held_out_split()
    num_classes = source.num_classes()
    if not num_classes:
        raise ConfigError(f"{source.name} has no class labels to evaluate with")
    name = label or backbone.name
    if features_dir is None:
        check_features_fit_in_memory(backbone, source, stages, image_size, [train_split, test_split],
                                     max_train_examples)
        return _evaluate_features(backbone, source, stages, image_size, knn_k, train_split, test_split,
                                  max_train_examples, probe_epochs, seed, name, num_classes, None)
    os.makedirs(features_dir, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="features_", dir=features_dir)
    try:
        return _evaluate_features(backbone, source, stages, image_size, knn_k, train_split, test_split,
                                  max_train_examples, probe_epochs, seed, name, num_classes, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def available_memory_bytes() -> int | None:
    """Memory the OS can still give this process (Linux: MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_features_fit_in_memory(backbone, source, stages, image_size: int, splits, max_train_examples=None) -> None:
    """A one-sentence error before extraction when one model's features of the splits would take
    more than 80 % of the memory available, instead of the process dying of it halfway."""
    available = available_memory_bytes()
    counts = [source.num_examples(split) for split in splits]
    if available is None or any(c is None for c in counts):
        return
    if max_train_examples:
        counts[0] = min(counts[0], max_train_examples)
    dims = {k: int(v.shape[-1]) for k, v in probe_model(backbone, stages, image_size).output.items()}
    need = feature_bytes(sum(counts), dims)
    if need > 0.8 * available:
        raise ConfigError(f"the features of {source.name} ({sum(counts):,} images, {len(dims)} stages) take "
                          f"{need / 2**30:.1f} GiB and this machine has {available / 2**30:.1f} GiB available: give "
                          f"--features-dir DIR to stream them to disk")


def _evaluate_features(backbone, source, stages, image_size, knn_k, train_split, test_split, max_train_examples,
                       probe_epochs, seed, name, num_classes, folder) -> dict:
    train_f, train_y = extract(backbone, source, train_split, stages, image_size, max_examples=max_train_examples,
                               label=f"{name}: features of {train_split}", to_dir=folder)
    test_f, test_y = extract(backbone, source, test_split, stages, image_size, label=f"{name}: features of {test_split}",
                             to_dir=folder)
    result = {"stages": {}, "knn": None}
    for i, s in enumerate(stages):
        result["stages"][s] = linear_probe(
            train_f[s], train_y, test_f[s], test_y, num_classes, epochs=probe_epochs, seed=seed,
            label=f"{name}: linear probe {s} ({i + 1}/{len(stages)})",
        )
        log.info("%s probe %s: %.4f", name, s, result["stages"][s]["test_accuracy"])
    knn_stage = "pooled" if "pooled" in stages else stages[-1]
    result["knn"] = {
        "stage": knn_stage,
        "k": knn_k,
        "accuracy": knn_accuracy(train_f[knn_stage], train_y, test_f[knn_stage], test_y, num_classes, k=knn_k),
    }
    result["num_train"], result["num_test"] = int(len(train_y)), int(len(test_y))
    return result


recipe_protocol = evaluation_protocol  # its former name and home (it imports no TensorFlow from ssl_zoo.train.recipe)


def evaluate_model(
    model: str | keras.Model,
    *,
    data_dir=None,
    source: str = "tfds:cifar10",
    stages=("stem", "stage1", "stage2", "stage3", "stage4", "pooled"),
    knn_k: int = 200,
    out: str | None = None,
    seed: int = 0,
    max_train_examples: int | None = None,
    image_size: int = 32,
    probe_epochs: int = 30,
    train_split: str = "train",
    test_split: str | None = None,
    cache: bool = False,
    features_dir=None,
) -> dict:
    """Probes and kNN of `model` and of its random-init twin on `source`. `cache` keeps an image
    folder's splits decoded in memory, so each split is decoded once instead of once per model;
    it is off by default because a user's folder may not fit in memory. `test_split` None means
    the source's held-out split ("test", or "val" for an Imagenette-style folder); `ssl-zoo
    evaluate` always names one (the recipe's [evaluation] test_split or --test-split).
    `features_dir`: features streamed to disk there (`evaluate_backbone`); the numbers' protocol
    is the same, and the report says where the features were held."""
    from ssl_zoo.loader import input_size_for, load_raw_backbone

    # Values that cannot work are a ConfigError naming them, before anything is loaded.
    EvalConfig(source=source, train_split=train_split, test_split=test_split or "held-out", image_size=image_size,
               stages=tuple(stages), knn_k=knn_k)
    ProbeConfig(probe_epochs=probe_epochs, max_train_examples=max_train_examples, seed=seed)
    t0 = time.time()
    stages = list(stages)
    backbone = load_raw_backbone(model) if not isinstance(model, keras.Model) else model
    # Before any data is read: a backbone with a fixed input layer cannot take another size.
    input_size_for(backbone, image_size, backbone.name if isinstance(model, keras.Model) else str(model))
    data = open_source(source, data_dir, cache=cache)
    test_split = test_split or data.held_out_split()
    common = dict(source=data, stages=stages, image_size=image_size, knn_k=knn_k, train_split=train_split,
                  test_split=test_split, max_train_examples=max_train_examples,
                  probe_epochs=probe_epochs, seed=seed, features_dir=features_dir)
    trained = evaluate_backbone(backbone, label="pretrained", **common)
    floor = evaluate_backbone(random_init_like(backbone, seed), label="random init", **common)
    per_stage = {
        s: {"trained": trained["stages"][s]["test_accuracy"], "random_init": floor["stages"][s]["test_accuracy"],
            "dims": trained["stages"][s]["dims"]}
        for s in stages
    }
    best = max(stages, key=lambda s: per_stage[s]["trained"])
    best_floor = max(stages, key=lambda s: per_stage[s]["random_init"])
    report = {
        "model": model if isinstance(model, str) else model.name,
        "dataset": source,
        "protocol": {
            "train_split": train_split, "test_split": test_split, "image_size": image_size,
            "linear_probe": f"frozen features, stage maps average-pooled to <=4096 dims, standardised; "
                            f"one Dense layer, AdamW lr 1e-3 cosine, wd 5e-4, {probe_epochs} epochs, batch 256; "
                            f"reported on the test split once",
            "knn": f"weighted kNN on L2-normalised {trained['knn']['stage']} features, cosine, k={knn_k}, T=0.07",
            "num_train": trained["num_train"], "num_test": trained["num_test"], "seed": seed,
        },
        "linear_probe": per_stage,
        "knn": {"stage": trained["knn"]["stage"], "k": knn_k, "trained": trained["knn"]["accuracy"],
                "random_init": floor["knn"]["accuracy"]},
        "summary": {
            "best_stage": best,
            "best_stage_probe": per_stage[best]["trained"],
            "random_init_probe_same_stage": per_stage[best]["random_init"],
            "random_init_best_probe": per_stage[best_floor]["random_init"],
            "random_init_best_stage": best_floor,
            "gain_over_best_random_init": per_stage[best]["trained"] - per_stage[best_floor]["random_init"],
            "knn": trained["knn"]["accuracy"],
            "knn_random_init": floor["knn"]["accuracy"],
        },
        "seconds": round(time.time() - t0, 1),
        "features_held": "disk" if features_dir is not None else "memory",
        # Inputs the source could not read (each counted once, whichever model met it): the numbers
        # above are over the images that remained (num_train, num_test).
        "skipped": data.stats.counts(),
    }
    report["protocol_id"] = protocol_id(report)  # the leaderboard compares only equal ids
    if data.stats.total:
        log.warning("%s: %s", data.name, data.stats.summary())
    if out:
        from ssl_zoo.preset import write_json

        write_json(report, out, sort_keys=True)
    return report
