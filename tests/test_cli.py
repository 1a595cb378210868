"""The command line talks: mistakes are one sentence on stderr with status 2 before TensorFlow is
imported, TensorFlow's start-up noise is dropped (kept with -v), long commands log progress and
write their report to a file by default; `import keras, ssl_zoo` is detected when it costs oneDNN."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import release_fixtures as rf
from ssl_zoo.errors import ConfigError
from ssl_zoo.train import recipe as recipes

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "training" / "rotnet_resnet18w025_cifar10.toml"
ZOO_NAME = "rotnet_resnet18w025_cifar10"


def _bad_recipe(tmp_path: Path, old: str, new: str) -> Path:
    text = RECIPE.read_text()
    assert old in text, old
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def _cases(tmp_path: Path):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "binary.toml").write_bytes(b"\x00\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "a_file").write_text("x")
    ok = str(RECIPE)
    out = ["--out", str(tmp_path / "run")]
    train = ["train", ok, *out]
    return [
        (["train", str(tmp_path / "missing.toml"), *out], "recipe file", "does not exist"),
        (["train", str(tmp_path / "a_dir"), *out], "is a directory", "recipe"),
        (["train", str(tmp_path / "binary.toml"), *out], "is a binary file", "recipe"),
        (["train", str(_bad_recipe(tmp_path, "epochs = 20", 'epochs = "twenty"')), *out], "[train] epochs", "'twenty'"),
        ([*train, "--set", "train.checkpoint_every=0"], "checkpoint_every", "at least 1, not 0"),
        ([*train, "--set", "train.log_every=0"], "log_every", "at least 1, not 0"),
        ([*train, "--global-batch", "0"], "--global-batch", "at least 1, not 0"),
        ([*train, "--set", "train.global_batch=-8"], "global_batch", "not -8"),
        ([*train, "--set", "data.image_size=0"], "[data] image_size", "not 0"),
        ([*train, "--set", "optimizer.learning_rate=nan"], "learning_rate", "finite"),
        ([*train, "--set", "optimizer.learning_rate=-0.1"], "learning_rate", "not -0.1"),
        ([*train, "--epochs", "0"], "--epochs", "not 0"),
        ([*train, "--epochs", "-3"], "--epochs", "not -3"),
        ([*train, "--steps-per-epoch", "0"], "--steps-per-epoch", "not 0"),
        ([*train, "--steps-per-epoch", "-1"], "--steps-per-epoch", "not -1"),
        (["train", ok, "--out", str(tmp_path / "a_file")], "--out", "existing file"),
        ([*train, "--data-dir", str(tmp_path / "no_such_dir")], "no_such_dir", "does not exist"),
        (["finetune", ZOO_NAME, "--batch-size", "0"], "--batch-size", "not 0"),
        (["finetune", ZOO_NAME, "--batch-size", "-2"], "--batch-size", "not -2"),
        (["finetune", ZOO_NAME, "--epochs-frozen", "-1"], "--epochs-frozen", "not -1"),
        (["finetune", ZOO_NAME, "--epochs-unfrozen", "-1"], "--epochs-unfrozen", "not -1"),
        (["label-efficiency", ZOO_NAME, "--fractions", "0.01,2"], "--fractions", "not 2"),
        (["label-efficiency", ZOO_NAME, "--fractions", "ten"], "--fractions", "'ten'"),
        (["label-efficiency", ZOO_NAME, "--steps-per-epoch", "0"], "--steps-per-epoch", "not 0"),
        (["label-efficiency", ZOO_NAME, "--robustness-eps", "0"], "--robustness-eps", "positive"),
        (["finetune", ZOO_NAME, "--out", str(tmp_path / "a_dir")], "--out", "is a directory"),
        (["finetune", ZOO_NAME, "--data-dir", str(tmp_path / "no_such_dir")], "no_such_dir", "does not exist"),
        (["evaluate", ZOO_NAME, "--knn-k", "0"], "--knn-k", "not 0"),
        (["evaluate", ZOO_NAME, "--image-size", "0"], "--image-size", "not 0"),
        (["evaluate", ZOO_NAME, "--recipe", str(tmp_path / "missing.toml")], "recipe file", "does not exist"),
    ]


def test_mistakes_are_one_sentence_on_stderr_with_status_2_before_tensorflow_is_imported(tmp_path):
    cases = _cases(tmp_path)
    code = ("import json, sys\nfrom ssl_zoo.cli import main\nrc = main(json.loads(sys.argv[1]))\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\nsys.exit(rc)\n")
    env = {**os.environ, "SSL_ZOO_DATA_DIR": str(tmp_path)}
    for argv, *expected in cases:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith("ssl-zoo: error: "), (argv, proc.stderr)
        assert all(e in lines[0] for e in expected), (argv, lines[0], expected)
    assert not (tmp_path / "run").exists() and not (tmp_path / "results").exists()


def test_every_field_is_checked_by_its_type_including_a_new_one():
    @dataclasses.dataclass
    class Section(recipes.Checked):
        count: int = 1
        rate: float = 0.5
        name: str = recipes.one_of(("a", "b"), "a")
        maybe: int | None = None
        offset: int = recipes.at_least(0, 0)
        names: tuple[str, ...] = ("x",)
        flag: bool = False

    Section()
    Section(count=3, rate=2, maybe=4, offset=0, names=("y", "z"), flag=True)
    for bad, message in [({"count": 0}, "count must be at least 1"), ({"count": True}, "whole number"),
                         ({"count": 2.0}, "whole number"), ({"rate": float("nan")}, "finite"),
                         ({"rate": float("inf")}, "finite"), ({"rate": -1.0}, "at least 0"), ({"rate": "x"}, "number"),
                         ({"name": "c"}, "one of ['a', 'b']"), ({"maybe": 0}, "maybe must be at least 1"),
                         ({"offset": -1}, "at least 0"), ({"names": ()}, "non-empty"), ({"names": ("", )}, "item"),
                         ({"flag": 1}, "true or false")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            Section(**bad)

    @dataclasses.dataclass
    class Unknown(recipes.Checked):
        pairs: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="no check for fields of type"):  # never silently unchecked
        Unknown()


def test_recipe_values_are_checked_when_the_recipe_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe 'bad': \[train\] epochs must be a whole number of at least 1, "
                                          r"not 'twenty'"):
        recipes.load_recipe(_bad_recipe(tmp_path, "epochs = 20", 'epochs = "twenty"'))
    recipe = recipes.load_recipe(RECIPE)
    for override, message in [("optimizer.name=\"adam\"", r"\[optimizer\] name must be one of"),
                              ("optimizers.x.learning_rate=1", "no section"),
                              ("evaluation.knn_k=0", r"\[evaluation\] knn_k"),
                              ("evaluation.stages=[]", r"\[evaluation\] stages must be a non-empty list"),
                              ("train.eval_every_epochs=0", "eval_every_epochs")]:
        with pytest.raises(ConfigError, match=message):
            recipes.apply_overrides(recipe, [override])
    for path in sorted((REPO / "training").rglob("*.toml")):  # every shipped recipe passes
        recipes.load_recipe(path)


def test_tensorflow_start_up_noise_is_dropped_unless_verbose(tmp_path):
    # A recipe naming no known method fails after TensorFlow is imported (method_from_recipe).
    bad = _bad_recipe(tmp_path, 'name = "rotnet"', 'name = "no_such_method"')
    argv = [sys.executable, "-m", "ssl_zoo.cli", "train", str(bad), "--out", str(tmp_path / "run"),
            "--data-dir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 2, quiet.stderr[-3000:]
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_method" in lines[0], quiet.stderr
    verbose = subprocess.run(argv[:3] + ["-v"] + argv[3:], capture_output=True, text=True, timeout=300, env=env)
    assert verbose.returncode == 2
    # What -v shows is what the quiet run dropped (TensorFlow prints some of it on every machine).
    noisy = [line for line in verbose.stderr.splitlines() if "ssl-zoo: error" not in line]
    assert noisy and not any(line in quiet.stderr for line in noisy if line.strip()), verbose.stderr[-3000:]


def test_tensorflow_imported_first_with_onednn_off_is_warned_once_with_the_fix():
    import ssl_zoo

    assert ssl_zoo._onednn_warning(None, True, False) and ssl_zoo.ONEDNN_FIX in ssl_zoo._onednn_warning(None, True, False)
    assert ssl_zoo._onednn_warning(None, True, True) is None  # already on (this CPU's default)
    assert ssl_zoo._onednn_warning("0", True, False) is None  # the user's own choice
    assert ssl_zoo._onednn_warning(None, False, None) is None  # ssl_zoo first: it sets the variable itself
    # For real: TensorFlow imported with oneDNN off, the variable then unset as in a user's shell.
    code = ("import os, warnings\nwarnings.simplefilter('always')\nimport tensorflow\n"
            "del os.environ['TF_ENABLE_ONEDNN_OPTS']\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n    import ssl_zoo\n    import ssl_zoo\n"
            "print([str(w.message) for w in seen if 'oneDNN' in str(w.message)])\n")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = eval(proc.stdout.strip().splitlines()[-1])
    assert len(seen) == 1 and "import ssl_zoo before keras" in seen[0], proc.stdout


def _arrays(n=24):
    from ssl_zoo.data.sources import ArraySource

    return ArraySource(rf.images(n, seed=0), labels=np.random.default_rng(0).integers(0, 3, n), name="tiny_arrays")


def test_finetune_logs_progress_and_its_data_never_runs_out(tmp_path_factory, caplog):
    """An epoch is one pass of batches and Keras is told so: no "Your input ran out of data"
    (today's cause: a `take` of unknown length ends each first epoch by running out)."""
    from ssl_zoo.finetune import finetune

    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        report = finetune(rf.exported(tmp_path_factory)["preset"], dataset=_arrays(), epochs_frozen=2,
                          epochs_unfrozen=1, batch_size=8, max_train_examples=20, max_test_examples=8,
                          random_init=False, run_eagerly=True)
    assert not [w for w in seen if "ran out of data" in str(w.message)], [str(w.message) for w in seen]
    assert len(report["trained"]["frozen"]["train_loss"]) == 2
    assert "pretrained frozen: done in" in caplog.text and "pretrained unfrozen: done in" in caplog.text
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        finetune(ZOO_NAME, dataset=_arrays(), batch_size=0)


def test_evaluate_logs_feature_extraction_and_probe_progress(tmp_path_factory, caplog):
    from ssl_zoo.evaluation.run import evaluate_backbone, evaluate_model
    from ssl_zoo.loader import load_backbone

    backbone = load_backbone(rf.exported(tmp_path_factory)["preset"])
    with caplog.at_level(logging.INFO):
        evaluate_backbone(backbone, source=_arrays(), stages=["stage4", "pooled"], image_size=rf.IMAGE_SIZE, knn_k=5,
                          test_split="train", probe_epochs=2, label="pretrained")
    text = caplog.text
    assert "pretrained: features of train: done in" in text and "24 images" in text
    assert "pretrained: linear probe stage4 (1/2): done in" in text and "linear probe pooled (2/2)" in text
    with pytest.raises(ConfigError, match="knn_k must be at least 1"):
        evaluate_model(backbone, source="tfds:cifar10", knn_k=0)


def test_progress_lines_have_a_rate_and_an_eta(caplog, monkeypatch):
    from ssl_zoo import progress

    clock = iter([0.0, 1.0, 6.0, 6.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO):
        p = progress.Progress("features", total=100, unit="images", every=5.0)
        p.update(10)  # t=1: first update, no line yet
        p.update(60)  # t=6: 50 images in 5 s -> 10/s, 40 left -> ETA 4 s
    assert "features: 60/100 images (60%), 10 images/s, ETA 4 s" in caplog.text, caplog.text


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_reports_go_to_a_file_by_default_and_its_path_is_printed(tmp_path, monkeypatch, capsys, command):
    from ssl_zoo import cli

    # A data directory given relative to where the tests were started (README's test command gives
    # ../shared/data) must still name it after the test moves into tmp_path.
    if os.environ.get("SSL_ZOO_DATA_DIR"):
        monkeypatch.setenv("SSL_ZOO_DATA_DIR", str(Path(os.environ["SSL_ZOO_DATA_DIR"]).resolve()))
    monkeypatch.chdir(tmp_path)
    fake = {"summary": {}, "protocol": {"test_split": "test"}, "trained": {}}
    target = "ssl_zoo.finetune.finetune" if command == "finetune" else "ssl_zoo.evaluation.run.evaluate_model"
    with mock.patch(target, return_value=fake) as called:
        assert cli.main([command, ZOO_NAME]) == 0
    out = called.call_args.kwargs["out"]
    assert Path(out).parent == Path("results") and Path(out).name.startswith(f"{command}-{ZOO_NAME}-")
    assert f"report: {out}" in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_130_in_one_line(tmp_path):
    """A scheduler's SIGTERM mid-run: a checkpoint at the step reached, one warning line saying
    where, exit 130 with no traceback, and the same command resumes from it."""
    import signal
    import time

    from helpers import tiny_recipe_toml, write_image_folder

    write_image_folder(tmp_path, n=64)
    recipe = tmp_path / "recipe.toml"
    tiny_recipe_toml(recipe, epochs=50, checkpoint_every=1000, log_every=1)
    argv = [sys.executable, "-m", "ssl_zoo.cli", "train", str(recipe), "--out", str(tmp_path / "run"),
            "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "run" / "epoch_totals.json").exists() \
            and not list((tmp_path / "run").glob("tensorboard/*")):
        time.sleep(0.5)
    time.sleep(3)  # some steps in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    saved = [line for line in err.splitlines() if "checkpoint saved to" in line]
    assert len(saved) == 1 and "rerun the same command to resume" in saved[0], err[-3000:]
    assert list((tmp_path / "run" / "checkpoints").glob("ckpt-*.index"))
