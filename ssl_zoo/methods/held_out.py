"""Held-out passes: the one a method's `diagnose` makes over a trained run (the run's pretext model,
read in Keras safe mode since a run folder may come from elsewhere, applied to the method's own
evaluation examples of a split), and the one the pictures make (a released backbone's features of
held-out images: retrieval, the clustering methods' pretext tasks)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from ssl_zoo.errors import ConfigError

# A picture of clusters shows about this many held-out images per cluster.
IMAGES_PER_PICTURE_CLUSTER = 10


def load_pretext_model(run_dir) -> keras.Model:
    """The run's `pretext_model.keras`, in Keras safe mode: no Lambda or pickled code in the file
    is executed."""
    return keras.saving.load_model(Path(run_dir) / "pretext_model.keras", compile=False, safe_mode=True)


def held_out_batches(method, run_dir, recipe, data_dir=None, split: str | None = None,
                     max_examples: int | None = None, batch_size: int = 250):
    """An iterator of `(batch, outputs)` over `split` (default: the recipe's eval split) of the recipe's
    data: the method's evaluation transform (`training=False`, fixed seeds) and the run's
    `pretext_model.keras` on it, at most `max_examples` images. Methods whose model comes from the
    data (`prepare`) are prepared with the training split before this returns."""
    from ssl_zoo.data.pipeline import build_pretext_dataset
    from ssl_zoo.data.sources import open_source

    split = split or recipe.data.eval_split
    if not split:
        raise ConfigError("the recipe has no eval split; pass split=")
    source = open_source(recipe.data.source, data_dir)
    method.prepare(source, recipe.data.train_split, recipe.data.image_size)
    model = load_pretext_model(run_dir)
    batch_size = min(batch_size, max_examples or batch_size)
    ds = build_pretext_dataset(source, split, method, batch_size=batch_size, image_size=recipe.data.image_size,
                               training=False)
    if max_examples:
        ds = ds.take(-(-max_examples // batch_size))
    return ((batch, model(batch["inputs"], training=False)) for batch in ds)


def backbone_features(source, split: str, image_size: int, backbone, count: int,
                      batch_size: int = 250) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `count` images of `split` (fewer if the split is smaller), their labels, and
    `backbone`'s features of them, as NumPy arrays, computed `batch_size` images at a time."""
    from ssl_zoo.data.pipeline import build_dataset

    images, labels = [], []
    batches = build_dataset(source, split, batch_size=batch_size, image_size=image_size).take(-(-count // batch_size))
    for x, y in batches:
        images.append(x.numpy())
        labels.append(y.numpy())
    images, labels = np.concatenate(images)[:count], np.concatenate(labels)[:count]
    features = np.concatenate([np.asarray(backbone(images[i:i + batch_size], training=False))
                               for i in range(0, len(images), batch_size)])
    return images, labels, features


def picture_cluster_count(num_clusters: int, num_images: int, where: str) -> int:
    """How many clusters a picture of `num_images` held-out images draws: the recipe's
    `num_clusters`, or fewer so that a cluster has about ten images (at least 2 clusters)."""
    k = min(num_clusters, max(2, num_images // IMAGES_PER_PICTURE_CLUSTER))
    if num_images < 2 * k:
        raise ConfigError(f"{where} has {num_images} images: too few to draw {k} clusters")
    return k


def held_out_means(method, sums: dict[str, float], recipe, split: str | None, check: str,
                   least: int = 1) -> dict:
    """A diagnose report from sums over held-out images: `sums` holds "count" (the images) and sums
    of per-image values; the report has their means next to the images, data, split and the
    method's settings. Fewer than `least` images is a one-sentence error naming `check`."""
    split = split or recipe.data.eval_split
    sums = dict(sums)
    n = sums.pop("count")
    if n < least:
        raise ConfigError(f"{check}: needs at least {least} image{'s' if least > 1 else ''} in split {split!r}, "
                          f"found {int(n)}")
    return {"examples": int(n), "data": recipe.data.source, "split": split,
            **{k: v / n for k, v in sums.items()},
            "method": {k: v for k, v in method.config().items() if k != "backbone"}}
