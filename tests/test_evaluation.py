import json
from unittest import mock

import numpy as np
import pytest

from ssl_zoo.backbones import resnet
from ssl_zoo.data import sources
from ssl_zoo.data.sources import ArraySource
from ssl_zoo.evaluation.features import extract, grid_for
from ssl_zoo.evaluation.knn import knn_accuracy
from ssl_zoo.evaluation.linear_probe import linear_probe
from ssl_zoo.evaluation.run import evaluate_model, random_init_like
from helpers import write_image_folder


def _numpy_knn(train_x, train_y, test_x, num_classes, k, t=0.07):
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sim = b @ a.T
    preds = []
    for row in sim:
        idx = np.argsort(-row)[:k]
        votes = np.zeros(num_classes)
        for i in idx:
            votes[train_y[i]] += np.exp(row[i] / t)
        preds.append(votes.argmax())
    return np.array(preds)


def test_knn_matches_numpy_reference():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    train_y = rng.integers(0, 3, 120)
    test_y = rng.integers(0, 3, 50)
    train_x = centers[train_y] + rng.normal(scale=1.0, size=(120, 8))
    test_x = centers[test_y] + rng.normal(scale=1.0, size=(50, 8))
    expected = np.mean(_numpy_knn(train_x, train_y, test_x, 3, k=7) == test_y)
    got = knn_accuracy(train_x, train_y, test_x, test_y, 3, k=7, chunk=16)
    assert got == pytest.approx(expected)


def test_linear_probe_learns_separable_features_and_not_noise():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 4))
    x = rng.normal(size=(600, 16)).astype(np.float32)
    y = (x @ w).argmax(1)
    good = linear_probe(x[:400], y[:400], x[400:], y[400:], 4, epochs=40, batch_size=64, learning_rate=1e-2)
    assert good["test_accuracy"] > 0.85
    noise = rng.normal(size=(600, 16)).astype(np.float32)
    bad = linear_probe(noise[:400], y[:400], noise[400:], y[400:], 4, epochs=40, batch_size=64, learning_rate=1e-2)
    assert bad["test_accuracy"] < 0.5


def test_grid_for_respects_the_budget():
    assert grid_for(32, 16, 4096) == 16
    assert grid_for(16, 32, 4096) == 8
    assert grid_for(4, 512, 4096) == 2
    assert grid_for(4, 4096, 1024) == 1


def test_extract_stage_features_shapes():
    backbone = resnet(18, 0.125, "cifar", 16)
    source = ArraySource(np.zeros((10, 16, 16, 3), np.uint8), labels=np.arange(10) % 2)
    feats, labels = extract(backbone, source, "train", ["stem", "stage4", "pooled"], 16, batch_size=4, max_dims=512)
    assert feats["stem"].shape == (10, 8 * 8 * 8)  # 16x16x8 pooled to 8x8 (512 dims)
    assert feats["pooled"].shape == (10, 64)
    assert labels.tolist() == (np.arange(10) % 2).tolist()


def test_random_init_has_same_architecture_other_weights():
    backbone = resnet(18, 0.125, "cifar", 16)
    floor = random_init_like(backbone, seed=5)
    assert [w.shape for w in floor.weights] == [w.shape for w in backbone.weights]
    conv = [i for i, w in enumerate(backbone.weights) if "kernel" in w.path][0]
    assert not np.allclose(floor.weights[conv].numpy(), backbone.weights[conv].numpy())


@pytest.mark.data
@pytest.mark.slow
def test_evaluate_reports_trained_and_floor(tmp_path, data_dir):
    backbone = resnet(18, 0.125, "cifar", 32)
    report = evaluate_model(backbone, data_dir=data_dir, stages=["stage2", "pooled"], knn_k=20,
                            max_train_examples=500, probe_epochs=2, out=str(tmp_path / "eval.json"))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["linear_probe"]["stage2"].keys() == {"trained", "random_init", "dims"}
    assert saved["protocol"]["num_train"] == 500 and saved["protocol"]["num_test"] == 10_000
    assert 0.0 <= saved["summary"]["best_stage_probe"] <= 1.0
    assert report["knn"]["k"] == 20


def test_evaluate_refuses_a_size_its_fixed_input_layer_cannot_take(tmp_path):
    """A backbone exported with a fixed input layer (96 px) asked for 32 px: one sentence naming both
    sizes, before any data is opened, not Keras's shape error from inside feature extraction."""
    from ssl_zoo.evaluation import run

    backbone = resnet(18, 0.125, "cifar", 96)
    with mock.patch.object(run, "open_source", side_effect=AssertionError("data opened")):
        with pytest.raises(ValueError, match="takes 96 px images, not image_size=32"):
            evaluate_model(backbone, data_dir=str(tmp_path), image_size=32, stages=["pooled"])


