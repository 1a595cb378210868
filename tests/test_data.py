"""Data sources and the pipeline, including every kind of bad input a user folder can hold."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import write_image_folder
from ssl_zoo.data.augment import center_crop, random_crop_flip, random_resized_crop
from ssl_zoo.data.pipeline import build_dataset, check_not_empty
from ssl_zoo.data.sources import (ArraySource, DataError, ImageFolderSource, ImagelessSource, TFDSSource,
                                  open_source)


def _rgb(size=(20, 24), seed=0):
    return np.random.default_rng(seed).integers(0, 255, size + (3,), dtype=np.uint8)


@pytest.fixture
def messy_folder(tmp_path):
    root = tmp_path / "images"
    (root / "cats" / "nested").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.fromarray(_rgb()).save(root / "cats" / "good.jpg")
    Image.fromarray(_rgb(seed=1)).save(root / "cats" / "nested" / "good_nested.png")
    Image.fromarray(_rgb(seed=2)).save(root / "dogs" / "good.webp")
    Image.fromarray(_rgb(seed=3)).save(root / "dogs" / "good.bmp")
    Image.fromarray(_rgb(seed=4)[..., 0]).save(root / "dogs" / "grey.png")
    Image.fromarray(np.dstack([_rgb(seed=5), np.full((20, 24), 128, np.uint8)])).save(root / "dogs" / "rgba.png")
    Image.fromarray(np.full((20, 24), 65535, np.uint16)).save(root / "dogs" / "sixteen_bit.png")
    Image.fromarray(_rgb((10, 10), seed=6)).save(root / "dogs" / "smaller_than_crop.png")
    Image.fromarray(_rgb((4, 4), seed=7)).save(root / "dogs" / "too_small.png")
    full = (root / "cats" / "good.jpg").read_bytes()
    (root / "cats" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "cats" / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    (root / "cats" / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.txt").write_text("ignored: not an image extension")
    return root


def _collect(source, split="train", size=16):
    ds = build_dataset(source, split, batch_size=4, image_size=size, augment="center")
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_folder_converts_what_it_can_and_counts_the_rest(messy_folder, caplog):
    source = ImageFolderSource(messy_folder)
    assert source.num_examples("train") == 12  # image extensions only, recursive
    with caplog.at_level(logging.WARNING):
        images, labels = _collect(source)
    # good x4, grey, rgba, 16-bit, smaller-than-crop (upscaled) = 8 usable
    assert images.shape == (8, 16, 16, 3)
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 255
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 1, 1, 1, 1]  # class subfolders (nested counts for its top folder)
    counts = source.stats.counts()
    assert sum(counts.values()) == 4
    assert counts["not an image"] == 2  # text with a .jpg name, empty file
    assert counts["smaller than 8 px"] == 1
    assert sum(v for k, v in counts.items() if k.startswith("corrupt")) == 1  # truncated
    summary = source.stats.summary()
    assert "truncated.jpg" in summary and "too_small.png" in summary
    assert "truncated.jpg" in caplog.text
    assert source.stats.converted["16-bit"] == 1 and source.stats.converted["alpha"] == 1


def test_cached_folder_gives_the_same_stream_and_decodes_each_file_once(messy_folder):
    """`cache=True` is a speed setting only: the same shuffled, augmented batches in every epoch
    (bad files dropped at the same places), with each file decoded once instead of every epoch."""
    plain, cached = ImageFolderSource(messy_folder), ImageFolderSource(messy_folder, cache=True)

    def epoch(source, e):
        ds = build_dataset(source, "train", batch_size=2, image_size=16, augment="crop_flip",
                           training=True, seed=5, epoch=e)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    for e in (0, 1):
        a, b = epoch(plain, e), epoch(cached, e)
        assert len(a) == len(b) == 4
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    # Each bad file was met twice uncached (two epochs), once by the cache: counted once either way.
    assert plain.stats.total == cached.stats.total == 4
    assert cached.stats.counts() == plain.stats.counts()


def test_imageless_source_counts_like_its_source_and_decodes_nothing(messy_folder):
    source = ImageFolderSource(messy_folder)
    imageless = ImagelessSource(source)
    assert imageless.num_examples("train") == source.num_examples("train") == 12
    examples = list(imageless.examples("train", shuffle_seed=1).as_numpy_iterator())
    assert len(examples) == 12 and all(ex["image"].shape == (1, 1, 3) and ex["label"] == -1 for ex in examples)
    assert source.stats.total == 0  # no file was opened


def test_sixteen_bit_white_stays_white_and_alpha_goes_on_white(tmp_path):
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(tmp_path / "a.png")
    rgba = np.zeros((16, 16, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba).save(tmp_path / "b.png")
    images, _ = _collect(ImageFolderSource(tmp_path))
    np.testing.assert_allclose(images, 255.0, atol=0.5)


def test_empty_after_skipping_is_a_clear_error_before_training(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    (tmp_path / "worse.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = ImageFolderSource(tmp_path)
    ds = build_dataset(source, "train", batch_size=2, image_size=8, training=True)
    with pytest.raises(DataError, match="no usable batch.*skipped 2"):
        check_not_empty(ds, source, "train")


def test_folder_without_images_and_missing_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        ImageFolderSource(tmp_path).num_examples("train")
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")


def test_folder_split_subfolder_is_used(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_rgb(seed=i)).save(tmp_path / split / "a" / f"{i}.png")
    source = ImageFolderSource(tmp_path)
    assert source.num_examples("train") == 3 and source.num_examples("val") == 2


def test_array_source_conversions_and_errors():
    grey = np.zeros((4, 8, 8), np.uint8)
    images, _ = _collect(ArraySource(grey), size=8)
    assert images.shape == (4, 8, 8, 3)
    floats = np.ones((2, 8, 8, 3), np.float32)
    images, _ = _collect(ArraySource(floats), size=8)
    np.testing.assert_allclose(images, 255.0)
    with pytest.raises(DataError, match="must be in \\[0, 1\\]"):
        ArraySource(np.full((1, 8, 8, 3), 2.0))
    with_nan = np.full((3, 8, 8, 3), 0.5, np.float32)
    with_nan[1, 2, 3, 0] = np.nan
    with_nan[2, 0, 0, 1] = np.inf
    with pytest.raises(DataError, match="2 NaN or infinite values \\(first in image 1\\)"):
        ArraySource(with_nan)  # not cast to black pixels that would train at chance
    with pytest.raises(DataError, match="labels"):
        ArraySource(grey, labels=np.zeros(3))
    with pytest.raises(DataError, match="\\(N,H,W"):
        ArraySource(np.zeros((8, 8), np.uint8))


def test_missing_tfds_names_the_directory_and_how_to_prepare(tmp_path):
    with pytest.raises(DataError) as err:
        TFDSSource("cifar10", tmp_path)
    assert str(tmp_path) in str(err.value) and "tfds build cifar10" in str(err.value)


def test_url_data_dirs_reach_tfds_intact():
    # gs:// must not become gs:/ (pathlib would). TF's in-memory filesystem stands in for Cloud Storage.
    tf.io.gfile.makedirs("ram://zoo_data/tensorflow_datasets")
    with pytest.raises(DataError) as err:
        TFDSSource("cifar10", "ram://zoo_data/")
    # The URL arrives intact, and its tensorflow_datasets/ subfolder was found through tf.io.gfile.
    # (TFDS itself cannot read ram://, so opening fails there; gs:// it reads.)
    assert "in ram://zoo_data/tensorflow_datasets" in str(err.value)
    with pytest.raises(DataError, match="read from local disk"):
        open_source("folder:imagenette", "gs://bucket/data")


def test_data_dir_from_environment(monkeypatch, tmp_path):
    (tmp_path / "pics").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "pics" / "x.png")
    monkeypatch.setenv("SSL_ZOO_DATA_DIR", str(tmp_path))
    assert open_source("folder:pics").num_examples("train") == 1
    with pytest.raises(DataError, match="tfds:"):
        open_source("cifar10")


def test_training_pipeline_is_a_function_of_seed_and_epoch():
    source = ArraySource(np.random.default_rng(0).integers(0, 255, (32, 12, 12, 3), dtype=np.uint8))

    def first(epoch, skip=0):
        ds = build_dataset(source, "train", batch_size=4, image_size=8, augment="crop_flip",
                           training=True, seed=3, epoch=epoch, skip_batches=skip)
        return [x.numpy() for x, _ in ds]

    a, b = first(0), first(0)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(a[0], first(1)[0])
    # Resuming after 3 batches gives exactly the rest of the epoch.
    np.testing.assert_array_equal(np.stack(first(0, skip=3)), np.stack(a[3:]))


def test_augmentations_shapes_and_ranges():
    img = tf.constant(_rgb((40, 30)))
    seed = tf.constant([1, 2], tf.int64)
    for out in (center_crop(img, 16), random_crop_flip(img, 16, seed), random_resized_crop(img, 16, seed)):
        assert out.shape == (16, 16, 3) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255.5


@pytest.mark.data
def test_real_cifar10_offline(data_dir):
    source = open_source("tfds:cifar10", data_dir)
    assert source.num_examples("train") == 50_000 and source.num_classes() == 10
    images, labels = next(iter(build_dataset(source, "test", batch_size=8, image_size=32)))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8,)
    # TFDS split slices (a subset for a quick probe; ImageNet-scale evaluations use them).
    assert source.num_examples("train[:1%]") == 500
    assert sum(1 for _ in source.examples("test[:20]")) == 20
    with pytest.raises(DataError, match="no split 'trian\\[:1%\\]'.*'train', 'test'"):
        source.examples("trian[:1%]")


@pytest.mark.data
def test_real_imagenette_folder(data_dir):
    source = open_source("folder:imagenette-96px", data_dir)
    assert source.num_examples("train") == 9469 and source.num_examples("val") == 3925
    assert source.num_classes() == 10
    images, _ = next(iter(build_dataset(source, "val", batch_size=4, image_size=64)))
    assert images.shape == (4, 64, 64, 3)


@pytest.mark.data
def test_tfds_index_names_the_same_record_whatever_the_shuffle_or_slice(data_dir):
    source = TFDSSource("cifar10", data_dir)
    plain = list(source.examples("test[:40]").as_numpy_iterator())
    assert [int(e["index"]) for e in plain] == list(range(40))
    shuffled = list(source.examples("test[:40]", shuffle_seed=3).as_numpy_iterator())
    assert sorted(int(e["index"]) for e in shuffled) == list(range(40))
    for e in shuffled:
        np.testing.assert_array_equal(e["image"], plain[int(e["index"])]["image"])
    sliced = list(source.examples("test[10:20]").as_numpy_iterator())  # a slice counts from its own start
    assert [int(e["index"]) for e in sliced] == list(range(10))
    for e, p in zip(sliced, plain[10:20]):
        np.testing.assert_array_equal(e["image"], p["image"])


def test_folder_index_is_the_listing_position_under_any_shuffle(tmp_path):
    write_image_folder(tmp_path, n=10, size=8)
    source = ImageFolderSource(tmp_path / "images")
    plain = {int(e["index"]): e["image"] for e in source.examples("train").as_numpy_iterator()}
    assert sorted(plain) == list(range(10))
    for seed in (1, 2):
        for e in source.examples("train", shuffle_seed=seed).as_numpy_iterator():
            np.testing.assert_array_equal(e["image"], plain[int(e["index"])])


# ---- bad folders that must not crash, hang or exhaust memory (issue 14 item 4) ------------------
def _png(path, width, height, rows=None):
    """A greyscale PNG of `width` x `height` written chunk by chunk (never held decoded in memory):
    all-black rows, or, with `rows`, only that many of them (the header still says `height`)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_decompression_bombs_are_refused_from_their_header(tmp_path):
    """A tiny file that says it is a huge image is skipped before decoding, with a reason that says so:
    the 8x400000 strip (3.2 M pixels, but a 50000:1 strip that the pipeline would upscale ~4x) and a
    20001x20001 image (400 M pixels), both a few KB."""
    from ssl_zoo.data.decode import BOMB_ASPECT, BOMB_PIXELS, MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, SkipStats, decode_file

    root = tmp_path / "bombs"
    root.mkdir()
    strip = _png(root / "strip.png", 8, 400_000)
    square = _png(root / "square.png", 20_001, 20_001, rows=64)
    Image.fromarray(_rgb((20, 24))).save(root / "good.png")
    assert strip.stat().st_size < 10_000 and square.stat().st_size < 10_000
    assert 8 * 400_000 <= MAX_IMAGE_PIXELS < 20_001 ** 2 and MAX_ASPECT_RATIO < 400_000 / 8
    stats = SkipStats()
    assert decode_file(str(strip), 8, stats) is None and decode_file(str(square), 8, stats) is None
    assert stats.counts() == {BOMB_ASPECT: 1, BOMB_PIXELS: 1}
    source = ImageFolderSource(root)
    images, _ = _collect(source)
    assert images.shape == (1, 16, 16, 3)
    assert source.stats.counts() == {BOMB_ASPECT: 1, BOMB_PIXELS: 1}


