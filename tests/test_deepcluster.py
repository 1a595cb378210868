"""DeepCluster: the clustering parts against their definitions, the epoch hook (refresh points,
head restart, replicas), and the method contract (SIGKILL mid-epoch keeps the assignments)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import two_replica_strategy
from method_contract import MethodContract, copy_run_state
from ssl_zoo.methods.deepcluster import CLASSIFIER, DeepCluster
from ssl_zoo.pretext import clustering

IMAGES = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
CONTRACT = MethodContract(
    method={"name": "deepcluster", "image_size": 16, "num_clusters": 4, "pca_dim": 8, "kmeans_iterations": 5},
    image_size=16,
    images=IMAGES,
    optimizers={"encoder": {}, "classifier": {"learning_rate": 0.05}},
    keras_fit=False,
    # End of epoch 1 (the next epoch's clustering reruns on the restored weights) and mid epoch 2
    # (the epoch's assignments come back from the checkpoint, not from a new clustering).
    kill_after_checkpoints=(3, 4),
)


def test_pca_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 12)) @ rng.normal(size=(12, 12)) * 5 + 3
    pca = clustering.fit_pca_whitening(x, 6)
    z = clustering.apply_pca_whitening(x, pca, normalize=False)
    assert z.shape == (2000, 6)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(6), atol=1e-3)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    # The kept directions are the principal ones: the variance along them is the top eigenvalues.
    top = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1][:6]
    directions = pca.projection / np.linalg.norm(pca.projection, axis=0)
    np.testing.assert_allclose(np.var((x - pca.mean) @ directions, axis=0, ddof=1), top, rtol=1e-3)
    normalized = clustering.apply_pca_whitening(x, pca)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1, rtol=1e-5)
    # Never more dimensions than the data has.
    assert clustering.fit_pca_whitening(x[:5], 64).dim == 4


def test_empty_clusters_are_split_off_a_large_one():
    # Crafted: cluster 0 holds two groups of points, clusters 1 and 3 are empty, cluster 2 one point.
    x = np.array([[0.0, 0], [0.1, 0], [0, 0.1], [5, 5], [5.1, 5], [5, 5.1], [10, 10]], np.float32)
    centroids = np.array([[2.5, 2.5], [100, 100], [10, 10], [-100, -100]], np.float32)
    assignments = np.array([0, 0, 0, 0, 0, 0, 2])
    new_centroids, new_assignments, empty = clustering.split_empty_clusters(
        x, centroids, assignments, np.random.default_rng(0), perturbation=0.05)
    assert empty == 2
    sizes = np.bincount(new_assignments, minlength=4)
    assert (sizes > 0).all(), sizes  # nothing empty any more
    assert sizes.sum() == len(x) and sizes[2] == 1  # a single-point cluster is never a donor
    # Every new cluster's centroid was a perturbed copy of its donor's.
    assert np.abs(new_centroids[[1, 3]]).max() < 10


def test_kmeans_finds_separated_blobs_and_is_seeded():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(5), 60)
    x = rng.normal(size=(5, 8))[truth] * 10 + rng.normal(size=(300, 8))
    _, assignments, empty = clustering.kmeans(x.astype(np.float32), 5, seed=3)
    assert empty == 0 and clustering.normalized_mutual_info(truth, assignments) > 0.99
    again = clustering.kmeans(x.astype(np.float32), 5, seed=3)[1]
    np.testing.assert_array_equal(again, assignments)


def test_inverse_size_weights_count_every_cluster_alike():
    assignments = np.array([0] * 6 + [1] * 3 + [2])
    w = clustering.inverse_size_weights(assignments, 4)
    per_cluster = np.bincount(assignments, weights=w[assignments], minlength=4)
    np.testing.assert_allclose(per_cluster[:3], per_cluster[0])
    assert w[3] == 0 and np.isclose(w[assignments].mean(), 1.0)


def test_nmi_ignores_unknown_labels():
    assert clustering.normalized_mutual_info([0, 0, 1, 1, -1], [3, 3, 7, 7, 5]) == pytest.approx(1.0)
    assert np.isnan(clustering.normalized_mutual_info([-1, -1], [0, 1]))


def test_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


def test_refresh_points_head_restart_and_reports(tmp_path):
    """Clusters before epochs 1 and 3 of 3 (every 2nd epoch), with the classifier and its
    momentum restarted; the reports reach history, epoch_hooks.json and clusters.json."""
    from ssl_zoo.data.sources import ArraySource
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.loop import Trainer

    contract = MethodContract(**{**CONTRACT.__dict__, "method": {**CONTRACT.method, "cluster_every_epochs": 2}})
    recipe = contract.recipe(epochs=3, steps_per_epoch=2)
    # With true labels in the source, for the NMI report (they never reach the loss).
    source = ArraySource(IMAGES, labels=np.arange(len(IMAGES)) % 2)
    trainer = Trainer(method_from_recipe(recipe), recipe, source, tf.distribute.get_strategy(), tmp_path / "run")
    seen = []
    hook = trainer.method.on_epoch_begin

    def watching(ctx):
        before = ctx.state["assignments"].numpy().copy()
        report = hook(ctx)
        top = trainer.method._top_layer(ctx.model)
        seen.append((ctx.epoch, before, ctx.state["assignments"].numpy().copy(), float(np.std(top.kernel.numpy())),
                     [float(np.abs(v.numpy()).sum()) for v in ctx.optimizers[CLASSIFIER].variables[1:]]))
        return report

    trainer.method.on_epoch_begin = watching
    history = trainer.fit()["history"]
    assert [s[0] for s in seen] == [0, 1, 2]
    # Epoch 0: from "no label" (-1) to labels in range; epoch 1: untouched; epoch 2: re-clustered.
    assert (seen[0][1] == -1).all() and set(seen[0][2]) <= set(range(4)) and len(set(seen[0][2])) > 1
    np.testing.assert_array_equal(seen[1][1], seen[1][2])
    assert len(set(seen[2][2])) > 1
    for epoch, _, _, kernel_std, slots in (seen[0], seen[2]):
        assert 0.005 < kernel_std < 0.015, (epoch, kernel_std)  # N(0, 0.01) restart
        assert max(slots) == 0.0, (epoch, slots)  # momentum zeroed
    assert "hook_nmi_labels" in history[0] and "hook_nmi_previous" in history[2] and "hook_nmi_labels" not in history[1]
    assert "hook_nmi_previous" not in history[0]  # no previous clustering to compare with
    hooks = json.loads((tmp_path / "run" / "epoch_hooks.json").read_text())
    assert sorted(hooks) == ["1", "3"]
    clusters = json.loads((tmp_path / "run" / "clusters.json").read_text())
    assert sorted(clusters) == ["1", "3"] and sum(clusters["1"]["sizes"]) == len(IMAGES)
    assert clusters["1"]["sizes"] == sorted(clusters["1"]["sizes"], reverse=True)


def test_pseudo_labels_weight_the_loss_and_follow_the_index(tmp_path):
    trainer = CONTRACT.trainer(tmp_path, steps_per_epoch=1)
    state = trainer.state
    state["assignments"].assign(np.arange(len(IMAGES), dtype=np.int32) % 4)
    state["cluster_weights"].assign(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    batch = next(iter(trainer._train_dataset(epoch=0, skip=0)))
    out = trainer.model(batch["inputs"], training=True)  # batch statistics, as in the step
    targets = batch["index"].numpy() % 4
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=out["logits"]).numpy()
    metrics = trainer.method.train_step(trainer.context, batch)
    # Only cluster 0's images count in the loss; the unweighted cross-entropy covers all.
    np.testing.assert_allclose(float(metrics["loss_sum"]), ce[targets == 0].sum(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["ce_sum"]), ce.sum(), rtol=1e-4)


@pytest.mark.slow
def test_every_replica_gets_the_same_assignments(tmp_path):
    """The hook under two logical CPU replicas: features gathered from both, one clustering, the
    same assignments as one replica on the same weights."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    single = CONTRACT.trainer(tmp_path, name="one")
    mirrored = CONTRACT.trainer(tmp_path, strategy=two_replica_strategy(devices), name="two")
    copy_run_state(single, mirrored)
    one, two = single._epoch_hook(0), mirrored._epoch_hook(0)
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_allclose(one[key], two[key], rtol=1e-4, err_msg=key)
    for key in ("assignments", "centroids", "cluster_weights"):
        a, b = single.state[key], mirrored.state[key]
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4, err_msg=key)
        for copy in b.values:  # each replica's copy of the state
            np.testing.assert_allclose(copy.numpy(), b.numpy(), err_msg=key)


