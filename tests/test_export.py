"""Release artefacts: preset, SavedModel (loaded without ssl_zoo), .keras; atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import release_fixtures as rf
from ssl_zoo.backbones import STAGES

REPO = Path(__file__).resolve().parents[1]


def _reference(backbone_path, images):
    import keras

    from ssl_zoo.backbones import stage_model

    backbone = keras.saving.load_model(backbone_path, compile=False)
    return {k: np.asarray(v) for k, v in stage_model(backbone, STAGES)(images.astype("float32"), training=False).items()}


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_preset_layout_and_metadata(tmp_path_factory):
    from ssl_zoo.preset import sha256_file

    ex = rf.exported(tmp_path_factory)
    preset = ex["preset"]
    assert sorted(p.name for p in preset.iterdir()) == [
        "README.md", "config.json", "metadata.json", "model.weights.h5", "probe_per_stage.png"]
    meta = json.loads((preset / "metadata.json").read_text())
    assert meta["weights"]["sha256"] == sha256_file(preset / "model.weights.h5")
    assert meta["name"] == rf.NAME and meta["method"]["name"] == "rotnet"
    assert meta["arch"]["width"] == 0.125
    assert meta["input"]["image_size"] == rf.IMAGE_SIZE and meta["input"]["value_range"] == [0, 255]
    assert meta["input"]["color"] == "RGB"
    np.testing.assert_allclose(meta["input"]["mean"], rf.TINY_BACKBONE["mean"], rtol=1e-6)
    np.testing.assert_allclose(meta["input"]["std"], rf.TINY_BACKBONE["std"], rtol=1e-6)
    assert list(meta["stages"]) == list(STAGES)
    assert meta["stages"]["pooled"] == [64] and meta["stages"]["stage4"] == [2, 2, 64]
    assert meta["recipe"]["name"] == rf.NAME
    assert meta["training"]["pretext_eval_accuracy"] == 0.5642
    assert meta["evaluation"]["summary"]["best_stage"] == "stage4"
    assert meta["evaluation"]["model"] == rf.NAME  # not the run path the evaluation was given
    assert meta["parameters"] > 0
    config = json.loads((preset / "config.json").read_text())
    assert config["class_name"] == "Functional" and config["ssl_zoo"]["arch"]["depth"] == 18


def test_preset_loads_with_plain_keras(tmp_path_factory):
    """No ssl_zoo code needed: deserialize config.json, load_weights, same features."""
    import keras

    ex = rf.exported(tmp_path_factory)
    config = json.loads((ex["preset"] / "config.json").read_text())
    model = keras.saving.deserialize_keras_object(config)
    model.load_weights(ex["preset"] / "model.weights.h5")
    x = rf.images(3)
    ref = _reference(ex["run"] / "backbone.keras", x)
    np.testing.assert_allclose(np.asarray(model(x.astype("float32"))), ref["pooled"], atol=1e-5)
    keras_file = keras.saving.load_model(ex["keras"], compile=False)
    np.testing.assert_allclose(np.asarray(keras_file(x.astype("float32"))), ref["pooled"], atol=1e-5)


def test_released_configs_have_plain_batch_norm(tmp_path_factory):
    """The run trained with synchronised batch norm (TensorFlow only); the preset's config.json and
    the .keras file say synchronized: false, so they load on JAX and PyTorch (tests/test_backends.py),
    and the metadata records it for the card."""
    import zipfile

    ex = rf.exported(tmp_path_factory)
    assert rf.synchronized_layers(json.loads(zipfile.ZipFile(ex["run"] / "backbone.keras").read("config.json"))) == 20
    preset_config = json.loads((ex["preset"] / "config.json").read_text())
    keras_config = json.loads(zipfile.ZipFile(ex["keras"]).read("config.json"))
    for config in (preset_config, keras_config):
        batch_norms = [layer for layer in config["config"]["layers"] if layer["class_name"] == "BatchNormalization"]
        assert len(batch_norms) == 20 and rf.synchronized_layers(config) == 0
        assert all(layer["config"]["synchronized"] is False for layer in batch_norms)
    assert json.loads((ex["preset"] / "metadata.json").read_text())["batch_norm"] == {"config": "plain"}


def test_rewriting_an_old_preset_changes_only_its_batch_norm(tmp_path, tmp_path_factory):
    """How the released entries were re-released: config.json rewritten to exactly what an export
    writes now, a "batch_norm" record in metadata.json, the weight file byte for byte; twice = once."""
    from ssl_zoo.preset import rewrite_preset_with_plain_batch_norm

    preset = rf.copy_export(tmp_path, tmp_path_factory)["preset"]
    exported_config = (preset / "config.json").read_text()
    exported_meta = json.loads((preset / "metadata.json").read_text())
    rf.legacy_preset(preset)
    weights = (preset / "model.weights.h5").read_bytes()
    assert rewrite_preset_with_plain_batch_norm(preset) == 20
    assert (preset / "config.json").read_text() == exported_config
    assert (preset / "model.weights.h5").read_bytes() == weights
    meta = json.loads((preset / "metadata.json").read_text())
    assert meta.pop("batch_norm") == {"config": "plain", "config_rewritten": True}
    assert meta == {k: v for k, v in exported_meta.items() if k != "batch_norm"}
    files = _tree_bytes(preset)
    assert rewrite_preset_with_plain_batch_norm(preset) == 0 and _tree_bytes(preset) == files


_PLAIN_TF = textwrap.dedent("""
    import sys, json
    import numpy as np
    import tensorflow as tf
    path, images_path, out_path = sys.argv[1:4]
    loaded = tf.saved_model.load(path)
    x = np.load(images_path)
    outs = {}
    for key, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        fn = loaded.signatures[key]
        res = fn(images=tf.constant(x.astype(dtype.as_numpy_dtype)))
        outs.update({f"{key}/{k}": v.numpy() for k, v in res.items()})
    np.savez(out_path, **outs)
    print(json.dumps({"ssl_zoo_imported": any(m.split(".")[0] == "ssl_zoo" for m in sys.modules),
                      "keras_imported": "keras" in sys.modules,
                      "signatures": sorted(loaded.signatures)}))