def test_file_names_that_are_not_utf8_are_read(tmp_path):
    """A name with a Latin-1 byte (not UTF-8) is read as the bytes the file system holds; a bad file
    so named is counted and the summary prints its name with the byte escaped."""
    import os

    root = tmp_path / "latin1"
    (root / "cats").mkdir(parents=True)
    Image.fromarray(_rgb()).save(root / "cats" / "good.png")
    Image.fromarray(_rgb(seed=1)).save(root / "cats" / "tmp.png")
    os.rename(os.fsencode(root / "cats" / "tmp.png"), os.fsencode(root / "cats") + b"/caf\xe9.png")
    with open(os.fsencode(root / "cats") + b"/na\xefve.jpg", "wb") as f:
        f.write(b"not a JPEG")
    source = ImageFolderSource(root)
    assert source.num_examples("train") == 3
    for cache in (False, True):
        source = ImageFolderSource(root, cache=cache)
        images, labels = _collect(source)
        assert images.shape == (2, 16, 16, 3) and labels.tolist() == [0, 0]
        assert source.stats.counts() == {"not an image": 1}
        assert "na\\xefve.jpg" in source.stats.summary()


def test_directory_symlink_loops_are_listed_once(tmp_path):
    """Links back up the tree are not followed again (each real folder is listed once): the listing
    is the real files, with their own labels, and it ends."""
    root = tmp_path / "loops"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.fromarray(_rgb()).save(root / "cats" / "a.png")
    Image.fromarray(_rgb(seed=1)).save(root / "dogs" / "b.png")
    (root / "cats" / "self").symlink_to(root / "cats")  # a loop onto itself
    (root / "dogs" / "up").symlink_to(root)  # a loop through the root
    (root / "dogs" / "cats_again").symlink_to(root / "cats")  # two links into each other's loops
    source = ImageFolderSource(root)
    paths, labels, classes = source._list("train")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["a.png", "b.png"] and labels == [0, 1]
    assert classes == ["cats", "dogs"]
    assert source.stats.counts() == {"directory already listed (symlink loop or second link)": 3}