@pytest.mark.slow
def test_contract_distributed_and_resumed(tmp_path):
    CONTRACT.run_slow(tmp_path)


def test_bad_parameters_are_named():
    from ssl_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="balance"):
        DeepCluster(balance="uniform")
    with pytest.raises(ConfigError, match="num_clusters"):
        DeepCluster(num_clusters=0)


def test_card_shows_the_clustering_across_training(tmp_path):
    """A real tiny run exported: the card's clustering table has one row per epoch with the NMI
    the hook measured, and its plot is in the preset's manifest."""
    from ssl_zoo.data.sources import ArraySource
    from ssl_zoo.export import export
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.preset import TRAINING_PLOT_FILE, read_metadata
    from ssl_zoo.train.loop import Trainer

    recipe = CONTRACT.recipe(epochs=2, steps_per_epoch=2)
    run = tmp_path / "run"
    Trainer(method_from_recipe(recipe), recipe, ArraySource(IMAGES, labels=np.arange(16) % 2),
            tf.distribute.get_strategy(), run).fit()
    history = json.loads((run / "history.json").read_text())
    out = export(run, "deepcluster_tiny", tmp_path / "export", formats=("preset",))
    preset = out["preset"]
    meta = read_metadata(preset)
    assert sorted(meta["run_reports"]["clusters.json"]) == ["1", "2"]
    assert TRAINING_PLOT_FILE in meta["files"]  # the manifest: hashed like every file of the preset
    card = (tmp_path / "export" / "preset" / "README.md").read_text()
    assert "## Clustering across training" in card and f"]({TRAINING_PLOT_FILE})" in card
    rows = [line for line in card.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and f"{history[0]['hook_nmi_labels']:.3f}" in rows[0]
    assert (tmp_path / "export" / "preset" / TRAINING_PLOT_FILE).stat().st_size > 1000
