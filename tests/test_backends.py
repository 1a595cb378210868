"""Every released backbone loads, runs and trains on the three Keras backends.

Each backend runs in its own process (`tests/backend_worker.py`; Keras fixes its backend at import):
TensorFlow gives the reference, JAX and PyTorch must match it. Per backend: every zoo entry by its
name through `ssl_zoo.load_backbone` (its weights), and for one entry of each distinct architecture
(preset `config.json`; entries of one architecture differ only in weights) the preset folder and the
`.keras` export (written to tmp by `ssl_zoo.export.write_keras`) through plain `keras.saving.load_model`; a preset and a `.keras`
file that still say `synchronized: true` (as released before batch norm was plain) through
`ssl_zoo.load_backbone`; then one `fit` step of backbone + Dense head from the same head weights.

Tolerance: every stage output within ATOL = 5e-5 of TensorFlow's (max abs diff; float32
convolutions summed in another order: measured at most 3.8e-6 on JAX 0.10.2 and 5.7e-6 on PyTorch
2.13.0 CPU, Keras 3.15.1), the first step's loss and the updated head within 1e-4 relative (measured:
equal loss to 6 decimals, head within 4e-8).

JAX and PyTorch are not dependencies of ssl_zoo: install CPU builds (`pip install torch==2.13.0
"jax[cpu]"`, as .ci/run does). Missing, a backend's test is skipped with the reason; under CI
($CI set) it fails, like the data fixture.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import release_fixtures as rf

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "backend_worker.py"
ENTRIES = [e["name"] for e in json.loads((REPO / "ssl_zoo" / "zoo" / "entries.json").read_text())["entries"]]
FIT_ENTRY = "rotnet_resnet18w025_cifar10"
LEGACY_ENTRY = "jigsaw_resnet18w025_imagenette96"
IMAGE_SIZE = 32  # the fixed-size entry's, and the size the any-size entries were evaluated at
ATOL = 5e-5
RTOL_FIT = 1e-4
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

pytestmark = pytest.mark.slow  # three processes: a load per entry, two per architecture, two legacy files, a fit step


def require_backend(backend: str) -> None:
    if importlib.util.find_spec(BACKEND_MODULES[backend]) is None:
        message = (f"Keras backend {backend!r} is not installed in this environment: "
                   f"pip install torch==2.13.0 \"jax[cpu]\" (CPU builds; .ci/run installs them)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """The sources every backend loads, written once (on TensorFlow, this process's backend)."""
    from ssl_zoo import zoo
    from ssl_zoo.export import write_keras
    from ssl_zoo.loader import load_raw_backbone

    tmp = tmp_path_factory.mktemp("backends")
    sources, architectures = [], set()
    for name in ENTRIES:
        sources.append({"label": f"{name}/zoo", "route": "ssl_zoo", "path": name})
        preset = zoo.preset_dir(zoo.get_entry(name))
        # Entries of one architecture differ only in their weights, which the zoo route above
        # loads: the plain-Keras routes run once per architecture (config.json), not per entry.
        architecture = json.dumps(json.loads((preset / "config.json").read_text()), sort_keys=True)
        if architecture in architectures:
            continue
        architectures.add(architecture)
        keras_file = tmp / f"{name}.keras"
        write_keras(load_raw_backbone(name), keras_file)
        sources += [{"label": f"{name}/preset", "route": "keras", "path": str(preset)},
                    {"label": f"{name}/keras", "route": "keras", "path": str(keras_file)}]
    legacy_preset = tmp / "legacy_preset"
    shutil.copytree(zoo.preset_dir(zoo.get_entry(LEGACY_ENTRY)), legacy_preset)
    rf.legacy_preset(legacy_preset)
    legacy_keras = tmp / f"{LEGACY_ENTRY}.keras"
    if not legacy_keras.exists():  # its architecture's plain routes ran on another entry
        write_keras(load_raw_backbone(LEGACY_ENTRY), legacy_keras)
    rf.legacy_keras_file(legacy_keras, tmp / "legacy.keras")
    sources += [{"label": "legacy/preset", "route": "ssl_zoo", "path": str(legacy_preset)},
                {"label": "legacy/keras", "route": "ssl_zoo", "path": str(tmp / "legacy.keras")}]
    rng = np.random.default_rng(0)
    np.save(tmp / "images.npy", rng.integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    np.save(tmp / "labels.npy", np.arange(4) % 10)
    np.save(tmp / "head.npy", rng.normal(0, 0.05, (128, 10)).astype("float32"))
    return {"tmp": tmp, "sources": sources, "fit": {"route": "ssl_zoo", "path": FIT_ENTRY},
            "images": str(tmp / "images.npy"), "labels": str(tmp / "labels.npy"), "head": str(tmp / "head.npy")}


def run_worker(spec: dict, backend: str) -> tuple[dict, dict]:
    require_backend(backend)
    tmp = spec["tmp"]
    job = {k: v for k, v in spec.items() if k != "tmp"} | {"backend": backend, "out": str(tmp / f"{backend}.npz")}
    (tmp / f"{backend}.json").write_text(json.dumps(job))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp / f"{backend}.json")], capture_output=True,
                          text=True, env=env, cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["backend"] == backend
    with np.load(tmp / f"{backend}.npz") as z:
        return summary, {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tensorflow_run(spec):
    return run_worker(spec, "tensorflow")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_released_backbones_match_tensorflow_and_train(backend, spec, tensorflow_run):
    ref_summary, ref = tensorflow_run
    summary, got = tensorflow_run if backend == "tensorflow" else run_worker(spec, backend)
    assert summary["loaded"] == [s["label"] for s in spec["sources"]]
    diffs = {}
    for source in spec["sources"]:
        entry = LEGACY_ENTRY if source["label"].startswith("legacy/") else source["label"].split("/")[0]
        worst = 0.0
        for key in (k for k in got if k.startswith(source["label"] + "/")):
            reference = ref[f"{entry}/zoo/{key.rsplit('/', 1)[1]}"]
            assert got[key].shape == reference.shape, key
            worst = max(worst, float(np.abs(got[key] - reference).max()))
        diffs[source["label"]] = worst
    print(f"{backend}: max abs diff to TensorFlow over all stages, per source: "
          + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    assert max(diffs.values()) <= ATOL, diffs
    fit, ref_fit = summary["fit"], ref_summary["fit"]
    print(f"{backend}: fit step loss {fit['loss']:.6f} (TensorFlow {ref_fit['loss']:.6f}), "
          f"head max abs diff {np.abs(got['fit/head_after'] - ref['fit/head_after']).max():.2g}")
    assert np.isfinite(fit["loss"]) and fit["conv_moved"] > 0 and fit["moving_mean_moved"] > 0
    np.testing.assert_allclose(fit["loss"], ref_fit["loss"], rtol=RTOL_FIT)
    np.testing.assert_allclose(got["fit/head_after"], ref["fit/head_after"], rtol=RTOL_FIT, atol=1e-6)


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_cli_finetune_runs_on_the_backend(backend, data_dir, tmp_path, tmp_path_factory):
    """`ssl-zoo finetune` with KERAS_BACKEND set: the backbone and head train with plain `fit` on
    that backend (tf.data only feeds them) and the report says which backend it was."""
    require_backend(backend)
    preset = rf.exported(tmp_path_factory)["preset"]
    out = tmp_path / "finetune.json"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "ssl_zoo.cli", "finetune", str(preset), "--data-dir", str(data_dir),
                           "--dataset", "tfds:cifar10", "--image-size", str(rf.IMAGE_SIZE), "--max-train-examples", "64",
                           "--max-test-examples", "64", "--batch-size", "32", "--epochs-frozen", "1",
                           "--epochs-unfrozen", "1", "--no-random-init", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["keras_backend"] == backend
    for phase in ("frozen", "unfrozen"):
        assert 0.0 <= report["trained"][phase]["test_accuracy"] <= 1.0
        assert np.isfinite(report["trained"][phase]["train_loss"]).all()
