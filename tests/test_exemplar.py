"""Exemplar CNN: seed selection, seed bank, transform (eager and in tf.data), model, fit,
trainer integration, replicas, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_round_trips_in_safe_mode, tiny_recipe, write_image_folder
from method_contract import MethodContract
from ssl_zoo.data.pipeline import build_pretext_dataset
from ssl_zoo.data import sources
from ssl_zoo.data.sources import ArraySource, ImageFolderSource
from ssl_zoo.methods import build_method
from ssl_zoo.pretext.exemplar import exemplar_example, select_seed_box, transform_seed
from ssl_zoo.train.loop import Trainer

P, C, IMG = 8, 12, 24
BACKBONE = {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": P}


def _images(n=6, size=IMG, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _method(n=6, images=None, **kw):
    kw = {"num_classes": n, "patch_size": P, "context_size": C, "candidates": 8, "head_hidden_units": (16,), **kw}
    method = build_method("exemplar", backbone=dict(BACKBONE), **kw)
    method.set_bank_from_images(_images(n) if images is None else images, IMG)
    return method


def test_seed_box_is_the_candidate_with_the_strongest_gradient():
    image = np.full((40, 40, 3), 120, np.uint8)
    image[24:34, 4:14] = np.random.default_rng(0).integers(0, 256, (10, 10, 3))  # the only texture
    corner, score = select_seed_box(tf.constant(image), tf.constant([0, 0], tf.int64), 10, candidates=64)
    y, x = corner.numpy()
    assert abs(y - 24) <= 4 and abs(x - 4) <= 4 and float(score) > 0
    # A pure function of (image, seed).
    again, _ = select_seed_box(tf.constant(image), tf.constant([0, 0], tf.int64), 10, candidates=64)
    np.testing.assert_array_equal(corner, again)


def test_bank_is_deterministic_and_each_class_is_one_seed_of_one_image():
    a, b = _method(), _method()
    np.testing.assert_array_equal(a.bank, b.bank)
    assert a.bank.shape == (6, C, C, 3) and a.bank.dtype == np.uint8
    images = _images(6)
    off = (C - P) // 2
    for i in range(6):
        # The seed patch (centre of the context) is a patch of source image i.
        seed = a.bank[i, off : off + P, off : off + P]
        found = any(np.array_equal(images[i, y : y + P, x : x + P], seed)
                    for y in range(IMG - P + 1) for x in range(IMG - P + 1))
        assert found, i
    with pytest.raises(ValueError, match="need as many images"):
        _method(n=8, images=_images(5))


def test_two_samples_of_one_class_come_from_the_same_seed_patch():
    method = _method()
    off = (C - P) // 2
    views = {}
    for s in range(40):
        view, label, seed_patch = exemplar_example(method.bank, tf.constant([s, 0], tf.int64), patch_size=P,
                                                   return_debug=True, geometric=False, colour=False)
        label = int(label)
        assert 0 <= label < 6
        # Untransformed, the view is exactly the class's seed patch ...
        np.testing.assert_array_equal(view.numpy(), method.bank[label, off : off + P, off : off + P])
        np.testing.assert_array_equal(view.numpy(), seed_patch.numpy())
        views.setdefault(label, []).append(view.numpy())
    assert len(views) == 6  # every class drawn
    # ... so any two samples of one class are the same patch.
    for vs in views.values():
        for v in vs[1:]:
            np.testing.assert_array_equal(v, vs[0])


def test_transformed_views_are_nearest_to_their_own_seed():
    """Under translation/scale/rotation only, a view stays closer to its own seed patch than to any
    other class's: the label still describes where the view came from."""
    images = np.stack([np.full((IMG, IMG, 3), v, np.uint8) for v in (20, 70, 120, 170, 220, 250)])
    images[..., 0] = np.random.default_rng(0).integers(0, 40, (6, IMG, IMG))  # a little texture
    method = _method(images=images)
    off = (C - P) // 2
    seeds = method.bank[:, off : off + P, off : off + P].astype(np.float32)
    for s in range(12):
        view, label = exemplar_example(method.bank, tf.constant([s, 1], tf.int64), patch_size=P, colour=False)
        d = ((seeds - view.numpy()) ** 2).mean(axis=(1, 2, 3))
        assert int(np.argmin(d)) == int(label)


def test_transforms_change_the_view_and_stay_in_range():
    method = _method()
    a = transform_seed(method.bank[0], tf.constant([1, 0], tf.int64), patch_size=P).numpy()
    b = transform_seed(method.bank[0], tf.constant([2, 0], tf.int64), patch_size=P).numpy()
    a2 = transform_seed(method.bank[0], tf.constant([1, 0], tf.int64), patch_size=P).numpy()
    assert a.shape == (P, P, 3) and 0 <= a.min() and a.max() <= 255
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, a2)


