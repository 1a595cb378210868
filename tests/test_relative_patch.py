"""Relative patch location: transform (eager and in tf.data), chromatic defences, model, fit,
replicas, saving."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_round_trips_in_safe_mode
from method_contract import MethodContract
from ssl_zoo.backbones.resnet import IMAGENET_MEAN
from ssl_zoo.data.pipeline import build_pretext_dataset
from ssl_zoo.data.sources import ArraySource
from ssl_zoo.methods import build_method, extract_backbone
from ssl_zoo.pretext.relative_patch import OFFSETS, relative_patch_example

P, GAP, JIT, CROP = 8, 3, 2, 36  # 3*8 + 2*3 + 2*2 = 34 <= 36
BACKBONE = {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": P}


def _method(**kw):
    kw = {"patch_size": P, "gap": GAP, "jitter": JIT, "head_hidden_units": (16,), **kw}
    return build_method("relative_patch", backbone=dict(BACKBONE), **kw)


def _images(n=8, h=38, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _check(patches, label, debug, training):
    """The patches are the crop at their positions, and the neighbour sits at OFFSETS[label] grid
    steps from the centre, up to the jitter: the label describes the spatial relation."""
    patches, label = np.asarray(patches), int(label)
    crop, pos = np.asarray(debug["crop"]), np.asarray(debug["positions"])
    assert 0 <= label < 8
    for i in range(2):
        y, x = pos[i]
        assert 0 <= y <= CROP - P and 0 <= x <= CROP - P
        np.testing.assert_array_equal(patches[i], crop[y : y + P, x : x + P])
    step = P + GAP
    delta = pos[1] - pos[0]
    expected = np.array(OFFSETS[label]) * step
    assert (np.abs(delta - expected) <= (2 * JIT if training else 0)).all(), (delta, expected)
    # The offset identifies the label uniquely: the nearest grid offset is the labelled one.
    nearest = int(np.argmin([np.abs(delta - np.array(o) * step).sum() for o in OFFSETS]))
    assert nearest == label
    # Never overlapping: the gap minus both jitters keeps the patches apart.
    assert max(abs(delta[0]), abs(delta[1])) >= P + GAP - 2 * JIT


@pytest.mark.parametrize("training", [True, False])
def test_transform_eager_label_matches_the_neighbour_offset(training):
    image = tf.constant(_images(1)[0])
    for s in range(8):
        patches, label, debug = relative_patch_example(
            image, tf.constant([s, 5], tf.int64), crop_size=CROP, patch_size=P, gap=GAP, jitter=JIT,
            training=training, chroma_defence="none", return_debug=True,
        )
        assert patches.shape == (2, P, P, 3) and patches.dtype == tf.float32 and label.dtype == tf.int32
        _check(patches, label, debug, training)


def test_transform_inside_tf_data():
    ds = tf.data.Dataset.from_tensor_slices(_images(64)).enumerate().map(
        lambda i, im: relative_patch_example(im, tf.stack([tf.constant(3, tf.int64), i]), crop_size=CROP, patch_size=P,
                                             gap=GAP, jitter=JIT, chroma_defence="none", return_debug=True)
    )
    labels = set()
    for patches, label, debug in ds.as_numpy_iterator():
        _check(patches, label, debug, training=True)
        labels.add(int(label))
    assert labels == set(range(8))  # all eight neighbours occur
    method = _method()
    pipe = build_pretext_dataset(ArraySource(_images(12)), "train", method, batch_size=4, image_size=CROP,
                                 training=True)
    batches = [(b["inputs"], b["targets"]) for b in pipe.as_numpy_iterator()]
    assert len(batches) == 3
    for patches, labels in batches:
        assert patches.shape == (4, 2, P, P, 3) and labels.dtype == np.int32
        assert ((labels >= 0) & (labels < 8)).all()
    ev = build_pretext_dataset(ArraySource(_images(4)), "train", method, batch_size=4, image_size=CROP)
    assert next(iter(ev))["inputs"].shape == (4, 2, P, P, 3)


def test_jitter_moves_patches_and_the_same_seed_repeats():
    image = tf.constant(_images(1)[0])
    run = functools.partial(relative_patch_example, image, crop_size=CROP, patch_size=P, gap=GAP, jitter=JIT,
                            return_debug=True)
    a, b = run(tf.constant([1, 1], tf.int64)), run(tf.constant([1, 1], tf.int64))
    np.testing.assert_array_equal(a[0], b[0])
    deltas = set()
    for s in range(30):
        _, label, debug = run(tf.constant([s, 2], tf.int64))
        pos = np.asarray(debug["positions"])
        deltas.add(tuple(pos[1] - pos[0] - np.array(OFFSETS[int(label)]) * (P + GAP)))
    assert len(deltas) > 5  # relative positions vary beyond the 8 grid offsets


def test_channel_drop_keeps_one_channel_and_fills_the_others_with_faint_noise():
    image = tf.constant(_images(1)[0])
    kept_channels = set()
    for s in range(12):
        plain, _, _ = relative_patch_example(image, tf.constant([s, 0], tf.int64), crop_size=CROP, patch_size=P, gap=GAP,
                                             jitter=JIT, chroma_defence="none", return_debug=True)
        dropped, _ = relative_patch_example(image, tf.constant([s, 0], tf.int64), crop_size=CROP, patch_size=P, gap=GAP,
                                            jitter=JIT, chroma_defence="channel_drop")
        plain, dropped = plain.numpy(), dropped.numpy()
        for i in range(2):
            same = [np.array_equal(plain[i, ..., c], dropped[i, ..., c]) for c in range(3)]
            assert sum(same) == 1
            kept = same.index(True)
            kept_channels.add(kept)
            for c in range(3):
                if c != kept:
                    noise = dropped[i, ..., c] - 255 * IMAGENET_MEAN[c]
                    assert 0 < noise.std() < 0.03 * plain[i, ..., kept].std()
    assert kept_channels == {0, 1, 2}


def test_grey_defence_removes_the_green_magenta_component():
    image = tf.constant(_images(1)[0])
    patches, _ = relative_patch_example(image, tf.constant([0, 0], tf.int64), crop_size=CROP, patch_size=P, gap=GAP,
                                        jitter=JIT, chroma_defence="grey")
    gm = patches.numpy() @ np.array([-1.0, 2.0, -1.0])
    np.testing.assert_allclose(gm, 0.0, atol=1e-3)
    with pytest.raises(ValueError, match="chroma_defence"):
        _method(chroma_defence="blur")
    with pytest.raises(ValueError, match="placement"):
        _method(placement="anywhere")
    with pytest.raises(ValueError, match="3 patches .* do not fit in 30"):
        relative_patch_example(image, tf.constant([0, 0], tf.int64), crop_size=30, patch_size=P, gap=GAP, jitter=JIT,
                               placement="grid")
    with pytest.raises(ValueError, match="2 patches .* do not fit in 20"):
        relative_patch_example(image, tf.constant([0, 0], tf.int64), crop_size=20, patch_size=P, gap=GAP, jitter=JIT)


def _neighbour_rows(placement, training=True, n=400):
    """Absolute rows of the neighbour's top-left corner, by vertical grid offset (-1: above)."""
    image = tf.constant(_images(1)[0])
    rows = {-1: set(), 0: set(), 1: set()}
    for s in range(n):
        _, label, debug = relative_patch_example(image, tf.constant([s, 9], tf.int64), crop_size=CROP, patch_size=P,
                                                 gap=GAP, jitter=JIT, training=training, chroma_defence="none",
                                                 placement=placement, return_debug=True)
        rows[OFFSETS[int(label)][0]].add(int(debug["positions"][1, 0]))
    return rows


