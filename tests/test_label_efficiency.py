"""Label efficiency: the class-balanced subset, the subset source, and one end-to-end run on a tiny
backbone (both models, every fraction, the same steps, FGSM / PGD accuracy of each final classifier,
a report with its protocol id)."""

import json

import numpy as np
import pytest

from ssl_zoo.data.sources import ArraySource
from ssl_zoo.errors import ConfigError
from ssl_zoo.evaluation.label_efficiency import (
    SubsetSource,
    balanced_subset,
    label_efficiency,
    read_labels,
)
from ssl_zoo.finetune import final_accuracy


def test_balanced_subset_takes_the_same_share_of_every_class():
    labels = np.array([0] * 100 + [1] * 50 + [2] * 7 + [-1] * 5)
    chosen = balanced_subset(labels, 0.1, seed=3)
    counts = np.bincount(labels[chosen])
    assert counts.tolist() == [10, 5, 1]  # round(0.7) = 1: every class keeps at least one image
    assert (labels[chosen] >= 0).all() and len(set(chosen)) == len(chosen)
    np.testing.assert_array_equal(chosen, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(chosen, balanced_subset(labels, 0.1, seed=4))
    assert len(balanced_subset(labels, 1.0)) == 157
    # A smaller fraction is not required to be inside a larger one, but both are balanced.
    assert np.bincount(labels[balanced_subset(labels, 0.5)]).tolist() == [50, 25, 4]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            balanced_subset(labels, bad)


def test_subset_source_cuts_only_its_split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    base = ArraySource(images, np.arange(20) % 4)
    keep = np.array([1, 5, 6, 19])
    subset = SubsetSource(base, "train", keep, "test subset")
    assert subset.num_examples("train") == 4 and subset.num_classes() == base.num_classes()
    index, labels = read_labels(subset, "train")
    np.testing.assert_array_equal(np.sort(index), keep)
    np.testing.assert_array_equal(labels[np.argsort(index)], keep % 4)
    shuffled = [int(ex["index"]) for ex in subset.examples("train", shuffle_seed=7)]
    assert sorted(shuffled) == keep.tolist()
    assert subset.name.endswith("[test subset]")
    # The subset is found once: later passes read it from memory, not by decoding the split again.
    import tensorflow as tf

    reads = tf.Variable(0, dtype=tf.int64)

    class Counting(ArraySource):
        def examples(self, split, shuffle_seed=None):
            return super().examples(split, shuffle_seed).map(lambda ex: (reads.assign_add(1), ex)[1])

    counted = SubsetSource(Counting(images, np.arange(20) % 4), "train", keep, "counted")
    ds = counted.examples("train").repeat(3)
    assert len(list(ds)) == 12 and int(reads.numpy()) == 20
    # The whole split is the split itself, unfiltered.
    whole = SubsetSource(base, "train", np.arange(20), "all")
    assert len(list(whole.examples("train"))) == 20


def test_label_efficiency_end_to_end(tmp_path):
    from ssl_zoo.backbones import build_backbone

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    backbone = build_backbone({"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": 16})
    path = tmp_path / "tiny.keras"
    backbone.save(path)
    data = ArraySource(images, np.arange(40) % 4)
    report = label_efficiency(str(path), dataset=data, fractions=(0.5, 0.1), steps_per_epoch=2, epochs_frozen=1,
                              epochs_unfrozen=1, batch_size=4, out=tmp_path / "report.json", run_eagerly=True,
                              robustness={"epsilons": [8.0], "pgd_steps": 2, "max_examples": 6})
    assert list(report["fractions"]) == ["0.1", "0.5"]
    assert [report["fractions"][f]["num_labels"] for f in ("0.1", "0.5")] == [4, 20]
    for row in report["fractions"].values():
        for run in ("trained", "random_init"):
            assert 0.0 <= final_accuracy(row[run]) <= 1.0
            assert row[run]["unfrozen"]["epochs"] == 1
            attacked = row[run]["robustness"]
            assert attacked["num_examples"] == 6 and set(attacked["accuracy"]) == {"clean", "fgsm_eps8", "pgd2_eps8"}
    assert report["protocol"]["kind"] == "label_efficiency" and report["protocol"]["image_size"] == 16
    assert len(report["protocol_id"]) == 12
    assert json.loads((tmp_path / "report.json").read_text())["protocol_id"] == report["protocol_id"]


def test_a_report_is_extended_with_new_fractions_only_under_the_same_settings(tmp_path, monkeypatch):
    import ssl_zoo.finetune

    fine_tuned = []

    def fake_finetune(model, *, dataset, **kw):
        fine_tuned.append(dataset.name)
        acc = {"unfrozen": {"test_accuracy": 0.5}}
        return {"trained": acc, "random_init": acc, "protocol": {"image_size": 8}}

    monkeypatch.setattr(ssl_zoo.finetune, "finetune", fake_finetune)
    data = ArraySource(np.zeros((100, 8, 8, 3), np.uint8), np.arange(100) % 4)
    out = tmp_path / "le.json"
    first = label_efficiency("m", dataset=data, fractions=(0.1,), out=out)
    again = label_efficiency("m", dataset=data, fractions=(0.1, 1.0), out=out)
    assert fine_tuned == ["arrays[0.1 of labels]", "arrays[1 of labels]"]  # 10 % kept, not redone
    assert again["fractions"]["0.1"] == first["fractions"]["0.1"] and list(again["fractions"]) == ["0.1", "1"]
    assert again["protocol_id"] == first["protocol_id"] and again["seconds"] >= first["seconds"]
    with pytest.raises(ConfigError, match="another model, dataset or settings: give another --out"):
        label_efficiency("m", dataset=data, fractions=(0.5,), lr_frozen=0.1, out=out)
