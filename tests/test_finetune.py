"""Fine-tuning with plain Keras fit: frozen (batch norm in inference mode), then unfrozen."""

from __future__ import annotations

import json

import numpy as np
import pytest

import release_fixtures as rf


def _arrays(n=24, seed=0):
    from ssl_zoo.data.sources import ArraySource

    rng = np.random.default_rng(seed)
    return ArraySource(rf.images(n, seed=seed), labels=rng.integers(0, 3, n), name="tiny_arrays")


def _weights(model):
    return [np.array(w) for w in model.weights]


def test_frozen_phase_keeps_backbone_and_bn_statistics(tmp_path_factory):
    """trainable=False freezes the weights *and* runs BN in inference mode (moving stats fixed)."""
    import keras

    from ssl_zoo.finetune import build_classifier
    from ssl_zoo.loader import load_backbone

    backbone = load_backbone(rf.exported(tmp_path_factory)["preset"])
    model = build_classifier(backbone, 3, rf.IMAGE_SIZE)
    x, y = rf.images(8, seed=9).astype("float32"), np.arange(8) % 3
    before = _weights(backbone)
    backbone.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(backbone)))
    backbone.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not all(np.array_equal(a, b) for a, b in zip(before, _weights(backbone)))


def test_finetune_report_trained_and_random_init(tmp_path, tmp_path_factory):
    from ssl_zoo.finetune import finetune

    out = tmp_path / "finetune.json"
    report = finetune(rf.exported(tmp_path_factory)["preset"], dataset=_arrays(), epochs_frozen=1, epochs_unfrozen=1,
                      batch_size=8, steps_per_epoch=1, max_test_examples=8, out=str(out), run_eagerly=True)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for run in ("trained", "random_init"):
        for phase in ("frozen", "unfrozen"):
            acc = report[run][phase]["test_accuracy"]
            assert 0.0 <= acc <= 1.0
            assert len(report[run][phase]["train_loss"]) == 1
    assert report["protocol"]["image_size"] == rf.IMAGE_SIZE and report["dataset"] == "tiny_arrays"


def test_random_init_floor_is_reused_for_the_same_architecture_examples_and_schedule_only(tmp_path, caplog):
    """The twin is a function of the architecture, the examples, the schedule and the seed: a
    backbone with other weights reuses the floor measured for another, and that floor equals the
    one it measures itself. Another architecture or other examples are measured; a cache file that
    does not read back is a miss, not an error."""
    import keras

    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.evaluation.label_efficiency import SubsetSource
    from ssl_zoo.finetune import RandomInitCache, finetune

    data = _arrays(16)
    first_half, second_half = (SubsetSource(data, "train", keep, "half") for keep in (np.arange(8), np.arange(8, 16)))
    kw = dict(epochs_frozen=1, epochs_unfrozen=1, batch_size=8, steps_per_epoch=1, max_test_examples=8,
              test_split="test", run_eagerly=True)
    a = build_backbone(rf.TINY_BACKBONE, name="a")
    b = build_backbone(rf.TINY_BACKBONE, name="b")
    b.set_weights([w + 0.01 for w in b.get_weights()])  # "pretrained" otherwise
    own = finetune(b, dataset=first_half, **kw)["random_init"]
    cache = RandomInitCache(tmp_path / "cache")
    assert "reused" not in finetune(a, dataset=first_half, random_init_cache=cache, **kw)["random_init"]
    assert len(list(cache.folder.glob("*.json"))) == 1
    reused = finetune(b, dataset=first_half, random_init_cache=cache, **kw)["random_init"]
    assert reused["reused"]["measured_for"] == "a"
    for phase in ("frozen", "unfrozen"):
        assert reused[phase]["test_accuracy"] == own[phase]["test_accuracy"]
        assert reused[phase]["train_loss"] == own[phase]["train_loss"]
    wider = build_backbone(dict(rf.TINY_BACKBONE, width=0.25), name="wider")
    assert "reused" not in finetune(wider, dataset=first_half, random_init_cache=cache, **kw)["random_init"]
    assert "reused" not in finetune(a, dataset=second_half, random_init_cache=cache, **kw)["random_init"]
    assert len(list(cache.folder.glob("*.json"))) == 3
    # A dataset that does not identify its examples is never cached.
    assert "reused" not in finetune(a, dataset=data, random_init_cache=cache, **kw)["random_init"]
    assert len(list(cache.folder.glob("*.json"))) == 3
    for path in cache.folder.glob("*.json"):
        path.write_text("{ not json")
    assert "reused" not in finetune(b, dataset=first_half, random_init_cache=cache, **kw)["random_init"]
    assert "not used" in caplog.text
    keras.backend.clear_session()