def test_palette_and_cmyk_files_decode_to_the_rgb_they_show(tmp_path):
    """A palette PNG (with and without a transparent index) and a CMYK JPEG are converted, counted
    by mode, and give the colours Pillow shows for them (transparent pixels on white)."""
    from ssl_zoo.data.decode import SkipStats, decode_file

    rgb = _rgb((16, 16), seed=9)
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(tmp_path / "palette.png")
    with_alpha = palette.copy()
    with_alpha.info["transparency"] = 0
    with_alpha.save(tmp_path / "palette_alpha.png", transparency=0)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    stats = SkipStats()
    got = {name: decode_file(str(tmp_path / name), 8, stats) for name in ("palette.png", "palette_alpha.png", "cmyk.jpg")}
    assert stats.total == 0
    np.testing.assert_array_equal(got["palette.png"], np.asarray(palette.convert("RGB")))
    transparent = np.asarray(Image.open(tmp_path / "palette_alpha.png")) == 0
    assert transparent.any() and (got["palette_alpha.png"][transparent] == 255).all()  # on white
    assert got["cmyk.jpg"].shape == (16, 16, 3) and np.abs(got["cmyk.jpg"].astype(int) - rgb).mean() < 12
    assert stats.converted["P"] == 1 and stats.converted["alpha"] == 1 and stats.converted["CMYK"] == 1


