"""One photo as a training set: crops are fresh every epoch, fixed per seed, and bad specs are named."""

import numpy as np
import pytest
from PIL import Image

from ssl_zoo.data.sources import DataError, open_source


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    arr[100:] = 0  # an "information strip" that height= drops
    Image.fromarray(arr).save(tmp_path / "photo.png")
    return tmp_path


def _crops(source, split="train", seed=None):
    return np.stack([e["image"] for e in source.examples(split, shuffle_seed=seed).as_numpy_iterator()])


def test_crops_are_fixed_per_seed_new_per_epoch_and_split(photo):
    source = open_source("single:photo.png?height=100&size=16&n=12", photo)
    assert source.photo.shape == (100, 160, 3) and source.num_examples("train") == 12
    a = _crops(source, seed=5)
    assert a.shape == (12, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, _crops(source, seed=5))
    assert (a != _crops(source, seed=6)).mean() > 0.5  # another epoch: other crops
    assert (_crops(source, "test") != _crops(source, "train")).mean() > 0.5
    assert len({x.tobytes() for x in a}) == 12  # every example its own crop


def test_crops_stay_inside_the_kept_rows(photo):
    # The photo's kept rows are bright and the dropped strip black: no crop reaches the strip.
    arr = np.full((120, 160, 3), 200, np.uint8)
    arr[100:] = 0
    Image.fromarray(arr).save(photo / "bright.png")
    crops = _crops(open_source("single:bright.png?height=100&size=16&n=64", photo), seed=1)
    # Contrast and gain change a flat crop linearly only; black would pull some crop's minimum down.
    assert crops.reshape(64, -1).min(axis=1).min() > 60


def test_in_the_pretext_pipeline(photo):
    from helpers import TINY_BACKBONE
    from ssl_zoo.data.pipeline import build_pretext_dataset
    from ssl_zoo.methods import build_method

    method = build_method("rotnet", backbone=dict(TINY_BACKBONE), image_size=16, head_hidden_units=(8,))
    source = open_source("single:photo.png?size=20&n=8", photo)
    batch = next(iter(build_pretext_dataset(source, "train", method, batch_size=4, image_size=16, training=True)))
    assert batch["inputs"].shape == (16, 16, 16, 3) and sorted(set(batch["targets"].numpy())) == [0, 1, 2, 3]


@pytest.mark.parametrize("spec, match", [
    ("single:missing.png", "no such file"),
    ("single:photo.png?height=500", "outside the photo"),
    ("single:photo.png?width=3", "options are height, size, n and fresh"),
    ("single:photo.png?fresh=2", "fresh must be 1"),
    ("single:photo.png?size=big", "must be integers"),
    ("single:photo.png?size=4", "size must be >= 8"),
])
def test_bad_specs_are_one_sentence(photo, spec, match):
    with pytest.raises(DataError, match=match):
        open_source(spec, photo)


def test_unknown_split_is_named(photo):
    with pytest.raises(DataError, match="not 'unlabelled'"):
        open_source("single:photo.png?n=4", photo).num_examples("unlabelled")


def test_fresh_0_serves_the_same_crops_every_epoch(photo):
    source = open_source("single:photo.png?size=16&n=6&fresh=0", photo)
    assert source.stable_examples and not open_source("single:photo.png?n=6", photo).stable_examples
    np.testing.assert_array_equal(_crops(source, seed=1), _crops(source, seed=2))
    np.testing.assert_array_equal(_crops(source, seed=1), _crops(source))  # the crops inference passes see


@pytest.mark.parametrize("name, options", [("deepcluster", {"num_clusters": 2}), ("sela", {"num_clusters": 2}),
                                           ("pirl", {"tile_size": 4})])
def test_methods_that_label_each_image_refuse_fresh_crops(photo, name, options):
    from helpers import TINY_BACKBONE
    from ssl_zoo.methods import build_method

    backbone = {k: v for k, v in TINY_BACKBONE.items() if name != "pirl" or k != "image_size"}
    method = build_method(name, backbone=backbone, image_size=16, **options)
    with pytest.raises(DataError, match="serves new images every epoch.*fresh=0"):
        method.prepare(open_source("single:photo.png?size=16&n=8", photo), "train", 16)
    method.prepare(open_source("single:photo.png?size=16&n=8&fresh=0", photo), "train", 16)
