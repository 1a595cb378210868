"""Multi-replica correctness, tested for real: two logical CPU devices (conftest splits the CPU)
and two worker processes on 127.0.0.1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_BACKBONE, tiny_recipe, tiny_recipe_toml, write_image_folder
from ssl_zoo import losses
from ssl_zoo.data.sources import ArraySource
from ssl_zoo.methods import build_method
from ssl_zoo.train.launch import free_local_ports
from ssl_zoo.train.loop import Trainer

HERE = Path(__file__).parent


def _trainer(strategy, tmp_path, name):
    recipe = tiny_recipe(epochs=1, steps_per_epoch=2)
    method = build_method("rotnet", backbone=TINY_BACKBONE, head_hidden_units=(16,), image_size=16)
    source = ArraySource(np.zeros((16, 16, 16, 3), np.uint8))
    return Trainer(method, recipe, source, strategy, tmp_path / name)


def test_global_mean_divides_by_the_global_count():
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    values = [tf.constant([1.0, 2.0, 3.0]), tf.constant([4.0, 5.0, 6.0])]
    per_replica = strategy.experimental_distribute_values_from_function(lambda ctx: values[ctx.replica_id_in_sync_group])
    out = strategy.run(losses.global_mean, args=(per_replica,))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, out, axis=None)
    np.testing.assert_allclose(float(total), np.mean([1, 2, 3, 4, 5, 6]))


@pytest.mark.slow
def test_two_worker_processes_end_with_identical_weights(tmp_path):
    write_image_folder(tmp_path, n=32)
    workers = [f"127.0.0.1:{p}" for p in free_local_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"}
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "mw_worker.py"), str(tmp_path), str(tmp_path / "run")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out)
        assert p.returncode == 0, out[-4000:]
    w0 = np.load(tmp_path / "weights_worker_0.npz")
    w1 = np.load(tmp_path / "weights_worker_1.npz")
    assert len(w0.files) == len(w1.files) > 0
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key])
    # Training happened: weights moved away from the initial ones on both workers alike.
    assert all("WORKER DONE" in o for o in outputs)
    # Only the chief keeps artefacts; the other worker's temporary copies are gone.
    assert (tmp_path / "run" / "backbone.keras").exists()
    assert not list((tmp_path / "run").glob(".worker_tmp_*"))


@pytest.mark.slow
def test_ssl_zoo_train_with_local_workers_trains_one_run(tmp_path):
    # The user's path: one command starts two MultiWorkerMirroredStrategy workers on this host.
    write_image_folder(tmp_path, n=32)
    tiny_recipe_toml(tmp_path / "recipe.toml", epochs=1, steps_per_epoch=4)
    cmd = [sys.executable, "-m", "ssl_zoo.cli", "train", str(tmp_path / "recipe.toml"), "--data-dir", str(tmp_path),
           "--out", str(tmp_path / "run"), "--local-workers", "2"]
    out = subprocess.run(cmd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
                         timeout=420)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "[worker 0] " in out.stdout and "[worker 1] " in out.stdout
    assert "over 2 replicas" in out.stdout  # one cluster of two workers, not two separate runs
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["step"] == 4
    assert (tmp_path / "run" / "backbone.keras").exists()
    assert not list((tmp_path / "run").glob(".worker_tmp_*"))
