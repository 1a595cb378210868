"""Data sources. Each yields unbatched `{"image": uint8 HxWx3, "label": int64, "index": int64}` examples.

`index` is the example's identity within its split: 0 ... num_examples - 1, the same for an image
whatever the shuffle seed, the epoch or the shard that reads it (a file's position in the sorted
listing, an array's row, a TFDS record's position in the split or slice). Methods that keep
something per image (pseudo-labels, a memory bank) key it by this index.

Three kinds, one pipeline (`ssl_zoo.data.pipeline`): a TFDS dataset by name, a folder of images,
in-memory arrays. A source is named by a spec string so that recipes and the command line can
say where data comes from without code: `tfds:cifar10`, `folder:imagenette-96px` (relative to
the data directory, or an absolute path), or a `ArraySource` built in Python.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import urllib.parse
from pathlib import Path

import numpy as np
import tensorflow as tf

from ssl_zoo.data.decode import IMAGE_EXTENSIONS, SkipStats, decode_file, display_path
from ssl_zoo.errors import SslZooError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "SSL_ZOO_DATA_DIR"
# A folder with a subfolder of one of these names is split into folders (ImageFolderSource).
SPLIT_FOLDER_NAMES = ("train", "val", "validation", "test")
# The split accuracy is reported on when none is named: the first of these that exists.
HELD_OUT_SPLITS = ("test", "val", "validation")


class DataError(SslZooError, ValueError):
    """Raised for data that cannot be used, with a message that says what and where."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | str | None:
    """The `--data-dir` flag if given, else `$SSL_ZOO_DATA_DIR`, else None (library defaults).

    A URL (`gs://bucket/data`, where TPU and cloud jobs keep TFDS data) stays a string: `Path`
    would turn `gs://` into `gs:/`."""
    value = data_dir if data_dir else os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    return str(value).rstrip("/") if "://" in str(value) else Path(value).expanduser()


class Source:
    """Interface: `examples(split)` gives the unbatched dataset; `num_examples(split)` its size."""

    name: str
    stats: SkipStats

    def examples(self, split: str, shuffle_seed: int | None = None) -> tf.data.Dataset:
        raise NotImplementedError

    def num_examples(self, split: str) -> int | None:
        raise NotImplementedError

    def num_classes(self) -> int | None:
        return None

    def held_out_split(self) -> str:
        """The split accuracy is reported on when none is named (`finetune`, `evaluate_model`)."""
        return "test"

    # Whether an example's index names the same image in every epoch. Methods that keep something
    # per training image (cluster labels, a memory bank) need it; a stream of fresh crops has not.
    stable_examples: bool = True


def require_stable_examples(source, split: str, who: str, why: str) -> None:
    """Refuses a source whose index names a new image every epoch (a stream of fresh crops) for a
    method that keeps something per training image: its labels would belong to images never seen again."""
    if not getattr(source, "stable_examples", True):
        raise DataError(f"{who} {why}, but {source.name}/{split} serves new images every epoch; "
                        "give the source a fixed set (for one photo: fresh=0)")


