"""The one contract every method's test file runs (keras-hub's `run_vision_backbone_test` habit):

    CONTRACT = MethodContract(method={"name": "jigsaw", ...}, image_size=51, images=...)
    def test_contract(tmp_path): CONTRACT.run_fast(tmp_path)
    @pytest.mark.slow
    def test_contract_distributed_and_resumed(tmp_path): CONTRACT.run_slow(tmp_path)

- the transform gives the same examples eagerly and inside `tf.data`, in the pipeline's format;
- two steps of the zoo's trainer (every method) and of plain Keras `fit` (default-step methods);
- the exported backbone (`method.export_backbone`) round-trips in Keras safe mode and loads with
  `ssl_zoo.load_backbone`, stages included;
- the method's picture of its pretext task, where it draws one, is drawable;
- two logical CPU replicas == one replica on the same global batch: metrics, weights, optimizer
  slots and method state;
- a run killed with SIGKILL (right after a chosen checkpoint) and resumed ends with the same
  weights, optimizer slots, method state and history (every epoch's metrics and evaluation) as an
  unbroken run with the same seed: for methods that keep something of their own between steps
  (state, or optimizers of their own). For the others a run keeps what the trainer keeps (model,
  one optimizer, step), which the trainer's SIGKILL test holds at every kill point
  (`test_method_contract.py`, a probe method with state and two optimizers), and their transforms
  are pure functions of the example seed (the eager == tf.data check): three more processes per
  such method would test nothing new.

Method test files then hold only what is special to their method.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from helpers import TINY_BACKBONE, assert_two_step_fit, two_replica_strategy

HERE = Path(__file__).parent


def trainer_arrays(trainer) -> dict[str, np.ndarray]:
    """Everything a run keeps between steps: model, optimizers, step, method state."""
    return {k: np.asarray(v.numpy()) for k, v in trainer.checkpoint_variables().items()}


def copy_run_state(src, dst) -> None:
    """Gives trainer `dst` exactly the variables of `src` (weights, optimizer slots, state)."""
    a, b = src.checkpoint_variables(), dst.checkpoint_variables()
    assert sorted(a) == sorted(b)
    for k in a:
        b[k].assign(a[k].numpy())


@dataclasses.dataclass
class MethodContract:
    method: dict  # the recipe's [method] section: name and parameters
    image_size: int  # the data's image size (the crop a context method cuts its views from)
    images: np.ndarray  # uint8 [N, H, W, 3], N >= 12
    labels: np.ndarray | None = None  # classes of `images`, for the supervised reference only
    backbone: dict = dataclasses.field(default_factory=lambda: {k: v for k, v in TINY_BACKBONE.items()
                                                                  if k != "image_size"})
    optimizers: dict | None = None  # [optimizers.NAME] sections, for methods with several optimizers
    plugin: str | None = None  # a module that registers a test-only method (imported by the worker)
    keras_fit: bool = True  # default-step methods also train under plain Keras fit
    kill_after_checkpoints: tuple[int, ...] = (4,)  # 2 epochs x 3 steps: 4 is mid-epoch 2
    kill_before_checkpoints: tuple[int, ...] = ()  # 3: epoch 1's record written, its checkpoint not
    sigkill: bool | None = None  # None: only for methods that keep state or optimizers of their own

    def recipe_dict(self, **train) -> dict:
        recipe = {
            "name": f"contract_{self.method['name']}",
            "method": dict(self.method),
            "backbone": dict(self.backbone),
            "data": {"source": "arrays", "image_size": self.image_size, "eval_split": "train", "shuffle_buffer": 16},
            "train": {"epochs": 1, "global_batch": 4, "seed": 0, "log_every": 1, "checkpoint_every": 1, **train},
            "optimizer": {"name": "sgd", "learning_rate": 0.1, "warmup_epochs": 0.0},
        }
        if self.optimizers:
            recipe["optimizers"] = {k: dict(v) for k, v in self.optimizers.items()}
        return recipe

    def recipe(self, **train):
        from ssl_zoo.train.recipe import recipe_from_dict

        return recipe_from_dict(self.recipe_dict(**train))

    def source(self):
        from ssl_zoo.data.sources import ArraySource

        return ArraySource(self.images, self.labels)

    def trainer(self, tmp_path, strategy=None, name: str = "run", **train):
        from ssl_zoo.methods import method_from_recipe
        from ssl_zoo.train.loop import Trainer

        recipe = self.recipe(**train)
        return Trainer(method_from_recipe(recipe), recipe, self.source(), strategy or tf.distribute.get_strategy(),
                       tmp_path / name)

    # ---- fast checks ------------------------------------------------------------------------------
    def check_transform_eager_and_in_tf_data(self) -> None:
        from ssl_zoo.data.pipeline import pretext_example
        from ssl_zoo.methods import method_from_recipe

        method = method_from_recipe(self.recipe())
        method.prepare(self.source(), "train", self.image_size)
        images = tf.constant(self.images[:4])
        seeds = tf.constant([[7, i] for i in range(4)], tf.int64)
        for training in (True, False):
            eager = [pretext_example(method.example_transform(images[i], self.image_size, seeds[i], training=training,
                                                              index=tf.constant(i, tf.int64)))
                     for i in range(4)]
            ds = tf.data.Dataset.from_tensor_slices((images, seeds, tf.range(4, dtype=tf.int64))).map(
                lambda im, s, i: method.example_transform(im, self.image_size, s, training=training, index=i))
            for a, b in zip(eager, ds, strict=True):
                assert set(a) == set(b), (sorted(a), sorted(b))
                tf.nest.map_structure(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-4), a, b)

    def check_two_steps(self, tmp_path) -> None:
        import keras

        result = self.trainer(tmp_path, steps_per_epoch=2).fit()
        record = result["history"][-1]
        assert record["step"] == 2 and np.isfinite(record["train_loss"]), record
        keras.saving.load_model(tmp_path / "run" / "backbone.keras", safe_mode=True)
        if self.keras_fit:
            from ssl_zoo.methods import method_from_recipe

            method = method_from_recipe(self.recipe())
            method.prepare(self.source(), "train", self.image_size)
            assert_two_step_fit(method, self.images, self.image_size, self.labels)

    def check_export_round_trip(self, tmp_path) -> None:
        import ssl_zoo
        from ssl_zoo.backbones import STAGES, stage_model

        trainer = self.trainer(tmp_path, name="export")
        exported = trainer.method.export_backbone(trainer.model, trainer.state)
        size = exported.input.shape[1] or 32
        x = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype("float32")
        exported.save(tmp_path / "exported.keras")
        loaded = ssl_zoo.load_backbone(tmp_path / "exported.keras", stages=list(STAGES))  # safe mode inside
        expected = stage_model(exported, STAGES)(x, training=False)
        for s in STAGES:
            np.testing.assert_allclose(np.asarray(loaded(x)[s]), np.asarray(expected[s]), rtol=1e-5, atol=1e-5)

    def check_pretext_picture(self, tmp_path) -> None:
        """The method's picture of its pretext task (`ssl-zoo pictures`), where it draws one, is
        drawable: rows of RGB images with a caption per image where captioned."""
        from ssl_zoo.image_grid import draw_image_rows
        from ssl_zoo.methods import method_from_recipe

        method = method_from_recipe(self.recipe())
        # A freshly built backbone: the methods whose picture needs one (their targets are the network's).
        picture = method.pretext_picture(self.source(), "train", self.image_size, backbone=method.build_backbone())
        if picture is None:
            return
        assert picture.title and picture.rows
        for row in picture.rows:
            assert row.images.ndim == 4 and row.images.shape[-1] == 3 and len(row.images), row.label
            assert np.isfinite(row.images).all(), row.label
            assert row.captions is None or len(row.captions) == len(row.images), row.label
        assert draw_image_rows(picture.rows, picture.title, tmp_path / "pretext.png").stat().st_size > 1000

    def run_fast(self, tmp_path) -> None:
        self.check_transform_eager_and_in_tf_data()
        self.check_two_steps(tmp_path)
        self.check_export_round_trip(tmp_path)
        self.check_pretext_picture(tmp_path)

    # ---- slow checks ------------------------------------------------------------------------------
    def check_replicas_match(self, tmp_path, steps: int = 2) -> None:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        assert len(devices) == 2, "conftest splits the CPU into two logical devices"
        single = self.trainer(tmp_path, name="one")
        mirrored = self.trainer(tmp_path, strategy=two_replica_strategy(devices), name="two")
        copy_run_state(single, mirrored)
        batches = iter(single._train_dataset(epoch=0, skip=0))
        for _ in range(steps):
            whole = next(batches)
            halves = [tf.nest.map_structure(lambda t: t[: t.shape[0] // 2], whole),
                      tf.nest.map_structure(lambda t: t[t.shape[0] // 2:], whole)]
            per_replica = mirrored.strategy.experimental_distribute_values_from_function(
                lambda ctx: halves[ctx.replica_id_in_sync_group])
            one, two = single.train_step(whole), mirrored.train_step(per_replica)
            assert sorted(one) == sorted(two)
            for k in one:
                np.testing.assert_allclose(float(one[k]), float(two[k]), rtol=1e-4, atol=1e-5, err_msg=k)
        a, b = trainer_arrays(single), trainer_arrays(mirrored)
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)

    def check_resume_after_sigkill(self, tmp_path, while_running=None) -> None:
        """Unbroken run vs runs SIGKILLed right after checkpoint k and resumed (same seed).
        `while_running()`: a check this process makes while the first workers run (their start-up
        and tracing are mostly single-threaded, so on two cores the two overlap)."""
        recipe = tmp_path / "recipe.json"
        recipe.write_text(json.dumps(self.recipe_dict(epochs=2, steps_per_epoch=3)))
        np.save(tmp_path / "images.npy", self.images)

        def worker(out: str, kill_after: int | None = None, kill_before: int | None = None):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            env.pop("SSL_ZOO_TEST_KILL_AFTER_CHECKPOINT", None)
            env.pop("SSL_ZOO_TEST_KILL_BEFORE_CHECKPOINT", None)
            if kill_after is not None:
                env["SSL_ZOO_TEST_KILL_AFTER_CHECKPOINT"] = str(kill_after)
            if kill_before is not None:
                env["SSL_ZOO_TEST_KILL_BEFORE_CHECKPOINT"] = str(kill_before)
            return subprocess.Popen([sys.executable, str(HERE / "contract_worker.py"), str(recipe),
                                     str(tmp_path / "images.npy"), str(tmp_path / out), self.plugin or ""],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def finish(proc, expect_kill=False):
            out, _ = proc.communicate(timeout=400)
            if expect_kill:
                assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}: {out[-3000:]}"
            else:
                assert proc.returncode == 0, out[-3000:]
            return out

        unbroken = worker("unbroken")
        runs = [(f"killed{k}", dict(kill_after=k)) for k in self.kill_after_checkpoints]
        runs += [(f"killed_before{k}", dict(kill_before=k)) for k in self.kill_before_checkpoints]
        first = worker(runs[0][0], **runs[0][1]) if runs else None
        try:
            if while_running is not None:
                while_running()
        except BaseException:
            for proc in (unbroken, first):
                if proc is not None:
                    proc.kill()
                    proc.communicate()
            raise
        for i, (run, kill) in enumerate(runs):
            finish(first if i == 0 else worker(run, **kill), expect_kill=True)
            out = finish(worker(run))
            assert "resumed from" in out, out[-2000:]
        finish(unbroken)
        ref = np.load(tmp_path / "unbroken" / "arrays.npz")
        assert len(ref.files) > 0

        def history(run: str) -> list[dict]:
            # Everything but wall-clock: the epochs' metrics over all their steps, evaluations, hooks.
            records = json.loads((tmp_path / run / "history.json").read_text())
            return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in records]

        reference_history = history("unbroken")
        assert [r["epoch"] for r in reference_history] == [1, 2]
        for k in [run for run, _ in runs]:
            resumed = history(k)
            assert [r.keys() for r in resumed] == [r.keys() for r in reference_history], k
            for a, b in zip(resumed, reference_history):
                for key in a:
                    np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5,
                                               err_msg=f"history {key} in {k} (SIGKILLed, resumed)")
            got = np.load(tmp_path / k / "arrays.npz")
            assert sorted(got.files) == sorted(ref.files)
            for name in ref.files:
                np.testing.assert_allclose(got[name], ref[name], rtol=1e-6, atol=1e-7,
                                           err_msg=f"{name} in {k} (SIGKILLed, resumed)")

    def keeps_its_own_state(self) -> bool:
        from ssl_zoo.methods import method_from_recipe

        method = method_from_recipe(self.recipe())
        method.prepare(self.source(), "train", self.image_size)
        return bool(method.build_state(method.build_model())) or bool(type(method).optimizer_names)

    def run_slow(self, tmp_path) -> None:
        if self.sigkill if self.sigkill is not None else self.keeps_its_own_state():
            # The replica check runs here while the SIGKILL workers start and train.
            self.check_resume_after_sigkill(tmp_path, while_running=lambda: self.check_replicas_match(tmp_path))
        else:
            self.check_replicas_match(tmp_path)