def test_evaluate_on_a_folder_with_cache_gives_the_same_report_from_one_decode(tmp_path):
    for split, n in (("train", 12), ("val", 6)):
        for c, cls in enumerate(("cats", "dogs")):
            write_image_folder(tmp_path / split / cls, n=n, size=20, seed=10 * c + len(split))
    backbone = resnet(18, 0.125, "cifar", 16)
    kw = dict(source=f"folder:{tmp_path}", stages=["stage2", "pooled"], knn_k=3, probe_epochs=2,
              image_size=16, test_split="val")
    with mock.patch.object(sources, "decode_file", wraps=sources.decode_file) as spy:
        plain = evaluate_model(backbone, **kw)
    assert spy.call_count == 2 * 36  # each split read for the trained model and for the floor
    with mock.patch.object(sources, "decode_file", wraps=sources.decode_file) as spy:
        cached = evaluate_model(backbone, cache=True, **kw)
    assert spy.call_count == 36  # every file once
    assert cached["linear_probe"] == plain["linear_probe"] and cached["knn"] == plain["knn"]
    assert cached["protocol"]["num_train"] == 24 and cached["protocol"]["num_test"] == 12


def test_evaluate_counts_and_reports_what_it_skipped(tmp_path, caplog):
    for split, n in (("train", 8), ("val", 4)):
        for c, cls in enumerate(("cats", "dogs")):
            write_image_folder(tmp_path / split / cls, n=n, size=20, seed=10 * c + len(split))
    (tmp_path / "train" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (tmp_path / "val" / "dogs" / "empty.jpg").write_bytes(b"")
    backbone = resnet(18, 0.125, "cifar", 16)
    with caplog.at_level("WARNING"):
        report = evaluate_model(backbone, source=f"folder:{tmp_path}", stages=["pooled"], knn_k=3, probe_epochs=1,
                                image_size=16, test_split="val", out=str(tmp_path / "eval.json"))
    # Each bad file counted once although both models read both splits; the rest evaluated.
    assert sum(report["skipped"].values()) == 2, report["skipped"]
    assert report["protocol"]["num_train"] == 16 and report["protocol"]["num_test"] == 8
    assert json.loads((tmp_path / "eval.json").read_text())["skipped"] == report["skipped"]
    summary = [r.getMessage() for r in caplog.records if "skipped 2 inputs" in r.getMessage()]
    assert len(summary) == 1 and "broken.png" in summary[0] and "empty.jpg" in summary[0], summary


def test_evaluate_follows_the_recipes_evaluation_section_and_flags_override(tmp_path):
    """`ssl-zoo evaluate RUN_FOLDER` / `--recipe FILE`: the [evaluation] section is the protocol,
    a flag given overrides it; with neither, the section's defaults (what the CLI always had)."""
    from ssl_zoo import cli
    from ssl_zoo.train.recipe import load_recipe, recipe_from_dict

    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text('name = "r"\n[method]\nname = "rotnet"\n[backbone]\narch = "resnet"\ndepth = 18\n'
                           '[evaluation]\nsource = "folder:x"\ntest_split = "val"\nimage_size = 48\n'
                           'stages = ["stage3", "pooled"]\nknn_k = 20\n')
    run = tmp_path / "run"
    run.mkdir()
    raw = load_recipe(recipe_file).to_dict()
    raw["evaluation"]["image_size"] = 64
    (run / "run.json").write_text(json.dumps({"recipe": recipe_from_dict(raw).to_dict()}))

    def protocol(argv):
        with mock.patch("ssl_zoo.evaluation.run.evaluate_model", return_value={"summary": {}}) as fake:
            assert cli.main(["evaluate", *argv]) == 0
        kw = fake.call_args.kwargs
        return {k: kw[k] for k in ("source", "train_split", "test_split", "image_size", "stages", "knn_k",
                                   "probe_epochs", "seed")}

    section = {"source": "folder:x", "train_split": "train", "test_split": "val", "stages": ["stage3", "pooled"],
               "knn_k": 20, "probe_epochs": 30, "seed": 0}
    assert protocol([str(run)]) == {**section, "image_size": 64}
    assert protocol([str(run), "--recipe", str(recipe_file)]) == {**section, "image_size": 48}
    assert protocol([str(run), "--image-size", "32", "--stages", "pooled", "--dataset", "tfds:cifar10"]) == {
        **section, "image_size": 32, "stages": ["pooled"], "source": "tfds:cifar10"}
    assert protocol([str(run / "backbone.keras")]) == {
        "source": "tfds:cifar10", "train_split": "train", "test_split": "test", "image_size": 32,
        "stages": ["stem", "stage1", "stage2", "stage3", "stage4", "pooled"], "knn_k": 200, "probe_epochs": 30,
        "seed": 0}


def test_features_streamed_to_disk_equal_the_in_memory_ones(tmp_path):
    backbone = resnet(18, 0.125, "cifar", 16)
    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), labels=np.arange(10) % 2)
    stages = ["stem", "stage4", "pooled"]
    memory, labels = extract(backbone, source, "train", stages, 16, batch_size=4, max_dims=512)
    disk, disk_labels = extract(backbone, source, "train", stages, 16, batch_size=4, max_dims=512,
                                to_dir=tmp_path, label="pretrained: features of train")
    assert disk_labels.tolist() == labels.tolist()
    for s in stages:
        assert isinstance(disk[s], np.memmap) and not disk[s].flags.writeable
        np.testing.assert_array_equal(np.asarray(disk[s]), memory[s])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"pretrained_features_of_train.{s}.f32" for s in stages)