class TFDSSource(Source):
    """A prepared TFDS dataset. Never downloads: a missing dataset is an error that says where
    it looked and how to prepare it."""

    def __init__(self, name: str, data_dir: str | os.PathLike | None = None):
        import tensorflow_datasets as tfds

        self.name = name
        self.stats = SkipStats()
        root = resolve_data_dir(data_dir)
        # Accept either the TFDS data dir itself or a data root holding `tensorflow_datasets/`.
        if isinstance(root, str):  # a URL: tf.io.gfile speaks gs:// (and every other TF filesystem)
            if tf.io.gfile.isdir(f"{root}/tensorflow_datasets"):
                root = f"{root}/tensorflow_datasets"
        elif root is not None and (root / "tensorflow_datasets").is_dir():
            root = root / "tensorflow_datasets"
        self.data_dir = str(root) if root is not None else None
        try:
            self._builder = tfds.builder(name, data_dir=self.data_dir)
        except Exception as e:  # unknown name, unreadable dir
            raise DataError(f"TFDS dataset {name!r} could not be opened in {self.data_dir}: {e}") from e
        if not self._builder.is_prepared():
            searched = self.data_dir or "the TFDS default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {searched}. Prepare it once on a machine "
                f"with internet: `tfds build {name} --data_dir DIR` (or "
                f"`tfds.load('{name}', data_dir=DIR)`), then pass --data-dir DIR or set "
                f"${DATA_DIR_ENV}=DIR. ssl_zoo never downloads during training."
            )

    def examples(self, split, shuffle_seed=None):
        import tensorflow_datasets as tfds

        self.num_examples(split)  # an unknown split (or a bad slice) is a DataError naming the splits
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False, add_tfds_id=True)
        ds = self._builder.as_dataset(
            split=split, shuffle_files=shuffle_seed is not None, read_config=read_config
        )
        index_of = self._record_index(split)
        image_key = "image"
        label_key = "label" if "label" in self._builder.info.features else None

        def to_example(ex):
            image = ex[image_key]
            if image.shape.rank == 3 and image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            label = tf.cast(ex[label_key], tf.int64) if label_key else tf.constant(-1, tf.int64)
            return {"image": image, "label": label, "index": index_of(ex["tfds_id"])}

        return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)

    def _record_index(self, split):
        """tfds_id ("<shard file>__<record>") -> the record's position in `split` (a slice counts
        from its own first record), from the split's file instructions: shuffled shards still give
        every image the same index."""
        offsets, keys = [], []
        position = 0
        for fi in self._builder.info.splits[split].file_instructions:
            keys.append(os.path.basename(fi.filename))
            offsets.append(position - fi.skip)
            position += fi.take
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(offsets, tf.int64)), default_value=-1)

        def index_of(tfds_id):
            parts = tf.strings.split(tfds_id, "__")
            return table.lookup(parts[0]) + tf.strings.to_number(parts[-1], tf.int64)

        return index_of

    def num_examples(self, split):
        # TFDS split slicing works everywhere a split is named: "train[:10%]", "train[5000:]".
        try:
            return self._builder.info.splits[split].num_examples
        except (KeyError, ValueError) as e:
            raise DataError(f"{self.name} has no split {split!r} ({e}); it has {list(self._builder.info.splits)}"
                            f" (slices such as 'train[:10%]' work too)") from e

    def num_classes(self):
        features = self._builder.info.features
        return getattr(features["label"], "num_classes", None) if "label" in features else None

    def held_out_split(self):
        """The "test" split, else "validation" for datasets that have none (ImageNet)."""
        splits = list(self._builder.info.splits)
        return next((s for s in HELD_OUT_SPLITS if s in splits), "test")