def test_transform_inside_tf_data_through_the_pipeline():
    method = _method()
    ds = build_pretext_dataset(ArraySource(_images(12)), "train", method, batch_size=4, image_size=IMG,
                               training=True, seed=3)
    batches = [(b["inputs"], b["targets"]) for b in ds.as_numpy_iterator()]
    assert len(batches) == 3
    for views, labels in batches:
        assert views.shape == (4, P, P, 3) and views.dtype == np.float32
        assert labels.dtype == np.int32 and ((labels >= 0) & (labels < 6)).all()
    # The batched views are the views of the per-example function for the pipeline's seeds.
    for b, (views, labels) in enumerate(batches):
        for j in range(4):
            seed = tf.constant([3 * 1_000_003, 4 * b + j], tf.int64)  # build_dataset's seed of example 4b+j
            view, label = exemplar_example(method.bank, seed, patch_size=P, **method.transform_ranges())
            assert int(label) == labels[j]
            np.testing.assert_allclose(views[j], view.numpy(), atol=1e-2)  # float rounding, of 255
    off = (C - P) // 2
    debug = tf.data.Dataset.range(16).map(
        lambda i: exemplar_example(method.bank, tf.stack([tf.constant(4, tf.int64), i]), patch_size=P,
                                   return_debug=True, geometric=False, colour=False))
    for view, label, _ in debug.as_numpy_iterator():
        np.testing.assert_array_equal(view, method.bank[label, off : off + P, off : off + P])
    with pytest.raises(RuntimeError, match="prepare"):
        build_method("exemplar", backbone=dict(BACKBONE), num_classes=3, patch_size=P, context_size=C) \
            .example_transform(tf.zeros([IMG, IMG, 3]), IMG, tf.constant([0, 0], tf.int64))


def test_prepare_builds_the_bank_from_a_seeded_choice_of_the_split():
    images = _images(9)
    method = build_method("exemplar", backbone=dict(BACKBONE), num_classes=5, patch_size=P, context_size=C)
    method.prepare(ArraySource(images), "train", IMG)
    again = build_method("exemplar", backbone=dict(BACKBONE), num_classes=5, patch_size=P, context_size=C)
    again.prepare(ArraySource(images), "train", IMG)
    np.testing.assert_array_equal(method.bank, again.bank)
    assert method.bank.shape == (5, C, C, 3) and (method.bank_scores > 0).all()


@pytest.mark.slow  # ~100 s on the busy 2-core CPU where it was written (a full Trainer.fit)
def test_trainer_prepares_the_bank_from_the_training_split(tmp_path):
    write_image_folder(tmp_path, n=16, size=IMG)
    recipe = tiny_recipe(epochs=1, steps_per_epoch=2)
    method = build_method("exemplar", backbone=dict(BACKBONE), num_classes=10, patch_size=P, context_size=C,
                          head_hidden_units=(16,))
    trainer = Trainer(method, recipe, ImageFolderSource(tmp_path / "images"), tf.distribute.get_strategy(), tmp_path / "run")
    assert method.bank.shape == (10, C, C, 3)
    result = trainer.fit()
    assert np.isfinite(result["history"][-1]["train_loss"])
    keras.saving.load_model(tmp_path / "run" / "backbone.keras", safe_mode=True)


def test_trainer_streams_placeholders_and_gets_the_batches_decoding_would_give(tmp_path, monkeypatch):
    """Exemplar's examples depend only on their seeds, so the trainer does not decode the images
    (ImagelessSource); its batches are exactly those of a pipeline over the decoded folder."""
    write_image_folder(tmp_path, n=16, size=IMG)
    source = ImageFolderSource(tmp_path / "images")
    recipe = tiny_recipe(epochs=1, steps_per_epoch=2)
    method = build_method("exemplar", backbone=dict(BACKBONE), num_classes=10, patch_size=P, context_size=C,
                          head_hidden_units=(16,))
    trainer = Trainer(method, recipe, source, tf.distribute.get_strategy(), tmp_path / "run")
    decodes = []
    real_decode = sources.decode_file
    monkeypatch.setattr(sources, "decode_file", lambda *a: decodes.append(a[0]) or real_decode(*a))
    streamed = [(b["inputs"].numpy(), b["targets"].numpy()) for b in trainer._train_dataset(epoch=1, skip=0)]
    assert decodes == []
    decoded = build_pretext_dataset(source, recipe.data.train_split, method, batch_size=recipe.train.global_batch,
                                    image_size=recipe.data.image_size, training=True, seed=recipe.train.seed,
                                    epoch=1, repeat=True).take(2)
    for (xa, ya), b in zip(streamed, decoded, strict=True):
        np.testing.assert_array_equal(xa, b["inputs"].numpy())
        np.testing.assert_array_equal(ya, b["targets"].numpy())
    assert decodes  # the spy sees decoding where it happens


def test_saved_pretext_model_round_trips_with_safe_mode_and_the_backbone_extracts(tmp_path):
    x = np.random.default_rng(2).uniform(0, 255, (3, P, P, 3)).astype(np.float32)
    assert_round_trips_in_safe_mode(_method().build_model(), x, x, tmp_path)


# ---- the method contract (tests/method_contract.py) --------------------------------------------
CONTRACT = MethodContract(
    method={"name": "exemplar", "num_classes": 6, "patch_size": P, "context_size": C, "candidates": 8,
            "head_hidden_units": [16]},
    image_size=IMG, images=_images(12), backbone=dict(BACKBONE))


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas_and_sigkill_resume(tmp_path):
    CONTRACT.run_slow(tmp_path)