def test_an_extraction_that_fails_midway_closes_its_feature_files(tmp_path, monkeypatch):
    import ssl_zoo.evaluation.features as features

    backbone = resnet(18, 0.125, "cifar", 16)
    source = ArraySource(np.zeros((10, 16, 16, 3), np.uint8), labels=np.zeros(10, np.int64))
    sinks = []

    class Failing(features.DiskFeatures):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            sinks.append(self)

        def add(self, batch):
            if self.rows:  # the second batch: the disk filled up, say
                raise OSError("No space left on device")
            super().add(batch)

    monkeypatch.setattr(features, "DiskFeatures", Failing)
    with pytest.raises(OSError, match="No space"):
        features.extract(backbone, source, "train", ["stem", "pooled"], 16, batch_size=4, to_dir=tmp_path)
    assert sinks and all(f.closed for f in sinks[0].files.values())


def test_probe_on_features_read_from_disk_learns_like_the_in_memory_probe(tmp_path):
    from ssl_zoo.evaluation.linear_probe import RowBatches, chunked_mean_std

    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 4))
    x = (rng.normal(size=(600, 16)) * rng.uniform(0.1, 50, 16) + rng.normal(0, 20, 16)).astype(np.float32)
    y = (((x - x.mean(0)) / x.std(0)) @ w).argmax(1)
    path = tmp_path / "x.f32"
    x.tofile(path)
    on_disk = np.memmap(path, np.float32, "r", shape=x.shape)
    mean, std = chunked_mean_std(on_disk, chunk=64)  # several chunks
    np.testing.assert_allclose(mean[0], x.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std[0], x.std(0), rtol=1e-4)
    # Every row once per epoch, a new order each epoch.
    batches = RowBatches(on_disk, y, 64, shuffle_seed=0)
    first = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert len(batches) == 10 and sorted(first.tolist()) == sorted(y.tolist())
    order = batches.order.copy()
    batches.on_epoch_end()
    assert not np.array_equal(order, batches.order)
    kw = dict(num_classes=4, epochs=40, batch_size=64, learning_rate=1e-2)
    memory = linear_probe(x[:400], y[:400], x[400:], y[400:], **kw)
    disk = linear_probe(on_disk[:400], y[:400], on_disk[400:], y[400:], **kw)
    assert memory["test_accuracy"] > 0.85 and disk["test_accuracy"] > 0.85
    assert abs(memory["test_accuracy"] - disk["test_accuracy"]) <= 0.05


def test_evaluate_with_a_features_folder_cleans_it_and_says_so(tmp_path):
    rng = np.random.default_rng(2)
    backbone = resnet(18, 0.125, "cifar", 16)
    data = ArraySource(rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), labels=np.arange(24) % 3)
    kw = dict(stages=["stage2", "pooled"], knn_k=3, probe_epochs=2, image_size=16)
    with mock.patch("ssl_zoo.evaluation.run.open_source", return_value=data):
        plain = evaluate_model(backbone, source="arrays", test_split="train", **kw)
        streamed = evaluate_model(backbone, source="arrays", test_split="train", features_dir=tmp_path / "f", **kw)
    assert plain["features_held"] == "memory" and streamed["features_held"] == "disk"
    assert streamed["knn"] == plain["knn"]  # the same features, the same neighbours
    assert streamed["protocol_id"] == plain["protocol_id"]
    assert list((tmp_path / "f").iterdir()) == []  # each model's files removed after its probes


def test_features_that_cannot_fit_in_memory_are_refused_before_extraction(monkeypatch):
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.evaluation import run

    monkeypatch.setattr(run, "available_memory_bytes", lambda: 10_000)
    source = ArraySource(np.zeros((50, 16, 16, 3), np.uint8), labels=np.arange(50) % 2)
    with pytest.raises(ConfigError, match="--features-dir"):
        run.evaluate_backbone(resnet(18, 0.125, "cifar", 16), source=source, stages=["stem", "pooled"],
                              image_size=16, test_split="train", probe_epochs=1)