""")


def test_saved_model_loads_with_plain_tf_in_subprocess(tmp_path_factory, tmp_path):
    ex = rf.exported(tmp_path_factory)
    x = rf.images(5, seed=3)
    np.save(tmp_path / "images.npy", x)
    script = tmp_path / "plain_tf.py"
    script.write_text(_PLAIN_TF)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, str(script), str(ex["saved_model"]), str(tmp_path / "images.npy"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["ssl_zoo_imported"] is False
    assert info["signatures"] == ["serving_default", "serving_uint8"]
    got = np.load(tmp_path / "out.npz")
    ref = _reference(ex["run"] / "backbone.keras", x)
    diffs = {}
    for key in ("serving_default", "serving_uint8"):
        for stage in STAGES:
            out = got[f"{key}/{stage}"]
            assert out.shape == ref[stage].shape, (key, stage)
            diffs[f"{key}/{stage}"] = float(np.max(np.abs(out - ref[stage])))
    worst = max(diffs.values())
    print(f"SavedModel vs Keras max abs diff over all stages and both signatures: {worst:.3g}")
    assert worst < 1e-4, diffs


def test_interrupted_export_keeps_previous_preset(tmp_path, tmp_path_factory):
    """A real export, SIGKILLed halfway through writing the preset, leaves the old one intact."""
    from ssl_zoo.export import export
    from ssl_zoo.preset import sha256_file
    from ssl_zoo.loader import load_backbone

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    before = _tree_bytes(ex["preset"])
    new_run = rf.make_run(tmp_path / "run_b", seed=7)
    marker = tmp_path / "stalled"
    env = dict(os.environ, SSL_ZOO_EXPORT_STALL_AT="preset", SSL_ZOO_EXPORT_STALL_MARKER=str(marker),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "ssl_zoo.cli", "export", str(new_run), "--name", rf.NAME,
                             "--out", str(ex["out"]), "--formats", "preset"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "export never reached the stall point"
            time.sleep(0.2)
        partial = Path(marker.read_text())
        assert (partial / "model.weights.h5").exists()  # really halfway: new weights written
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _tree_bytes(ex["preset"]) == before
    load_backbone(ex["preset"])  # still a good, verifiable artefact
    # The next export replaces it and removes the leftovers of the killed one.
    export(new_run, rf.NAME, ex["out"], formats=("preset",))
    assert not partial.exists()
    meta = json.loads((ex["preset"] / "metadata.json").read_text())
    assert meta["weights"]["sha256"] == sha256_file(ex["preset"] / "model.weights.h5")
    assert _tree_bytes(ex["preset"])["model.weights.h5"] != before["model.weights.h5"]


def test_writer_error_midway_keeps_previous(tmp_path):
    from ssl_zoo.preset import atomic_dir, atomic_file

    dest = tmp_path / "artefact"
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "a.txt").write_text("new, half")
            raise RuntimeError("disk full")
    assert (dest / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact"]
    f = tmp_path / "m.keras"
    f.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert f.read_text() == "old"


def test_swap_interrupted_between_renames_is_recovered(tmp_path):
    """The one window directories cannot close (old moved aside, new not yet in place)."""
    from ssl_zoo.preset import atomic_dir, recover
    from ssl_zoo.loader import LoadError, load_backbone

    dest = tmp_path / "preset"
    aside = tmp_path / ".preset.old-abc"
    aside.mkdir()
    (aside / "a.txt").write_text("old")
    with pytest.raises(LoadError, match="interrupted export"):
        load_backbone(dest)
    recover(dest)
    assert (dest / "a.txt").read_text() == "old" and not aside.exists()
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "new"


def test_cli_export_register_and_list(tmp_path, tmp_path_factory, capsys):
    """`ssl-zoo export --register` copies the preset into the zoo, writes the card, updates the
    registry; `ssl-zoo list` shows it; the entry then loads by name."""
    from ssl_zoo.cli import main
    from ssl_zoo.loader import load_backbone

    ex = rf.exported(tmp_path_factory)
    registry = tmp_path / "zoo" / "entries.json"
    cards = tmp_path / "model_cards"
    rc = main(["export", str(ex["run"]), "--name", rf.NAME, "--out", str(tmp_path / "out"), "--eval",
               str(ex["run"] / "eval.json"), "--formats", "preset", "--register", "--registry", str(registry),
               "--cards-dir", str(cards), "--hf", "hf://ssl-zoo/tiny"])
    assert rc == 0
    entries = json.loads(registry.read_text())["entries"]
    assert [e["name"] for e in entries] == [rf.NAME]
    e = entries[0]
    assert e["preset"] == f"presets/{rf.NAME}" and (registry.parent / e["preset"] / "model.weights.h5").exists()
    assert e["probe"]["accuracy"] == rf.eval_report()["summary"]["best_stage_probe"]
    assert e["hf"] == "hf://ssl-zoo/tiny"
    assert (cards / f"{rf.NAME}.md").exists() and (cards / f"{rf.NAME}_probe.png").exists()
    os.environ["SSL_ZOO_REGISTRY"] = str(registry)
    try:
        assert main(["list"]) == 0
        listed = capsys.readouterr().out
        row = next(line for line in listed.splitlines() if line.startswith(rf.NAME))
        probe = rf.eval_report()["summary"]
        dataset = rf.eval_report()["dataset"].removeprefix("tfds:")
        assert f"{100 * probe['best_stage_probe']:.2f} % ({probe['best_stage']}, {dataset})" in row
        model = load_backbone(rf.NAME)
        assert model.output.shape[-1] == 64
    finally:
        del os.environ["SSL_ZOO_REGISTRY"]


@pytest.mark.slow
def test_release_entry_script(tmp_path, tmp_path_factory):
    """export/release_entry.py: export + register + reload every artefact, compare features."""
    ex = rf.exported(tmp_path_factory)
    env = dict(os.environ, SSL_ZOO_REGISTRY=str(tmp_path / "zoo" / "entries.json"), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(REPO / "export" / "release_entry.py"), str(ex["run"]), "--name", rf.NAME,
                           "--eval", str(ex["run"] / "eval.json"), "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    print(report)
    assert set(report["max_abs_diff"]) == {"preset", "keras", "saved_model"}
    assert (tmp_path / "model_cards" / f"{rf.NAME}.md").exists()
    assert rf.NAME in (tmp_path / "model_cards" / "LEADERBOARD.md").read_text()


def test_export_takes_recipe_header_only_from_a_file_that_reproduces_the_run(tmp_path, tmp_path_factory):
    """`export --recipe FILE`: the card quotes the file's header (its measured numbers) instead of the
    header recorded when the run started, and any value that differs from the run is refused."""
    from ssl_zoo.cards import recipe_toml
    from ssl_zoo.export import ExportError, export

    ex = rf.exported(tmp_path_factory)
    recorded = json.loads((ex["run"] / "run.json").read_text())["recipe"]
    body = recipe_toml(recorded)
    good = tmp_path / "good.toml"
    good.write_text("# Tiny RotNet.\n# Measured: 56.42 % rotation after 2 epochs.\n" + body + "\n")
    export(ex["run"], rf.NAME, tmp_path / "out", formats=("preset",), recipe_file=good)
    meta = json.loads((tmp_path / "out" / "preset" / "metadata.json").read_text())
    assert meta["recipe"]["description"] == "Tiny RotNet.\nMeasured: 56.42 % rotation after 2 epochs."
    assert "Measured: 56.42 % rotation" in (tmp_path / "out" / "preset" / "README.md").read_text()
    assert {k: v for k, v in meta["recipe"].items() if k != "description"} == \
        {k: v for k, v in recorded.items() if k != "description"}

    bad = tmp_path / "bad.toml"
    bad.write_text("# Header.\n" + body.replace("epochs = 2", "epochs = 3") + "\n")
    with pytest.raises(ExportError, match=r"train\.epochs: file 3 vs run 2"):
        export(ex["run"], rf.NAME, tmp_path / "out2", formats=("preset",), recipe_file=bad)
    assert not (tmp_path / "out2").exists()

    # A run recorded before a setting existed (optimizer.beta_1) trained with its default: a file that
    # states the default reproduces it, one that states another value does not.
    from ssl_zoo.export import recipe_header_from_file

    older = json.loads(json.dumps(recorded))
    older["optimizer"].pop("beta_1")
    with_default = tmp_path / "default.toml"
    with_default.write_text("# Header.\n" + body.replace("[optimizer]", "[optimizer]\nbeta_1 = 0.9", 1)
                            if "beta_1" not in body else "# Header.\n" + body)
    assert recipe_header_from_file({"recipe": older}, with_default)["description"] == "Header."
    other = tmp_path / "other.toml"
    other.write_text("# Header.\n" + recipe_toml({**recorded, "optimizer": {**recorded["optimizer"], "beta_1": 0.5}}))
    with pytest.raises(ExportError, match=r"optimizer\.beta_1: file 0\.5 vs run 0\.9"):
        recipe_header_from_file({"recipe": older}, other)


def test_diagnostics_go_into_metadata_and_the_methods_card(tmp_path, tmp_path_factory):
    """`export --diagnostics` records an `ssl-zoo diagnose` report as the metadata's generic
    "diagnostics" section; the card shows it as the entry's method renders it. `--context-check`
    (the former name) also takes the bare report the former `ssl-zoo context-check` wrote."""
    from ssl_zoo.cards import render_card
    from ssl_zoo.export import export

    ex = rf.exported(tmp_path_factory)
    report = {"accuracy": {"as_drawn": 0.3335, "centre_from_other_image": 0.2810, "centre_blanked": 0.2757},
              "chance": 0.125, "examples": 3925, "context_share": 0.2774, "run": "runs/somewhere",
              "data": "folder:imagenette-96px", "split": "val"}
    (tmp_path / "diagnostics.json").write_text(json.dumps({"context_check": report}))
    (tmp_path / "context.json").write_text(json.dumps(report))
    export(ex["run"], rf.NAME, tmp_path / "out", formats=("preset",), diagnostics=tmp_path / "diagnostics.json")
    export(ex["run"], rf.NAME, tmp_path / "alias", formats=("preset",), context_check=tmp_path / "context.json")
    meta = json.loads((tmp_path / "out" / "preset" / "metadata.json").read_text())
    recorded = meta["diagnostics"]["context_check"]
    assert recorded["accuracy"] == report["accuracy"] and "run" not in recorded and "context_check" not in meta
    alias = json.loads((tmp_path / "alias" / "preset" / "metadata.json").read_text())
    assert alias["diagnostics"] == meta["diagnostics"]
    # The fixture is a RotNet run: RotNet renders no line for a relative-patch diagnostic.
    assert "context-check" not in (tmp_path / "out" / "preset" / "README.md").read_text()
    meta["method"] = {"name": "relative_patch", "patch_size": 24}
    assert ("33.35 % as drawn, 28.10 % with the centre patch of another image, 27.57 % with the centre blanked "
            "(chance 12.50 %); 28 % of its above-chance accuracy needs the centre patch (the rest survives") in \
        render_card(meta)
    export(ex["run"], rf.NAME, tmp_path / "plain", formats=("preset",))
    assert json.loads((tmp_path / "plain" / "preset" / "metadata.json").read_text())["diagnostics"] is None
    # Through the former name (release_entry.py's path), a {name: report} of several reports (split-brain's
    # two halves) is taken as it is, not wrapped as one bare report; no report keeps its local "run" path.
    two = {"colorization_check": {"accuracy": 0.18, "run": "/somewhere"}, "lightness_check": {"accuracy": 0.05,
                                                                                               "run": "/somewhere"}}
    (tmp_path / "two.json").write_text(json.dumps(two))
    export(ex["run"], rf.NAME, tmp_path / "two", formats=("preset",), context_check=tmp_path / "two.json")
    assert json.loads((tmp_path / "two" / "preset" / "metadata.json").read_text())["diagnostics"] == {
        "colorization_check": {"accuracy": 0.18}, "lightness_check": {"accuracy": 0.05}}


def test_registry_probe_numbers_are_rounded(tmp_path, tmp_path_factory):
    """Evaluation reports hold float32 accuracies (0.7315000295639038); the registry writes them
    rounded to 4 decimals, as the cards' model-index does."""
    from ssl_zoo.zoo import entry_from_preset

    preset = rf.copy_export(tmp_path, tmp_path_factory)["preset"]
    meta = json.loads((preset / "metadata.json").read_text())
    meta["evaluation"]["summary"].update(best_stage_probe=0.7315000295639038, random_init_best_probe=0.5616000294685364,
                                         knn=0.62379997)
    (preset / "metadata.json").write_text(json.dumps(meta))
    probe = entry_from_preset(preset)["probe"]
    assert (probe["accuracy"], probe["random_init_best"], probe["knn"]) == (0.7315, 0.5616, 0.6238)