def test_finetune_does_not_depend_on_what_ran_before_in_the_process():
    """tf.data pairs a shuffle's seed with TensorFlow's global seed (a default one while none is set):
    fine-tuning sets it from its own seed before it builds the datasets, so a process's first run
    (no global seed yet) and a run after other seeded work read the examples in the same order."""
    import tensorflow as tf

    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.finetune import finetune

    backbone = build_backbone(rf.TINY_BACKBONE, name="a")
    kw = dict(dataset=_arrays(16), epochs_frozen=1, epochs_unfrozen=1, batch_size=8, steps_per_epoch=1,
              max_test_examples=8, random_init=True, run_eagerly=True)
    runs = []
    for global_seed in (None, 7):  # a fresh process, then one where something else seeded TensorFlow
        tf.random.set_seed(global_seed)
        report = finetune(backbone, **kw)["random_init"]
        runs.append([report[phase]["train_loss"] for phase in ("frozen", "unfrozen")])
    assert runs[0] == runs[1]


def test_finetune_any_size_backbone_needs_and_uses_image_size():
    """A backbone without a fixed input size (the context methods' entries) is fine-tuned at the
    size the user names; without one it is a clear error, not a crash inside Keras."""
    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.finetune import finetune

    any_size = dict(rf.TINY_BACKBONE, image_size=None)
    backbone = build_backbone(any_size, name="backbone")
    assert backbone.input.shape[1] is None
    with pytest.raises(ValueError, match="any size.*image_size"):
        finetune(backbone, dataset=_arrays(8), random_init=False, steps_per_epoch=1, run_eagerly=True)
    report = finetune(backbone, dataset=_arrays(16), image_size=12, epochs_frozen=1, epochs_unfrozen=0,
                      batch_size=8, steps_per_epoch=1, max_test_examples=8, random_init=False, run_eagerly=True)
    assert report["protocol"]["image_size"] == 12


def test_finetune_saved_model_is_frozen_only(tmp_path_factory):
    from ssl_zoo.finetune import finetune

    report = finetune(rf.exported(tmp_path_factory)["saved_model"], dataset=_arrays(16), epochs_frozen=1,
                      epochs_unfrozen=1, batch_size=8, steps_per_epoch=1, max_test_examples=8, run_eagerly=True)
    assert 0.0 <= report["trained"]["frozen"]["test_accuracy"] <= 1.0
    assert "skipped" in report["trained"]["unfrozen"] and "skipped" in report["random_init"]


@pytest.mark.slow
@pytest.mark.data
def test_cli_finetune_on_cifar10(data_dir, tmp_path, tmp_path_factory):
    from ssl_zoo.cli import main

    out = tmp_path / "ft.json"
    rc = main(["finetune", str(rf.exported(tmp_path_factory)["preset"]), "--dataset", "tfds:cifar10",
               "--data-dir", str(data_dir), "--epochs-frozen", "1", "--epochs-unfrozen", "1", "--batch-size", "32",
               "--steps-per-epoch", "2", "--max-train-examples", "64", "--max-test-examples", "64", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["protocol"]["max_train_examples"] == 64 and "random_init" in report
