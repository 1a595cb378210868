"""The shared training loop: a few real steps, Keras `fit` compatibility, recipes, resumption."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_recipe, tiny_recipe_toml, write_image_folder
from ssl_zoo.data.sources import ArraySource, ImageFolderSource
from ssl_zoo.methods import METHODS, build_method, method_from_recipe
from ssl_zoo.train.loop import Trainer
from ssl_zoo.train.recipe import apply_overrides, load_recipe

REPO = Path(__file__).resolve().parents[1]


def _arrays(n=32, size=16):
    return ArraySource(np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8))


def test_trainer_runs_steps_and_saves_models(tmp_path):
    write_image_folder(tmp_path)
    recipe = tiny_recipe(epochs=2, steps_per_epoch=3)
    method = build_method("rotnet", backbone=recipe.backbone, head_hidden_units=(16,), image_size=16)
    source = ImageFolderSource(tmp_path / "images")
    result = Trainer(method, recipe, source, tf.distribute.get_strategy(), tmp_path / "run").fit()
    assert [h["step"] for h in result["history"]] == [3, 6]
    assert all(np.isfinite(h["train_loss"]) for h in result["history"])
    backbone = keras.saving.load_model(tmp_path / "run" / "backbone.keras", safe_mode=True)
    assert backbone.get_layer("stage4") is not None
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["steps"] == 6 and run["recipe"]["name"] == "tiny_rotnet"
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_end_of_epoch_evaluation_reports_progress(tmp_path, caplog):
    """The held-out evaluation after each epoch logs progress lines (ssl_zoo.progress) and its end."""
    write_image_folder(tmp_path)
    recipe = tiny_recipe(epochs=1, steps_per_epoch=2)
    recipe.data.eval_split = "train"
    method = build_method("rotnet", backbone=recipe.backbone, head_hidden_units=(16,), image_size=16)
    trainer = Trainer(method, recipe, ImageFolderSource(tmp_path / "images"), tf.distribute.get_strategy(),
                      tmp_path / "run")
    with caplog.at_level("INFO", logger="ssl_zoo.progress"):
        history = trainer.fit()["history"]
    assert "eval_accuracy" in history[-1]
    lines = [r.getMessage() for r in caplog.records if r.name == "ssl_zoo.progress"]
    assert any(line.startswith("held-out evaluation (train): done in") for line in lines), lines


def test_rotnet_loss_decreases_on_real_images(tmp_path):
    write_image_folder(tmp_path, n=64)
    recipe = tiny_recipe(epochs=1, steps_per_epoch=30, global_batch=16)
    recipe = apply_overrides(recipe, ["optimizer.learning_rate=0.4", "data.eval_split=\"train\""])
    method = build_method("rotnet", backbone=recipe.backbone, head_hidden_units=(16,), image_size=16)
    trainer = Trainer(method, recipe, ImageFolderSource(tmp_path / "images"), tf.distribute.get_strategy(), tmp_path / "run")
    before = trainer.evaluate_pretext()
    trainer.fit()
    after = trainer.evaluate_pretext()
    assert after["loss"] < before["loss"] - 0.2, (before, after)
    assert after["accuracy"] > 0.5


# Methods whose model's shape comes from the training data (`prepare`): colorization's and
# split-brain's ab bins, the supervised reference's classes.
MODEL_FROM_DATA = {"colorization", "split_brain", "supervised"}


@pytest.mark.parametrize("recipe_path", sorted((REPO / "training").rglob("*.toml")),
                         ids=lambda p: str(p.relative_to(REPO / "training").with_suffix("")))
def test_every_recipe_builds(recipe_path):
    # Also the full-scale recipes under training/imagenet/, which no machine of this project runs:
    # they must at least build, and their pretext transform must work at their image size.
    from ssl_zoo.data.pipeline import build_pretext_dataset

    recipe = load_recipe(recipe_path)
    assert recipe.description, "a recipe states what it reaches and how to reproduce it"
    method = method_from_recipe(recipe)
    photos = ArraySource(np.random.default_rng(0).integers(0, 255, (2, 300, 400, 3), dtype=np.uint8),
                         labels=np.array([0, 1]))
    if method.name in MODEL_FROM_DATA:
        method.prepare(photos, "train", recipe.data.image_size)
    model = method.build_model()
    # The pretext head: one sub-model "pretext_head", or several layers named after it (PIRL's f and g).
    assert model.get_layer("backbone") is not None
    assert any(layer.name.startswith("pretext_head") for layer in model.layers), [l.name for l in model.layers]
    if not getattr(method, "reads_images", True):
        return  # Exemplar draws its views from a seed bank of num_classes images, not from the batch
    ds = build_pretext_dataset(photos, "train", method, batch_size=2, image_size=recipe.data.image_size, training=True)
    inputs = next(iter(ds))["inputs"]
    for view, spec in zip(tf.nest.flatten(inputs), model.inputs):
        assert view.shape[1:] == tuple(spec.shape[1:]) or None in spec.shape[1:], (view.shape, spec.shape)


def test_recipe_errors_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[method]\nname="rotnet"\n[backbone]\ndepth=18\n[train]\nepochz=3\n')
    with pytest.raises(ValueError, match="unknown keys \\['epochz'\\]"):
        load_recipe(bad)
    assert set(METHODS) >= {"rotnet"}


@pytest.mark.parametrize("section, typo, message", [
    ("method", "head_hiden_units=[8]", r"\[method\] rotnet has unknown parameters \['head_hiden_units'\]"),
    ("backbone", "widht=0.5", r"\[backbone\] resnet has unknown parameters \['widht'\]; known: \[.*'width'"),
    # Wrong types are named by the rules of [train] and the other typed sections.
    ("method", 'head_hidden_units="256"', r"\[method\] head_hidden_units must be a non-empty list, not '256'"),
    ("method", "head_hidden_units=[256.5]", r"\[method\] head_hidden_units has an item that must be a whole number"),
])
def test_method_and_backbone_typos_are_named_before_any_data_is_read(tmp_path, section, typo, message):
    body = {"method": 'name="rotnet"', "backbone": "depth=18"}
    body[section] += "\n" + typo
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[method]\n{body["method"]}\n[backbone]\n{body["backbone"]}\n')
    with pytest.raises(ValueError, match=message):
        method_from_recipe(load_recipe(bad))
    # The command line prints that sentence alone (no traceback) and exits with 2; the data
    # directory holds no dataset, so the error must come before the data is opened.
    from ssl_zoo.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["train", str(bad), "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_a_registered_methods_fields_of_unruled_types_are_left_to_it(monkeypatch):
    """[method] values are checked by the recipe's rules; a user's method with a field of a type those
    rules do not know (a list of lists) is built, not refused with a TypeError."""
    import dataclasses

    from ssl_zoo.methods import METHODS, build_method
    from ssl_zoo.methods.rotnet import RotNet

    @dataclasses.dataclass
    class RotNetWithGroups(RotNet):
        name = "rotnet_with_groups"
        groups: list[list[int]] | None = None

    monkeypatch.setitem(METHODS, RotNetWithGroups.name, RotNetWithGroups)  # registered for this test only

    method = build_method("rotnet_with_groups", groups=[[0, 1], [2, 3]], head_hidden_units=[8])
    assert method.groups == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match=r"\[method\] head_hidden_units has an item"):
        build_method("rotnet_with_groups", head_hidden_units=["8"])


def test_listing_the_zoo_does_not_import_tensorflow():
    # `ssl-zoo list` reads the registry only; importing TensorFlow would cost it ~10 s.
    code = ("import sys; from ssl_zoo.cli import main; main(['list']); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "rotnet_resnet18w025_cifar10" in out.stdout


def _train_cmd(tmp_path):
    return [sys.executable, "-m", "ssl_zoo.cli", "train", str(tmp_path / "recipe.toml"),
            "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_step_count(tmp_path):
    write_image_folder(tmp_path, n=48)
    tiny_recipe_toml(tmp_path / "recipe.toml", epochs=2, steps_per_epoch=12, checkpoint_every=2)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(_train_cmd(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name.split("-")[1].split(".")[0]) for p in ckpt_dir.glob("ckpt-*.index")] if ckpt_dir.exists() else []
        if steps and max(steps) >= 4:
            proc.send_signal(signal.SIGKILL)  # no chance to clean up: a real crash
            killed_at = max(steps)
            break
        time.sleep(0.2)
    proc.wait()
    assert killed_at is not None and killed_at < 12, f"not killed mid-epoch: {proc.stdout.read()}"
    assert not (tmp_path / "run" / "backbone.keras").exists()
    # The checkpoint keeps the seconds the epoch had trained, which the resumed epoch's record adds.
    trained_before = json.loads((tmp_path / "run" / "epoch_totals.json").read_text())[str(killed_at)]["epoch_seconds"]
    assert trained_before > 0
    # What a kill inside a save leaves (TensorFlow writes the shards to ckpt-N_temp/ first): never a
    # checkpoint, removed on resume.
    unfinished = ckpt_dir / f"ckpt-{killed_at + 2}_temp"
    unfinished.mkdir()
    (unfinished / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half a save")
    done = subprocess.run(_train_cmd(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from {ckpt_dir / f'ckpt-{killed_at}'}" in done.stdout + done.stderr
    assert not unfinished.exists()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert run["steps"] == 24
    assert [h["step"] for h in history] == [12, 24]
    assert history[0]["seconds"] >= trained_before
    assert "epoch_seconds" not in history[0] and "train_epoch_seconds" not in history[0]
    assert (tmp_path / "run" / "backbone.keras").exists()


def test_version_of_the_command_is_the_package_version(capsys):
    import ssl_zoo
    from ssl_zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ssl-zoo {ssl_zoo.__version__}"


@pytest.mark.slow
def test_a_write_that_fails_mid_run_is_one_sentence_and_the_last_checkpoint_resumes(tmp_path):
    """A real failed write, not a simulated one: once the run has its first checkpoint, its file-size
    limit (RLIMIT_FSIZE, set from outside with prlimit; SIGXFSZ ignored, so the kernel fails the
    write with EFBIG as a full disk fails it with ENOSPC) drops below a checkpoint's size. The
    command ends with status 2 and one sentence, no traceback; the first checkpoint is intact and
    the same command, rerun without the limit, resumes from it and finishes."""
    import resource

    write_image_folder(tmp_path, n=48)
    tiny_recipe_toml(tmp_path / "recipe.toml", epochs=1, steps_per_epoch=12, checkpoint_every=2)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def ignore_sigxfsz():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    proc = subprocess.Popen(_train_cmd(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=ignore_sigxfsz)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 240
    while not list(ckpt_dir.glob("ckpt-*.index")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, out[-2000:] + err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("ssl-zoo: error:")]
    assert len(lines) == 1 and "File too large" in lines[0] and "run the same command again" in lines[0], err[-3000:]
    assert "Traceback" not in err
    saved = sorted(int(p.name.split("-")[1].split(".")[0]) for p in ckpt_dir.glob("ckpt-*.index"))
    assert saved and saved[0] == 2
    done = subprocess.run(_train_cmd(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resumed from" in done.stdout + done.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["steps"] == 12


def _two_sgd_steps(mode: str, strategy=None, decay_norm_and_bias: bool = False):
    """(weight, bias) after two SGD steps of gradient 0.5 on each from 1.0 (lr 0.1, momentum 0.9,
    weight decay 0.01), through `build_optimizer`; the gradient is split evenly over the replicas."""
    import keras

    from ssl_zoo.train.loop import build_optimizer
    from ssl_zoo.train.recipe import OptimizerConfig

    strategy = strategy or tf.distribute.get_strategy()
    cfg = OptimizerConfig(name="sgd", learning_rate=0.1 * 256 / 64, momentum=0.9, nesterov=False, weight_decay=0.01,
                          weight_decay_mode=mode, warmup_epochs=0.0, schedule="constant",
                          decay_norm_and_bias=decay_norm_and_bias)
    with strategy.scope():
        weight = keras.Variable(1.0, name="kernel")
        bias = keras.Variable(1.0, name="bias")
        opt = build_optimizer(cfg, global_batch=64, total_steps=2, steps_per_epoch=2)
        opt.build([weight, bias])

    @tf.function
    def step():
        def replica_fn():
            share = 0.5 / strategy.num_replicas_in_sync
            opt.apply_gradients([(tf.constant(share), weight), (tf.constant(share), bias)])
        strategy.run(replica_fn)

    step(), step()
    return float(weight.numpy()), float(bias.numpy())


def test_sgd_weight_decay_is_decoupled_by_default_and_l2_when_asked():
    lr, m, wd, g = 0.1, 0.9, 0.01, 0.5

    def reference(l2: bool, decay: bool):  # torch.optim.SGD's update (l2) / Keras's (decoupled)
        w, buf = 1.0, 0.0
        for _ in range(2):
            if decay and not l2:
                w -= lr * wd * w
            d = g + (wd * w if decay and l2 else 0.0)
            buf = m * buf + d
            w -= lr * buf
        return w

    assert _two_sgd_steps("decoupled") == pytest.approx((reference(False, True), reference(False, False)), abs=1e-6)
    l2 = _two_sgd_steps("l2")
    assert l2 == pytest.approx((reference(True, True), reference(True, False)), abs=1e-6)
    assert l2[0] != pytest.approx(_two_sgd_steps("decoupled")[0], abs=1e-5)
    # Two replicas, each with half the gradient: the decay is counted once, not once per replica.
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert _two_sgd_steps("l2", two) == pytest.approx(l2, abs=1e-6)
    # decay_norm_and_bias: the bias is decayed like the kernel (a PyTorch recipe's `model.parameters()`).
    for mode, is_l2 in (("decoupled", False), ("l2", True)):
        assert _two_sgd_steps(mode, decay_norm_and_bias=True) == pytest.approx(
            (reference(is_l2, True), reference(is_l2, True)), abs=1e-6)


def test_l2_weight_decay_is_refused_for_adaptive_optimizers():
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.train.loop import build_optimizer
    from ssl_zoo.train.recipe import OptimizerConfig

    with pytest.raises(ConfigError, match="weight_decay_mode = \"l2\" is for sgd"):
        build_optimizer(OptimizerConfig(name="adamw", weight_decay_mode="l2"), 256, 10, 5)
