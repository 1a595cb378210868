"""Tiny trained-run folders and exports shared by the release-path tests (export, loader, hub,
cards, finetune). Plain functions with a per-process cache rather than pytest fixtures, so that
several test modules share one build without a conftest.

The run folder mirrors what `ssl-zoo train --out` writes (pretext_model.keras, backbone.keras,
run.json, history.json). Its history and the evaluation report are fixture data in the real
schemas, not measurements: they only check that exports and cards carry numbers through intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

IMAGE_SIZE = 16
TINY_BACKBONE = {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": IMAGE_SIZE,
                 "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
NAME = "rotnet_resnet18w0125_tiny"
_CACHE: dict = {}


def images(n: int = 4, seed: int = 0, size: int = IMAGE_SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def randomize_batchnorm(model, seed: int) -> None:
    """Non-trivial BN statistics and scales (fresh ones are identity, and the zero-initialised
    gammas would hide most weights from the features): makes export comparisons meaningful."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))


def recipe_dict(name: str = NAME) -> dict:
    from ssl_zoo.train.recipe import recipe_from_dict

    raw = {
        "name": name,
        "method": {"name": "rotnet", "head_hidden_units": [16], "image_size": IMAGE_SIZE, "augment": "crop_flip"},
        "backbone": dict(TINY_BACKBONE),
        "data": {"source": "tfds:cifar10", "image_size": IMAGE_SIZE},
        "train": {"epochs": 2, "eval_every_epochs": 2, "global_batch": 8},
    }
    return recipe_from_dict(raw, name=name).to_dict()


def eval_report(stages=("stem", "stage1", "stage2", "stage3", "stage4", "pooled")) -> dict:
    """An `ssl-zoo evaluate` report in the real schema, with fixture values."""
    trained = dict(zip(stages, (0.3112, 0.3541, 0.3987, 0.4316, 0.4471, 0.4203)))
    floor = dict(zip(stages, (0.3305, 0.3420, 0.3391, 0.3172, 0.2810, 0.2634)))
    dims = dict(zip(stages, (2048, 2048, 4096, 2048, 1024, 64)))
    # Sorted keys, as `ssl-zoo evaluate` writes them (pooled, stage1, ..., stem).
    per_stage = {s: {"trained": trained[s], "random_init": floor[s], "dims": dims[s]} for s in sorted(stages)}
    best = max(stages, key=lambda s: trained[s])
    best_floor = max(stages, key=lambda s: floor[s])
    return {
        "model": "runs/tiny/backbone.keras",
        "dataset": "tfds:cifar10",
        "protocol": {"train_split": "train", "test_split": "test", "image_size": IMAGE_SIZE,
                     "linear_probe": "frozen features ...; one Dense layer, AdamW lr 1e-3 cosine, wd 5e-4, 30 epochs, batch 256",
                     "knn": "weighted kNN on L2-normalised pooled features, cosine, k=200, T=0.07",
                     "num_train": 5000, "num_test": 10000, "seed": 0},
        "linear_probe": per_stage,
        "knn": {"stage": "pooled", "k": 200, "trained": 0.3876, "random_init": 0.2551},
        "summary": {"best_stage": best, "best_stage_probe": trained[best],
                    "random_init_probe_same_stage": floor[best], "random_init_best_probe": floor[best_floor],
                    "random_init_best_stage": best_floor,
                    "gain_over_best_random_init": trained[best] - floor[best_floor],
                    "knn": 0.3876, "knn_random_init": 0.2551},
        "seconds": 812.4,
    }