@pytest.mark.parametrize("training", [True, False])
def test_pair_placement_keeps_absolute_position_from_giving_the_label_away(training):
    """With the 3x3 grid inside a small crop, a neighbour above the centre always lies in the top
    band of the crop and one below in the bottom band: the patch's place in the photo names the
    label. Placing only the pair, the same rows host neighbours above and below the centre."""
    grid = _neighbour_rows("grid", training)
    assert not grid[-1] & grid[1]
    pair = _neighbour_rows("pair", training)
    shared = pair[-1] & pair[1]
    assert len(shared) >= 3, pair  # rows 13-15 of 36 here, even without jitter
    assert all(0 <= r <= CROP - P for rows in pair.values() for r in rows)


def test_siamese_backbone_is_shared_and_fused_by_concatenation():
    model = _method().build_model()
    backbone = extract_backbone(model)
    x = np.random.default_rng(1).uniform(0, 255, (3, 2, P, P, 3)).astype(np.float32)
    fused = keras.Model(model.input, model.get_layer("pretext_head").input)(x).numpy()
    per_patch = backbone(x.reshape(-1, P, P, 3)).numpy().reshape(3, 2, -1)
    np.testing.assert_allclose(fused, per_patch.reshape(3, -1), rtol=1e-5, atol=1e-5)


def test_saved_pretext_model_round_trips_with_safe_mode_and_the_backbone_extracts(tmp_path):
    x = np.random.default_rng(2).uniform(0, 255, (3, 2, P, P, 3)).astype(np.float32)
    assert_round_trips_in_safe_mode(_method().build_model(), x, x[:, 0], tmp_path)


# ---- the method contract (tests/method_contract.py) --------------------------------------------
CONTRACT = MethodContract(
    method={"name": "relative_patch", "patch_size": P, "gap": GAP, "jitter": JIT, "head_hidden_units": [16]},
    image_size=CROP, images=_images(12))


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas_and_sigkill_resume(tmp_path):
    CONTRACT.run_slow(tmp_path)