# Two points in the fast suite (the first artefact, the swap), all five with --slow (about 25 s each).
@pytest.mark.parametrize("point", ["preset", pytest.param("saved_model", marks=pytest.mark.slow),
                                   pytest.param("keras", marks=pytest.mark.slow),
                                   pytest.param("release", marks=pytest.mark.slow), "release_swap"])
def test_export_killed_anywhere_leaves_the_old_or_the_new_release_whole(point, tmp_path, tmp_path_factory):
    """Issue 14 item 6: an export is one transaction. A real `ssl-zoo export` (all formats),
    SIGKILLed inside each artefact, before the release manifest and between the two renames of the
    swap, leaves the previous release whole (after the recovery the next run does first: the one
    window a folder swap cannot close); the next export then writes the new release whole and leaves
    no partial or old sibling, inside the folder or beside it (an earlier version's per-artefact
    leftover `.saved_model.partial-*` included)."""
    from ssl_zoo.export import export
    from ssl_zoo.loader import load_backbone
    from ssl_zoo.preset import recover, sha256_file

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    out = ex["out"]
    (out / ".saved_model.partial-x1y2").mkdir()  # what a killed export of the previous code left
    (out / ".saved_model.partial-x1y2" / "saved_model.pb").write_bytes(b"half")
    before = _tree_bytes(out)
    new_run = rf.make_run(tmp_path / "run_b", seed=11)
    marker = tmp_path / "stalled"
    env = dict(os.environ, SSL_ZOO_EXPORT_STALL_AT=point, SSL_ZOO_EXPORT_STALL_MARKER=str(marker),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "ssl_zoo.cli", "export", str(new_run), "--name", rf.NAME,
                             "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, f"export never reached the stall point {point}"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stalled_at = Path(marker.read_text())
    if point == "release_swap":
        assert not out.exists() and stalled_at.exists()  # old aside, new not in place
    recover(out)  # what the next export (and `atomic_dir`) does first
    assert _tree_bytes(out) == before, f"killed at {point}: the previous release is not whole"
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]

    written = export(new_run, rf.NAME, out)  # the next run
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
    assert not [p for p in out.rglob(".*")], "partial or old leftovers inside the new release"
    release = json.loads((out / "release.json").read_text())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"release.json"}
    assert set(release["files"]) == files
    assert all(sha256_file(out / f) == digest for f, digest in release["files"].items())
    assert release["files"]["preset/model.weights.h5"] != sha256_file_bytes(before["preset/model.weights.h5"])
    meta = json.loads((out / "preset" / "metadata.json").read_text())
    assert json.loads((out / "saved_model" / "ssl_zoo_metadata.json").read_text()) == meta  # one release
    for kind in ("preset", "keras"):
        load_backbone(written[kind])


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_export_refuses_a_folder_that_is_not_an_export(tmp_path, tmp_path_factory):
    """An export replaces its folder as a whole: a folder holding anything else is refused, untouched."""
    from ssl_zoo.export import ExportError, export

    ex = rf.exported(tmp_path_factory)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes.txt"):
        export(ex["run"], rf.NAME, tmp_path, formats=("preset",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _require_onnx():
    import importlib.util

    missing = [m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        message = f"ONNX export needs {missing}: pip install \"ssl_zoo[onnx]\" (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("any_size", [False, True])
def test_onnx_runs_in_onnxruntime_with_one_input_and_matches_keras(any_size, tmp_path, tmp_path_factory):
    """`--formats onnx`: one input `images`, one output per stage, every stage within 1e-4 of Keras;
    an any-size backbone at two sizes (unknown sizes must not be frozen into the graph)."""
    _require_onnx()
    import onnxruntime as ort

    from ssl_zoo.backbones import resnet, stage_model
    from ssl_zoo.export import export

    if any_size:
        source = tmp_path / "anysize.keras"
        resnet(18, 0.125, "cifar", None, name="backbone").save(source)
        sizes = (16, 28)
    else:
        source = rf.exported(tmp_path_factory)["run"]
        sizes = (rf.IMAGE_SIZE,)
    paths = export(source, "onnx_tiny", tmp_path / "export", formats=("keras", "onnx"))
    onnx_file = Path(paths["onnx"])
    release = json.loads((tmp_path / "export" / "release.json").read_text())
    assert "onnx_tiny.onnx" in release["files"]  # hashed like every other artefact
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert sorted(o.name for o in session.get_outputs()) == sorted(STAGES)
    import keras

    keras_model = stage_model(keras.saving.load_model(paths["keras"], compile=False), STAGES)
    for size in sizes:
        x = np.random.default_rng(size).uniform(0, 255, (3, size, size, 3)).astype("float32")
        want = {k: np.asarray(v) for k, v in keras_model(x, training=False).items()}
        got = dict(zip((o.name for o in session.get_outputs()), session.run(None, {"images": x})))
        for stage in STAGES:
            assert got[stage].shape == want[stage].shape, (size, stage)
            np.testing.assert_allclose(got[stage], want[stage], atol=1e-4, rtol=1e-4, err_msg=f"{size} px {stage}")


def test_unknown_export_format_is_named(tmp_path, tmp_path_factory):
    from ssl_zoo.export import ExportError, export

    with pytest.raises(ExportError, match=r"unknown export formats \['tflite'\]; known: preset, saved_model, keras, onnx"):
        export(rf.exported(tmp_path_factory)["run"], "x", tmp_path / "export", formats=("keras", "tflite"))


@pytest.mark.parametrize("name, sizes", [("rotnet_resnet18w025_cifar10", (32,)),
                                         ("jigsaw_resnet18w025_imagenette96", (32, 48))])  # any size
def test_export_of_a_zoo_name_writes_other_formats_of_the_released_entry(name, sizes, tmp_path, capsys):
    """`ssl-zoo export ZOO_NAME --out DIR --formats onnx,keras`: the packaged entry, checked as a load
    would, under its own name; the ONNX file gives the released backbone's features (an any-size
    entry at two sizes)."""
    _require_onnx()
    import onnxruntime as ort

    import ssl_zoo
    from ssl_zoo.cli import main

    assert main(["export", name, "--out", str(tmp_path / "out"), "--formats", "onnx,keras"]) == 0
    assert f"onnx: {tmp_path / 'out' / (name + '.onnx')}" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "out" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    backbone = ssl_zoo.load_backbone(name)
    for size in sizes:
        x = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3)).astype("float32")
        got = dict(zip((o.name for o in session.get_outputs()), session.run(None, {"images": x})))["pooled"]
        np.testing.assert_allclose(got, np.asarray(backbone(x)), atol=1e-4, rtol=1e-4, err_msg=f"{size} px")
    # Its training record is the released one: a recipe or diagnostics only apply to a training run.
    from ssl_zoo.export import ExportError, export

    with pytest.raises(ExportError, match="--recipe only apply to a training run"):
        export(name, None, tmp_path / "other", formats=("keras",), recipe_file="training/x.toml")