def make_run(root: Path, seed: int = 0, name: str = NAME) -> Path:
    """A training-run folder as `ssl-zoo train --out` leaves it, with a tiny RotNet model."""
    import keras

    from ssl_zoo.methods import build_method
    from ssl_zoo.methods.base import extract_backbone

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    recipe = recipe_dict(name)
    method_cfg = dict(recipe["method"])
    method = build_method(method_cfg.pop("name"), backbone=recipe["backbone"], **method_cfg)
    model = method.build_model()
    randomize_batchnorm(model, seed)
    model.save(root / "pretext_model.keras")
    extract_backbone(model).save(root / "backbone.keras")
    (root / "run.json").write_text(json.dumps({"recipe": recipe, "method": method.config(), "steps": 20, "replicas": 1}))
    history = [
        {"epoch": 1, "step": 10, "seconds": 31.5, "images_per_second": 40.6, "train_loss": 1.3011, "train_accuracy": 0.3504},
        {"epoch": 2, "step": 20, "seconds": 29.9, "images_per_second": 42.8, "train_loss": 1.1023, "train_accuracy": 0.5211,
         "eval_loss": 1.0517, "eval_accuracy": 0.5642},
    ]
    (root / "history.json").write_text(json.dumps(history))
    (root / "eval.json").write_text(json.dumps(eval_report()))
    return root


def exported(tmp_path_factory) -> dict:
    """Run folder + `ssl_zoo.export.export` of it (all formats), built once per test process."""
    if "exported" not in _CACHE:
        from ssl_zoo.export import export

        base = tmp_path_factory.mktemp("release")
        run = make_run(base / "run")
        paths = export(run, NAME, base / "export", eval_report=run / "eval.json", hardware="test fixture (no training)")
        _CACHE["exported"] = {"base": base, "run": run, "out": base / "export", **{k: Path(v) for k, v in paths.items()}}
    return _CACHE["exported"]


def copy_export(tmp_path: Path, tmp_path_factory) -> dict:
    """A private copy of the shared export, for tests that modify files."""
    src = exported(tmp_path_factory)
    dst = tmp_path / "export"
    shutil.copytree(src["out"], dst)
    return {"run": src["run"], "out": dst, "preset": dst / "preset", "saved_model": dst / "saved_model",
            "keras": dst / f"{NAME}.keras"}


def with_synchronized_batch_norm(config) -> int:
    """The reverse of ssl_zoo.preset.plain_batch_norm, in place: a config as released before batch
    norm was plain (and as a training run writes it). Returns the number of layers set."""
    n = 0
    if isinstance(config, dict):
        if config.get("class_name") == "BatchNormalization":
            config["config"]["synchronized"] = True
            n += 1
        n += sum(with_synchronized_batch_norm(v) for v in config.values())
    elif isinstance(config, list):
        n += sum(with_synchronized_batch_norm(v) for v in config)
    return n


def rehash(folder: Path) -> None:
    """Rewrites a preset's file manifest after a test edited one of its files: what someone who
    rewrites metadata.json too can do, so that the checks behind the hashes are still tested."""
    from ssl_zoo.preset import write_manifest

    write_manifest(folder)


def legacy_preset(folder: Path) -> None:
    """Turns a preset folder into one released before batch norm was plain (config says
    synchronized: true, metadata has no "batch_norm" record and, as then, no file manifest), in place."""
    config = json.loads((folder / "config.json").read_text())
    assert with_synchronized_batch_norm(config) > 0
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    meta = json.loads((folder / "metadata.json").read_text())
    meta.pop("batch_norm", None)
    meta.pop("files", None)
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def legacy_keras_file(src: Path, dst: Path) -> None:
    """A copy of the .keras file `src` whose config says synchronized: true (other members as they are)."""
    import zipfile

    with zipfile.ZipFile(src) as zin:
        members = [(info, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(dst, "w") as zout:
        for info, data in members:
            if info.filename == "config.json":
                config = json.loads(data)
                assert with_synchronized_batch_norm(config) > 0
                data = json.dumps(config).encode()
            zout.writestr(info, data)


def synchronized_layers(config) -> int:
    """How many BatchNormalization layers of a serialized config say synchronized: true."""
    if isinstance(config, dict):
        own = config.get("class_name") == "BatchNormalization" and bool(config["config"].get("synchronized"))
        return int(own) + sum(synchronized_layers(v) for v in config.values())
    if isinstance(config, list):
        return sum(synchronized_layers(v) for v in config)
    return 0
