"""Jigsaw: permutation set, tile transform (eager and in tf.data), model, fit, replicas, saving."""

import functools
import hashlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_round_trips_in_safe_mode
from method_contract import MethodContract
from ssl_zoo.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD
from ssl_zoo.data.pipeline import build_pretext_dataset
from ssl_zoo.data.sources import ArraySource
from ssl_zoo.methods import build_method, extract_backbone
from ssl_zoo.pretext.jigsaw import jigsaw_example
from ssl_zoo.pretext.permutations import (
    _all_permutations,
    decode_permutations,
    encode_permutations,
    maximal_hamming_permutations,
    min_hamming_distance,
)

TILE = 8
CROP = 27  # cells of 9 px: tiles of 8 px with one pixel of jitter/gap
BACKBONE = {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": TILE}


def _method(**kw):
    kw = {"num_permutations": 10, "tile_size": TILE, "head_hidden_units": (16,), **kw}
    return build_method("jigsaw", backbone=dict(BACKBONE), **kw)


def _images(n=8, h=30, w=34, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _pairwise_min_hamming(perms):
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(d, 99)
    return int(d.min())


# ---- permutation set ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [100, 1000])
def test_permutation_set_is_valid_and_has_the_stated_min_hamming_distance(n):
    perms = maximal_hamming_permutations(n, seed=0)
    assert perms.shape == (n, 9) and perms.dtype == np.int32
    assert (np.sort(perms, 1) == np.arange(9)).all()
    assert len({tuple(p) for p in perms}) == n
    d = _pairwise_min_hamming(perms)
    assert d == min_hamming_distance(perms)
    # Far better than random sets (random 100 of 9! typically have a pair at distance 2 to 3).
    assert d >= {100: 6, 1000: 5}[n]


def test_permutations_are_chosen_greedily_for_maximal_minimum_distance():
    """Every member has, to the members before it, the largest minimum distance any of the 9!
    candidates has: the greedy max-min criterion, checked against brute force."""
    perms = maximal_hamming_permutations(40, seed=3)
    candidates = _all_permutations(9)
    to_chosen = np.full(len(candidates), 99)  # each candidate's min distance to perms[:i]
    for i in range(1, len(perms)):
        to_chosen = np.minimum(to_chosen, (candidates != perms[i - 1]).sum(-1))
        assert (perms[i] != perms[:i]).sum(-1).min() == to_chosen.max(), i


def test_permutation_set_is_identical_across_processes_and_seeded():
    code = (
        "import hashlib; from ssl_zoo.pretext.permutations import maximal_hamming_permutations as m;"
        "print(hashlib.sha256(m(100, 0).tobytes()).hexdigest(), hashlib.sha256(m(1000, 0).tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    here = [hashlib.sha256(maximal_hamming_permutations(n, 0).tobytes()).hexdigest() for n in (100, 1000)]
    assert out.stdout.split() == here
    assert not np.array_equal(maximal_hamming_permutations(100, 1), maximal_hamming_permutations(100, 0))
    # The first 100 of the 1000-set are the 100-set: the greedy sequence does not depend on n.
    np.testing.assert_array_equal(maximal_hamming_permutations(1000, 0)[:100], maximal_hamming_permutations(100, 0))


def test_permutation_set_travels_in_the_method_config():
    method = _method(num_permutations=100, permutation_seed=5)
    config = method.config()
    assert len(config["permutations"]) == 100 and all(len(p) == 9 for p in config["permutations"])
    np.testing.assert_array_equal(decode_permutations(config["permutations"]), maximal_hamming_permutations(100, 5))
    # Rebuilt from its config (as from run.json), the method uses exactly the stored set.
    config.pop("name")
    again = build_method("jigsaw", **config)
    np.testing.assert_array_equal(again.permutation_array, method.permutation_array)
    custom = encode_permutations(np.stack([np.arange(9), np.arange(9)[::-1]]))
    assert _method(num_permutations=2, permutations=custom).permutation_array[1, 0] == 8
    with pytest.raises(ValueError, match="exactly once"):
        _method(num_permutations=1, permutations=("012345677",))
    with pytest.raises(ValueError, match="tile_size"):
        build_method("jigsaw", backbone={**BACKBONE, "image_size": 16}, tile_size=TILE)


# ---- the transform -----------------------------------------------------------------------------
def _reassemble(tiles, order, cell):
    """Puts output tile i back into grid cell order[i] (the inverse permutation)."""
    canvas = np.zeros((3 * cell, 3 * cell, tiles.shape[-1]), tiles.dtype)
    for i, j in enumerate(order):
        r, c = divmod(int(j), 3)
        canvas[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = tiles[i]
    return canvas


def _check_exact(tiles, label, debug, perms, tile, crop_size, jitter):
    """Each output tile is the crop at its recorded position; that position lies in the grid cell
    the permutation sends it to; tile-sized cells re-assemble to the crop exactly."""
    tiles, label, crop, pos = np.asarray(tiles), int(label), np.asarray(debug["crop"]), np.asarray(debug["positions"])
    assert 0 <= label < len(perms)
    order = perms[label]
    cell = crop_size // 3
    for i in range(9):
        y, x = pos[i]
        np.testing.assert_array_equal(tiles[i], crop[y : y + tile, x : x + tile])
        r, c = divmod(int(order[i]), 3)
        assert r * cell <= y <= r * cell + cell - tile and c * cell <= x <= c * cell + cell - tile
        if not jitter:
            assert (y - r * cell, x - c * cell) == ((cell - tile) // 2,) * 2
    if tile == cell:
        np.testing.assert_array_equal(_reassemble(tiles, order, cell), crop[: 3 * cell, : 3 * cell])


@pytest.mark.parametrize("training", [True, False])
def test_transform_eager_labels_describe_the_permutation(training):
    perms = maximal_hamming_permutations(10, 0)
    image = tf.constant(_images(1)[0])
    for s in range(6):
        # Plain tiles (no colour, no normalisation): they must equal the crop pixels exactly.
        tiles, label, debug = jigsaw_example(
            image, tf.constant([s, 7], tf.int64), perms, crop_size=CROP, tile_size=TILE, training=training,
            colour=False, normalize=False, return_debug=True,
        )
        assert tiles.shape == (9, TILE, TILE, 3) and tiles.dtype == tf.float32 and label.dtype == tf.int32
        _check_exact(tiles, label, debug, perms, TILE, CROP, jitter=training)


def test_tiles_of_cell_size_reassemble_to_the_crop_with_the_inverse_permutation():
    perms = maximal_hamming_permutations(30, 0)
    image = tf.constant(_images(1, 24, 24)[0])
    labels = set()
    for s in range(8):
        tiles, label, debug = jigsaw_example(
            image, tf.constant([s, 1], tf.int64), perms, crop_size=24, tile_size=8, training=True,
            colour=False, normalize=False, return_debug=True,
        )
        _check_exact(tiles, label, debug, perms, 8, 24, jitter=True)
        labels.add(int(label))
    assert len(labels) > 1  # the permutation really is drawn per example


def test_jitter_moves_tiles_and_the_same_seed_gives_the_same_example():
    perms = maximal_hamming_permutations(10, 0)
    image = tf.constant(_images(1)[0])
    run = functools.partial(jigsaw_example, image, permutations=perms, crop_size=CROP, tile_size=TILE, return_debug=True)
    a = run(seed=tf.constant([1, 2], tf.int64))
    b = run(seed=tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(a[0], b[0])
    assert int(a[1]) == int(b[1])
    offsets = set()
    for s in range(10):
        _, label, debug = run(seed=tf.constant([s, 3], tf.int64))
        order = perms[int(label)]
        for i in range(9):
            r, c = divmod(int(order[i]), 3)
            offsets.add(tuple(np.asarray(debug["positions"][i]) - [r * 9, c * 9]))
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}  # one pixel of slack: every offset occurs


def test_tiles_are_standardised_per_tile_as_the_backbone_sees_them():
    perms = maximal_hamming_permutations(10, 0)
    image = tf.constant(_images(1)[0])
    tiles, _ = jigsaw_example(image, tf.constant([0, 0], tf.int64), perms, crop_size=CROP, tile_size=TILE)
    # What the backbone's Rescaling + Normalization layers make of the tiles:
    z = (tiles.numpy() / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1.0, atol=1e-3)


def test_colour_jitter_makes_some_tiles_grey():
    perms = maximal_hamming_permutations(10, 0)
    image = tf.constant(_images(1)[0])
    grey_counts = []
    for p in (0.0, 1.0):
        tiles, _ = jigsaw_example(
            image, tf.constant([0, 0], tf.int64), perms, crop_size=CROP, tile_size=TILE, normalize=False,
            grey_probability=p,
        )
        t = tiles.numpy()
        grey_counts.append(int(sum(np.allclose(x[..., 0], x[..., 1], atol=1e-3) for x in t)))
    assert grey_counts == [0, 9]


def test_transform_inside_tf_data_through_the_pipeline():
    method = _method()
    source = ArraySource(_images(12))
    ds = build_pretext_dataset(source, "train", method, batch_size=4, image_size=CROP, training=True)
    batches = [(b["inputs"], b["targets"]) for b in ds.as_numpy_iterator()]
    assert len(batches) == 3
    for tiles, labels in batches:
        assert tiles.shape == (4, 9, TILE, TILE, 3) and tiles.dtype == np.float32
        assert labels.dtype == np.int32 and ((labels >= 0) & (labels < 10)).all()
    # The same pipeline again gives the same examples (stateless seeds), and evaluation works too.
    again = list(build_pretext_dataset(source, "train", method, batch_size=4, image_size=CROP, training=True)
                 .as_numpy_iterator())
    np.testing.assert_array_equal(batches[0][0], again[0]["inputs"])
    ev = build_pretext_dataset(source, "train", method, batch_size=4, image_size=CROP)
    assert next(iter(ev))["inputs"].shape == (4, 9, TILE, TILE, 3)

    # Exact label check inside a graph (tf.data map) as well.
    perms = method.permutation_array
    debug_ds = tf.data.Dataset.from_tensor_slices(_images(4)).enumerate().map(
        lambda i, im: jigsaw_example(im, tf.stack([tf.constant(9, tf.int64), i]), perms, crop_size=CROP,
                                     tile_size=TILE, colour=False, normalize=False, return_debug=True)
    )
    for tiles, label, debug in debug_ds.as_numpy_iterator():
        _check_exact(tiles, label, debug, perms, TILE, CROP, jitter=True)


# ---- model, training, replicas, saving ---------------------------------------------------------
def test_tiles_share_one_backbone_and_features_concatenate_in_tile_order():
    method = _method()
    model = method.build_model()
    backbone = extract_backbone(model)
    x = np.random.default_rng(1).uniform(0, 255, (2, 9, TILE, TILE, 3)).astype(np.float32)
    # The head sees the per-tile features of the same backbone, tile 0 first.
    concat = keras.Model(model.input, model.get_layer("pretext_head").input)(x).numpy()
    per_tile = backbone(x.reshape(-1, TILE, TILE, 3)).numpy().reshape(2, 9, -1)
    np.testing.assert_allclose(concat, per_tile.reshape(2, -1), rtol=1e-5, atol=1e-5)
    assert sum(isinstance(layer, keras.Model) and layer.name == "backbone" for layer in model.layers) == 1


def test_saved_pretext_model_round_trips_with_safe_mode_and_the_backbone_extracts(tmp_path):
    x = np.random.default_rng(2).uniform(0, 255, (3, 9, TILE, TILE, 3)).astype(np.float32)
    backbone = assert_round_trips_in_safe_mode(_method().build_model(), x, x[:, 0], tmp_path)
    assert backbone.get_layer("stage4") is not None


# ---- the method contract (tests/method_contract.py) --------------------------------------------
CONTRACT = MethodContract(
    method={"name": "jigsaw", "num_permutations": 10, "tile_size": TILE, "head_hidden_units": [16]},
    image_size=CROP, images=_images(12), backbone=dict(BACKBONE))


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas_and_sigkill_resume(tmp_path):
    CONTRACT.run_slow(tmp_path)