class ImageFolderSource(Source):
    """A folder of images, searched recursively (jpg, jpeg, png, webp, bmp).

    Two layouts:
    - **split folders** (Imagenette: `train/`, `val/`): the folder has a subfolder named `train`,
      `val`, `validation` or `test`. Then every subfolder is a split, and a split is read from its
      subfolder only: a split without one is a `DataError` naming the splits there are.
    - **flat**: no such subfolder (`cats/`, `dogs/`, or just files). The whole folder is the one
      split, served for every split name (so `train` and `test` are the same images: fine for
      pretext training, not for a held-out accuracy).

    Labels: the class folders (the immediate subfolders of each split folder, or of a flat
    folder) of *all* splits together, sorted, are numbered once for the whole folder, so that a
    class has the same label in every split even when a split lacks some class. Files directly in
    a split (or flat) folder get label -1. Labels are used for evaluation only. Files are listed
    once (cheap) and decoded lazily in the pipeline, so a folder of any size streams.

    With `cache=True` (for folders that fit in memory: the user asks for it in the recipe's
    `[data] cache`) each split is decoded once, on first use, and kept as one flat uint8 buffer;
    every later epoch reads from memory instead of decoding every file again. Decoding is most of
    the input pipeline's CPU cost for small images (Pillow, one file at a time), and on a small CPU
    that cost is taken from the model. The stream is the same with or without the cache: the same
    shuffle runs over the same file indices, and files that failed to decode are dropped after it.
    """

    def __init__(self, path: str | os.PathLike, min_side: int = 8, cache: bool = False):
        self.root = Path(path).expanduser()
        self.name = self.root.name
        self.min_side = min_side
        self.cache = cache
        self.stats = SkipStats()
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a directory")
        self._layout: tuple[dict[str, Path] | None, list[str]] | None = None
        self._listing: dict[Path, tuple[list[str], list[int], list[str]]] = {}
        self._decoded: dict[Path, dict[str, tf.Tensor]] = {}

    @staticmethod
    def _subfolders(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _structure(self) -> tuple[dict[str, Path] | None, list[str]]:
        """({split name: folder}, or None for a flat folder; the class names of all splits, sorted),
        computed once."""
        if self._layout is None:
            subfolders = self._subfolders(self.root)
            if any(p.name in SPLIT_FOLDER_NAMES for p in subfolders):
                splits = {p.name: p for p in subfolders}
                classes = sorted({c.name for folder in splits.values() for c in self._subfolders(folder)})
            else:
                splits, classes = None, [p.name for p in subfolders]
            self._layout = (splits, classes)
        return self._layout

    def splits(self) -> list[str] | None:
        """The split folders' names, or None for a flat folder (one split under every name)."""
        splits = self._structure()[0]
        return None if splits is None else sorted(splits)

    def _split_root(self, split: str) -> Path:
        splits = self._structure()[0]
        if splits is None:
            return self.root
        if split not in splits:
            raise DataError(f"image folder {self.root} has no split folder {split!r}: its splits are "
                            f"{sorted(splits)} (name one of them, e.g. --test-split "
                            f"{next((s for s in HELD_OUT_SPLITS if s in splits), sorted(splits)[0])})")
        return splits[split]

    def held_out_split(self):
        """The "test" split folder, else "val" or "validation", whichever exists (Imagenette: "val")."""
        splits = self._structure()[0] or {}
        return next((s for s in HELD_OUT_SPLITS if s in splits), "test")

    def _list(self, split: str):
        root = self._split_root(split)
        if root in self._listing:
            return self._listing[root]
        class_dirs = self._structure()[1]
        class_index = {c: i for i, c in enumerate(class_dirs)}
        paths, labels, ignored = [], [], []
        # Directory symlinks are followed, each real folder once: a link back up the tree (a loop)
        # or a second link to a folder already listed is skipped, so no file is listed twice.
        visited = {os.path.realpath(root)}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            kept = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in visited:
                    self.stats.skip("directory already listed (symlink loop or second link)", os.path.join(dirpath, d))
                    continue
                visited.add(real)
                kept.append(d)
            dirnames[:] = kept
            rel = Path(dirpath).relative_to(root)
            label = class_index.get(rel.parts[0], -1) if rel.parts else -1
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue
                full = os.path.join(dirpath, fname)
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(full)
                    labels.append(label)
                else:
                    ignored.append(full)
        if ignored:
            log.warning(
                "%s: ignoring %d files without an image extension %s (e.g. %s)",
                root, len(ignored), IMAGE_EXTENSIONS, ", ".join(display_path(p) for p in ignored[:3]),
            )
        if not paths:
            raise DataError(f"no image files {IMAGE_EXTENSIONS} found under {root}")
        if root == self.root and class_dirs:
            log.info("%s has no split folders (%s): every split is the whole folder", root,
                     "/".join(SPLIT_FOLDER_NAMES))
        self._listing[root] = (paths, labels, class_dirs)
        return self._listing[root]

    def examples(self, split, shuffle_seed=None):
        paths, labels, _ = self._list(split)
        indices = np.arange(len(paths), dtype=np.int64)
        ds = tf.data.Dataset.from_tensor_slices((indices, _path_bytes(paths), np.asarray(labels, np.int64)))
        if shuffle_seed is not None:
            # Shuffling the file list is cheap and gives a full shuffle before any decoding. The
            # permutation depends only on the seed and the count, so the cache's index list is
            # shuffled exactly as the path list is.
            ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=False)
        if self.cache:
            memory = self._decoded_split(split)

            def read(index, path, label):
                del path
                begin, end = memory["offsets"][index], memory["offsets"][index + 1]
                image = tf.reshape(memory["flat"][begin:end], memory["shapes"][index])
                return {"image": image, "label": label, "index": index, "ok": memory["ok"][index]}

            ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            decode = self._decode_fn()
            ds = ds.map(lambda index, path, label: {**decode(path), "label": label, "index": index},
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.filter(lambda ex: ex["ok"])
        return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"], "index": ex["index"]})

    def _decode_fn(self):
        """path -> {"image": uint8 HxWx3, "ok": bool}; a file that fails is counted in `stats` and
        comes back empty with ok=False, for the caller to drop."""
        stats, min_side = self.stats, self.min_side

        def decode(path):
            arr = decode_file(path, min_side, stats)  # bytes: the file name as the file system has it
            if arr is None:
                return np.zeros((0, 0, 3), np.uint8), False
            return arr, True

        def decode_tf(path):
            image, ok = tf.numpy_function(decode, [path], (tf.uint8, tf.bool), stateful=False)
            return {"image": tf.ensure_shape(image, [None, None, 3]), "ok": tf.ensure_shape(ok, [])}

        return decode_tf

    def _decoded_split(self, split: str) -> dict[str, tf.Tensor]:
        """The whole split decoded once, in listing order, as one flat uint8 buffer with each
        image's offset and shape and whether it decoded (a failed file keeps its index, empty)."""
        key = self._split_root(split)  # a flat folder is decoded once for every split name
        if key not in self._decoded:
            paths = self._list(split)[0]
            t0 = time.perf_counter()
            decoded = tf.data.Dataset.from_tensor_slices(_path_bytes(paths)).map(
                self._decode_fn(), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            images, shapes, ok = [], [], []
            for ex in decoded.as_numpy_iterator():
                images.append(ex["image"].reshape(-1))
                shapes.append(ex["image"].shape)
                ok.append(ex["ok"])
            sizes = [len(x) for x in images]
            flat = np.concatenate(images)
            self._decoded[key] = {
                "flat": tf.constant(flat),
                "offsets": tf.constant(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)),
                "shapes": tf.constant(np.array(shapes, np.int64)),
                "ok": tf.constant(np.array(ok, bool)),
            }
            log.info("%s/%s: decoded %d of %d files once into memory (%.0f MiB, %.1f s)", self.name, split,
                     sum(ok), len(paths), flat.nbytes / 2**20, time.perf_counter() - t0)
        return self._decoded[key]

    def num_examples(self, split):
        return len(self._list(split)[0])

    def num_classes(self):
        return len(self._structure()[1]) or None

    def class_names(self) -> list[str]:
        """Label i's class folder name, the same for every split."""
        return list(self._structure()[1])


def _path_bytes(paths: list[str]) -> np.ndarray:
    """File paths as the bytes the file system holds (os.fsencode): a name that is not UTF-8 (listed
    by os.walk with surrogate escapes) cannot become a tf.string from a str, but is read as bytes."""
    return np.asarray([os.fsencode(p) for p in paths], dtype=object)


@dataclasses.dataclass
class ArraySource(Source):
    """In-memory images: uint8 (N,H,W,3|1|4) or (N,H,W), or float in [0,1]; optional labels."""

    images: np.ndarray
    labels: np.ndarray | None = None
    name: str = "arrays"

    def __post_init__(self):
        self.stats = SkipStats()
        images = np.asarray(self.images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise DataError(
                f"array images must be (N,H,W), (N,H,W,1), (N,H,W,3) or (N,H,W,4); got {images.shape}"
            )
        if len(images) == 0:
            raise DataError("array source is empty")
        if np.issubdtype(images.dtype, np.floating):
            bad = ~np.isfinite(images)
            if bad.any():  # NaN would compare False below and be cast to black pixels
                first = np.argwhere(bad.reshape(len(images), -1).any(axis=1))[0, 0]
                raise DataError(f"float array images hold {int(bad.sum())} NaN or infinite values "
                                f"(first in image {first}); clean or drop those images")
            if images.min() < 0 or images.max() > 1:
                raise DataError("float array images must be in [0, 1]; pass uint8 for [0, 255]")
            images = np.round(images * 255).astype(np.uint8)
        elif images.dtype == np.uint16:
            images = (images.astype(np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
        elif images.dtype != np.uint8:
            raise DataError(f"array images must be uint8, uint16 or float in [0,1]; got {images.dtype}")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        elif images.shape[-1] == 4:
            images = images[..., :3]
        self.images = images
        if self.labels is None:
            self.labels = np.full(len(images), -1, np.int64)
        self.labels = np.asarray(self.labels, np.int64)
        if len(self.labels) != len(images):
            raise DataError(f"{len(images)} images but {len(self.labels)} labels")

    def examples(self, split, shuffle_seed=None):
        ds = tf.data.Dataset.from_tensor_slices(
            {"image": self.images, "label": self.labels, "index": np.arange(len(self.images), dtype=np.int64)})
        if shuffle_seed is not None:
            ds = ds.shuffle(len(self.images), seed=shuffle_seed, reshuffle_each_iteration=False)
        return ds

    def num_examples(self, split):
        return len(self.images)

    def num_classes(self):
        valid = self.labels[self.labels >= 0]
        return int(valid.max()) + 1 if len(valid) else None


class ImagelessSource(Source):
    """Stands in for `source` when a method's examples do not depend on the images it is handed
    (Exemplar CNN draws every example from its seed bank by the example's seed alone): as many
    examples as `source` has, each a 1x1 black image with label -1. The pipeline's counting,
    seeding, sharding and resumption are unchanged, and no file is decoded for nothing."""

    def __init__(self, source: Source):
        self.source = source
        self.name = source.name
        self.stats = source.stats

    def examples(self, split, shuffle_seed=None):
        # No shuffle: every element is the same, and the per-example seeds come from positions.
        del shuffle_seed
        n = self.num_examples(split)
        if not n:
            raise DataError(f"{self.source.name}/{split} has no examples to count")
        # A zip of constant streams and a counter: no per-element function call on the input path.
        return tf.data.Dataset.zip({
            "image": tf.data.Dataset.from_tensors(tf.zeros([1, 1, 3], tf.uint8)).repeat(n),
            "label": tf.data.Dataset.from_tensors(tf.constant(-1, tf.int64)).repeat(n),
            "index": tf.data.Dataset.range(n),
        })

    def num_examples(self, split):
        return self.source.num_examples(split)

    def num_classes(self):
        return self.source.num_classes()

    def held_out_split(self):
        return self.source.held_out_split()


def open_source(spec: str, data_dir: str | os.PathLike | None = None, *, cache: bool = False) -> Source:
    """Opens a source from a spec: `tfds:NAME`, `folder:PATH` or `single:PATH?height=&size=&n=` (one
    photo as a stream of augmented crops, `SingleImageSource` below); PATH relative to the data dir.

    `cache` (a recipe's `[data] cache`) keeps an image folder decoded in memory after its first
    pass; a TFDS dataset is read from its prepared records either way."""
    kind, _, value = spec.partition(":")
    if not value:
        raise DataError(f"data source {spec!r} must look like 'tfds:cifar10' or 'folder:PATH'")
    if kind == "tfds":
        if cache:
            log.info("%s: cache applies to image folders; TFDS datasets are read from their records", spec)
        return TFDSSource(value, data_dir)
    if kind == "folder":
        path = Path(value).expanduser()
        root = resolve_data_dir(data_dir)
        if isinstance(root, str) and not path.is_absolute():
            raise DataError(f"image folders are read from local disk; {spec!r} cannot be under the data dir "
                            f"{root} (copy the folder locally, or prepare it as a TFDS dataset there)")
        if not path.is_absolute() and root is not None:
            path = root / path
        return ImageFolderSource(path, cache=cache)
    if kind == "single":
        root = resolve_data_dir(data_dir)
        if isinstance(root, str):
            raise DataError(f"a single-image source reads a local file; {spec!r} cannot be under the data dir {root}")
        return open_single_image(value, root)
    raise DataError(f"unknown data source kind {kind!r} in {spec!r}; use 'tfds:', 'folder:' or 'single:'")


# ---- one photo as a training set ------------------------------------------------------------
# One photo as a whole training set (Asano, Rupprecht & Vedaldi, ICLR 2020, "A critical analysis of
# self-supervision, or what we can learn from a single image").
#
# `SingleImageSource` serves `n` examples per epoch, each a fresh augmented crop of the one photo,
# with the paper's augmentation: a random crop of 1e-4 to all of the photo's area (area drawn
# uniformly, aspect ratio log-uniform in 3/4 .. 4/3), rotation by up to ±35°, a horizontal flip, and
# linear colour and intensity changes (contrast, brightness, per-channel gain). Crops are pure
# functions of (epoch seed, example index): every epoch is new, a resumed run sees the same stream,
# and two runs with the same seed see the same crops. A method's own augmentation then runs on top,
# as on any source.
#
# Spec: `single:PATH` (relative to the data dir), with options after `?`:
# `height=H` keeps the photo's first H rows (the camera-trap photos' information strip),
# `size=S` the side of the crops served (default 64), `n=N` examples per epoch (default 50,000,
# CIFAR-10's epoch, so schedules compare), `fresh=0` the same n crops in every epoch (a fixed
# training set of crops, as Asano et al. built theirs; what methods that label each training image,
# DeepCluster or PIRL, need) instead of new ones (default). Every split serves the same kind of
# crops; the held-out split (`test`) draws from its own seeds.

MIN_AREA = 1e-4
MAX_AREA = 1.0
ASPECT = (3.0 / 4.0, 4.0 / 3.0)
MAX_ROTATION_DEGREES = 35.0
CONTRAST = (0.6, 1.4)
BRIGHTNESS = 0.2  # +- this fraction of 255
CHANNEL_GAIN = (0.9, 1.1)
_SPLIT_SALT = {"train": 0, "test": 1, "val": 1, "validation": 1}


def single_image_crop(photo, size: int, seed) -> tf.Tensor:
    """One augmented crop (uint8 [size, size, 3]) of `photo` (uint8 [H, W, 3]) for stateless `seed`."""
    s = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8))
    h = tf.cast(tf.shape(photo)[0], tf.float32)
    w = tf.cast(tf.shape(photo)[1], tf.float32)
    area = tf.random.stateless_uniform([], s[0], MIN_AREA, MAX_AREA) * h * w
    log_ratio = tf.random.stateless_uniform([], s[1], math.log(ASPECT[0]), math.log(ASPECT[1]))
    ratio = tf.exp(log_ratio)
    crop_w = tf.minimum(tf.sqrt(area * ratio), w)
    crop_h = tf.minimum(tf.sqrt(area / ratio), h)
    angle = tf.random.stateless_uniform([], s[2], -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES) * (math.pi / 180.0)
    # The axis-aligned box that holds the crop at any angle up to this one, so that rotating it
    # and cutting the centre leaves no empty corner (clipped to the photo near its edges).
    grow = tf.abs(tf.cos(angle)) + tf.abs(tf.sin(angle))
    box_w, box_h = tf.minimum(crop_w * grow, w), tf.minimum(crop_h * grow, h)
    cy = box_h / 2 + tf.random.stateless_uniform([], s[3], 0.0, 1.0) * (h - box_h)
    cx = box_w / 2 + tf.random.stateless_uniform([], s[4], 0.0, 1.0) * (w - box_w)
    big = int(math.ceil(size * math.sqrt(2.0)))
    box = tf.stack([(cy - box_h / 2) / h, (cx - box_w / 2) / w, (cy + box_h / 2) / h, (cx + box_w / 2) / w])
    # crop_and_resize reads uint8 itself: casting the whole photo to float per crop halved the crops/s.
    patch = tf.image.crop_and_resize(photo[None], box[None], [0], [big, big])  # float32 [1, big, big, 3]
    # Rotate about the patch centre (the projective transform maps output to input coordinates).
    cos, sin = tf.cos(angle), tf.sin(angle)
    c = (big - 1) / 2.0
    transform = tf.stack([cos, -sin, c - c * cos + c * sin, sin, cos, c - c * sin - c * cos, 0.0, 0.0])
    patch = tf.raw_ops.ImageProjectiveTransformV3(
        images=patch, transforms=transform[None], output_shape=tf.constant([big, big]), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    # The crop's own extent inside the (grown) box, resized to the output size.
    inner_h, inner_w = crop_h / box_h, crop_w / box_w
    inner = tf.stack([0.5 - inner_h / 2, 0.5 - inner_w / 2, 0.5 + inner_h / 2, 0.5 + inner_w / 2])
    crop = tf.image.crop_and_resize(patch, inner[None], [0], [size, size])[0]
    crop = tf.image.stateless_random_flip_left_right(crop, seed=s[5])
    # Linear colour and intensity changes: contrast about the mean, brightness, per-channel gain.
    contrast = tf.random.stateless_uniform([], s[6], *CONTRAST)
    mean = tf.reduce_mean(crop, axis=(0, 1), keepdims=True)
    rng = tf.random.stateless_uniform([4], s[7], 0.0, 1.0)
    brightness = (2.0 * rng[0] - 1.0) * BRIGHTNESS * 255.0
    gains = CHANNEL_GAIN[0] + rng[1:] * (CHANNEL_GAIN[1] - CHANNEL_GAIN[0])
    crop = ((crop - mean) * contrast + mean + brightness) * gains
    return tf.ensure_shape(tf.cast(tf.clip_by_value(tf.round(crop), 0.0, 255.0), tf.uint8), [size, size, 3])


class SingleImageSource(Source):
    """`n` augmented crops of one photo per epoch (module docstring). Labels are -1."""

    def __init__(self, path: str | Path, *, size: int = 64, n: int = 50_000, height: int | None = None,
                 fresh: int = 1):
        self.path = Path(path).expanduser()
        self.name = f"single:{self.path.name}"
        self.stats = SkipStats()
        if size < 8 or n < 1:
            raise DataError(f"{self.name}: size must be >= 8 and n >= 1, got size={size}, n={n}")
        if fresh not in (0, 1):
            raise DataError(f"{self.name}: fresh must be 1 (new crops every epoch) or 0 (the same crops), got {fresh}")
        photo = decode_file(str(self.path), min_side=size, stats=self.stats) if self.path.is_file() else None
        if photo is None:
            why = self.stats.summary() if self.path.is_file() else "no such file"
            raise DataError(f"single-image source {self.path}: {why}")
        if height is not None:
            if not 0 < height <= photo.shape[0]:
                raise DataError(f"{self.name}: height={height} is outside the photo's {photo.shape[0]} rows")
            photo = photo[:height]
        self.photo = np.ascontiguousarray(photo)
        self.size, self.n = size, n
        self.stable_examples = not fresh

    def examples(self, split, shuffle_seed=None):
        salt = self._salt(split)
        photo = tf.constant(self.photo)
        # An epoch's seed (the pipeline passes its epoch seed as shuffle_seed when training) makes
        # every epoch's crops new; without one (evaluation) the crops are fixed.
        # With fresh=0 every epoch serves the evaluation crops.
        epoch = tf.constant(shuffle_seed if shuffle_seed is not None and not self.stable_examples else -1, tf.int64)

        def example(i):
            seed = tf.stack([epoch * 4 + salt, i])
            return {"image": single_image_crop(photo, self.size, seed), "label": tf.constant(-1, tf.int64), "index": i}

        return tf.data.Dataset.range(self.n).map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def num_examples(self, split):
        self._salt(split)
        return self.n

    def _salt(self, split: str) -> int:
        if split not in _SPLIT_SALT:
            raise DataError(f"{self.name} has splits {sorted(_SPLIT_SALT)}, not {split!r}")
        return _SPLIT_SALT[split]


def open_single_image(value: str, root) -> SingleImageSource:
    """`single:PATH?height=H&size=S&n=N&fresh=F` -> the source (PATH relative to the data dir `root`)."""
    path_text, _, query = value.partition("?")
    options = urllib.parse.parse_qs(query, strict_parsing=bool(query))
    unknown = sorted(set(options) - {"height", "size", "n", "fresh"})
    if unknown:
        raise DataError(f"single-image source options are height, size, n and fresh; got {unknown}")
    try:
        kwargs = {k: int(v[-1]) for k, v in options.items()}
    except ValueError as e:
        raise DataError(f"single-image source options must be integers: {query!r}") from e
    path = Path(path_text).expanduser()
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    return SingleImageSource(path, **kwargs)