def test_torchvision_crop_box_draws_as_torchvision_and_falls_back_to_the_centre():
    """Against torchvision's RandomResizedCrop.get_params written out in NumPy: the same area
    distribution (TF's own sampler draws smaller boxes), boxes inside the image, and the centred
    fallback at the nearest allowed ratio when no candidate fits."""
    import math

    import tensorflow as tf

    from ssl_zoo.data.augment import random_resized_crop, torchvision_crop_box

    rng = np.random.default_rng(0)

    def reference(side=32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        for _ in range(10):
            area = side * side * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= side and 0 < h <= side:
                return h * w / side**2
        return 1.0

    box = tf.function(lambda seed: torchvision_crop_box(tf.constant([32, 32, 3]), seed))
    ours = []
    for i in range(1500):
        begin, size = (t.numpy() for t in box(tf.constant([1, i], tf.int64)))
        assert (begin >= 0).all() and (begin[:2] + size[:2] <= 32).all() and size[2] == -1
        ours.append(size[0] * size[1] / 32**2)
    theirs = [reference() for _ in range(1500)]
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.03 and abs(np.median(ours) - np.median(theirs)) < 0.04
    begin, size = torchvision_crop_box(tf.constant([32, 32, 3]), tf.constant([0, 0], tf.int64), scale=(1.0, 1.0),
                                       ratio=(2.0, 3.0))  # a square cannot hold a 2:1 box of its whole area
    assert list(size.numpy()[:2]) == [16, 32] and list(begin.numpy()[:2]) == [8, 0]
    crop = random_resized_crop(tf.zeros((40, 30, 3), tf.uint8), 16, tf.constant([2, 3], tf.int64), sampler="torchvision")
    assert crop.shape == (16, 16, 3)
