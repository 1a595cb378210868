"""SeLa: Sinkhorn-Knopp against a NumPy reference (marginals, equipartition), the refresh points
within and between epochs, the same labels on every replica, and the method contract."""

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import two_replica_strategy
from method_contract import MethodContract, copy_run_state
from ssl_zoo.methods.sela import SeLa, batch_sinkhorn_labels
from ssl_zoo.pretext import clustering

IMAGES = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
CONTRACT = MethodContract(
    method={"name": "sela", "image_size": 16, "num_clusters": 4, "num_heads": 2, "refreshes_per_epoch": 2},
    image_size=16,
    images=IMAGES,
    keras_fit=False,
    # 3 steps per epoch, a refresh before step 2 of each epoch (offset 1) and at the start of epoch
    # 2: checkpoint 3 is the end of epoch 1, checkpoint 4 lands on epoch 2's within-epoch refresh.
    kill_after_checkpoints=(3, 4),
)


def sinkhorn_reference(log_probs, lam, iterations=20000):
    """The transport problem solved plainly: alternate row and column normalisation of P^lam in
    log space (float64) until both marginals hold to 1e-12."""
    from scipy.special import logsumexp

    n, k = log_probs.shape
    log_q = lam * log_probs.astype(np.float64)
    for _ in range(iterations):
        log_q -= logsumexp(log_q, axis=0, keepdims=True) - np.log(n / k)
        log_q -= logsumexp(log_q, axis=1, keepdims=True)
        if np.abs(np.exp(logsumexp(log_q, axis=0)) - n / k).max() < 1e-12:
            break
    return np.exp(log_q)


def test_sinkhorn_knopp_matches_the_reference_and_equipartitions():
    rng = np.random.default_rng(0)
    n, k = 300, 6
    log_probs = tf.nn.log_softmax(rng.normal(size=(n, k)) * 2).numpy()
    labels, q = clustering.sinkhorn_knopp(log_probs, lam=25.0, tolerance=1e-9)
    reference = sinkhorn_reference(log_probs, 25.0)
    np.testing.assert_allclose(q, reference, atol=1e-6)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-9)  # each image one unit
    np.testing.assert_allclose(q.sum(axis=0), n / k, rtol=1e-6)  # each label N/K
    np.testing.assert_array_equal(labels, np.argmax(reference, axis=1))
    assert np.bincount(labels, minlength=k).min() >= 0.8 * n / k  # hard labels near-equipartitioned


def test_sinkhorn_knopp_spreads_a_collapsed_network_and_survives_underflow():
    # Every image predicts label 0 with p ~ 1 - 1e-15: P^25 underflows float64 for the others.
    n, k = 120, 4
    logits = np.zeros((n, k))
    logits[:, 0] = 35.0
    logits[:, 1:] += np.random.default_rng(1).normal(size=(n, k - 1))
    labels, q = clustering.sinkhorn_knopp(tf.nn.log_softmax(logits).numpy(), lam=25.0)
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(q.sum(axis=0), n / k, rtol=1e-3)
    assert np.bincount(labels, minlength=k).min() > 0.5 * n / k


def test_batch_sinkhorn_in_graph_agrees_with_numpy():
    rng = np.random.default_rng(2)
    log_probs = tf.nn.log_softmax(rng.normal(size=(64, 5)).astype("float32") * 3)
    got = batch_sinkhorn_labels(log_probs, 25.0, iterations=200).numpy()
    want, _ = clustering.sinkhorn_knopp(log_probs.numpy(), 25.0, tolerance=1e-8)
    assert np.mean(got == want) > 0.95


def test_refresh_offsets_are_evenly_spaced_within_the_epoch():
    assert SeLa(refreshes_per_epoch=3).refresh_offsets(9) == (3, 6)
    assert SeLa(refreshes_per_epoch=1).refresh_offsets(9) == ()
    assert SeLa(refreshes_per_epoch=4).refresh_offsets(2) == (1,)


def test_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


def test_labels_refresh_at_the_configured_points(tmp_path):
    from ssl_zoo.data.sources import ArraySource
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.loop import Trainer

    recipe = CONTRACT.recipe(epochs=2, steps_per_epoch=4)
    trainer = Trainer(method_from_recipe(recipe), recipe, ArraySource(IMAGES, labels=np.arange(16) % 2),
                      tf.distribute.get_strategy(), tmp_path / "run")
    start = trainer.state["labels"].numpy().copy()
    for h in range(2):  # a random equipartition to begin with
        np.testing.assert_array_equal(np.bincount(start[h], minlength=4), [4, 4, 4, 4])
    assert not np.array_equal(start[0], start[1])
    steps_seen = []
    refresh = trainer.method.on_refresh

    def watching(ctx):
        steps_seen.append(ctx.step)
        return refresh(ctx)

    trainer.method.on_refresh = watching
    history = trainer.fit()["history"]
    # Within epoch 1 before step 3 (2 done), at epoch 2's start (4 done) and within it (6 done).
    assert steps_seen == [2, 4, 6]
    refreshed = json.loads((tmp_path / "run" / "refresh_hooks.json").read_text())
    assert sorted(refreshed, key=int) == ["2", "6"] and "nmi_labels" in refreshed["2"]
    assert "hook_labels_changed" in history[1] and "hook_labels_changed" not in history[0]
    assert int(trainer.state["refreshes"].numpy()) == 3
    labels = trainer.state["labels"].numpy()
    assert not np.array_equal(labels, start)
    for h in range(2):
        assert np.bincount(labels[h], minlength=4).max() <= 8  # no head collapsed


@pytest.mark.slow
def test_every_replica_gets_the_same_labels(tmp_path):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    single = CONTRACT.trainer(tmp_path, name="one")
    mirrored = CONTRACT.trainer(tmp_path, strategy=two_replica_strategy(devices), name="two")
    copy_run_state(single, mirrored)
    single._refresh_hook(0)
    mirrored._refresh_hook(0)
    labels = mirrored.state["labels"]
    np.testing.assert_array_equal(single.state["labels"].numpy(), labels.numpy())
    for copy in labels.values:
        np.testing.assert_array_equal(copy.numpy(), labels.numpy())


@pytest.mark.slow
def test_contract_distributed_and_resumed(tmp_path):
    CONTRACT.run_slow(tmp_path)


def test_card_lists_every_refresh(tmp_path):
    """A real tiny run exported: one card row per refresh (within epochs and at epoch starts)."""
    from ssl_zoo.data.sources import ArraySource
    from ssl_zoo.export import export
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.loop import Trainer

    recipe = CONTRACT.recipe(epochs=2, steps_per_epoch=2)
    run = tmp_path / "run"
    Trainer(method_from_recipe(recipe), recipe, ArraySource(IMAGES, labels=np.arange(16) % 2),
            tf.distribute.get_strategy(), run).fit()
    export(run, "sela_tiny", tmp_path / "export", formats=("preset",))
    card = (tmp_path / "export" / "preset" / "README.md").read_text()
    assert "## Self-labelling across training" in card and "](training.png)" in card
    # Refreshes before steps 2 (within epoch 1), 3 (epoch 2's start) and 4 (within epoch 2).
    assert [line.split("|")[1].strip() for line in card.splitlines() if line.startswith("| ") and "%" in line][:3] \
        == ["2", "3", "4"]
