"""Pictures beside a zoo entry's card, where people would rather look than read
(`ssl-zoo pictures NAME`): drawn from the released backbone on held-out images.

- `NAME_filters.png`: the first learned convolution's filters as a grid (Asano et al. 2020 compare
  them across methods; a fixed input front such as the grey or Sobel layer is skipped).
- `NAME_retrieval.png`: nearest neighbours of held-out queries by cosine similarity of the pooled
  features, each neighbour framed green when it shares the query's class, red when not, with the
  precision over every held-out image in the title (labels are read for the picture only).

- `NAME_pretext.png`: the pretext task on held-out images of the entry's training data, made by
  the method's own transform with its training augmentation (`PretextMethod.pretext_picture`: an
  image in its four rotations, a jigsaw puzzle and its solution, two views of each image, DeepCluster's
  clusters of the released backbone's features ...). The
  generative methods draw theirs with the trained model instead (`ssl-zoo diagnose --picture`:
  colorized, inpainted, super-resolved images), and this command leaves it as it is.

The card in `model_cards/` links the pictures found beside it; the preset's packaged card does not,
since the pictures do not travel in the preset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PICTURES = {  # file suffix -> what it shows (the card's caption)
    "pretext": "the pretext task on held-out images",
    "filters": "first-layer filters",
    "retrieval": "nearest neighbours of held-out images (pooled features, cosine)",
}


def picture_file(name: str, kind: str) -> str:
    return f"{name}_{kind}.png"


def pictures_beside(cards_dir: str | Path, name: str) -> dict[str, str]:
    """{kind: file name} of the entry's pictures present in `cards_dir`, in the card's order."""
    return {k: picture_file(name, k) for k in PICTURES if (Path(cards_dir) / picture_file(name, k)).is_file()}


def first_learned_conv(backbone):
    """The first trainable-by-design Conv2D (the fixed fronts, `FIXED_LAYERS`, are not learned)."""
    import keras

    from ssl_zoo.backbones import FIXED_LAYERS

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name not in FIXED_LAYERS:
            return layer
    raise ValueError(f"{backbone.name} has no learned Conv2D layer")


def draw_filters(backbone, path: str | Path, title: str) -> Path:
    """The first learned convolution's kernels [k, k, in, out] as RGB tiles (each scaled to its own
    range; a kernel whose input is not 3 channels is shown per input channel in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = first_learned_conv(backbone)
    kernel = np.asarray(layer.get_weights()[0], np.float32)  # [k, k, in, out]
    k, _, cin, cout = kernel.shape
    tiles = kernel.transpose(3, 0, 1, 2) if cin == 3 else kernel.transpose(3, 2, 0, 1).reshape(-1, k, k)[..., None]
    lo = tiles.min(axis=(1, 2, 3), keepdims=True)
    hi = tiles.max(axis=(1, 2, 3), keepdims=True)
    tiles = (tiles - lo) / np.maximum(hi - lo, 1e-8)
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2, 0.5 * cols + 0.5), 0.5 * rows + 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(tiles):
            tile = tiles[i]
            ax.imshow(tile if tile.shape[-1] == 3 else tile[..., 0], cmap=None if tile.shape[-1] == 3 else "gray",
                      interpolation="nearest")
    fig.suptitle(f"{title}\n{layer.name}: {cout} filters {k}x{k} over {cin} channels", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def retrieval(features: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Indices [N, k] of each image's k nearest other images by cosine similarity, and the
    fraction of those neighbours that share the image's label (precision@k)."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return nearest, float((labels[nearest] == labels[:, None]).mean())


def draw_retrieval(images: np.ndarray, labels: np.ndarray, nearest: np.ndarray, queries: np.ndarray,
                   precision: float, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = nearest.shape[1]
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(0.9 * (k + 1), 0.9 * len(queries) + 0.5), squeeze=False)
    for r, q in enumerate(queries):
        for c, idx in enumerate([q, *nearest[q]]):
            ax = axes[r][c]
            ax.imshow(np.clip(images[idx], 0, 255).astype(np.uint8), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "black" if c == 0 else ("green" if labels[idx] == labels[q] else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5 if c else 1.0)
        axes[r][0].set_ylabel("query", fontsize=6)
    fig.suptitle(f"{title}: precision@{k} {100 * precision:.1f} % over {len(labels)} held-out images "
                 f"(green: same class)", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_entry_pictures(name: str, *, data_dir=None, cards_dir: str | Path = "model_cards", num_images: int = 2000,
                         queries: int = 8, k: int = 6) -> dict[str, Any]:
    """Filters and retrieval pictures of zoo entry (or preset folder) `name`, on the first
    `num_images` of the held-out split of the data it was evaluated on, at the evaluation's size."""
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.loader import load_raw_backbone, resolve_source
    from ssl_zoo.methods.held_out import backbone_features
    from ssl_zoo.preset import read_metadata

    res = resolve_source(name)
    if res.kind != "preset":
        raise ConfigError(f"{name}: pictures are drawn for a zoo entry or preset folder (its metadata says "
                          f"what it was evaluated on)")
    meta = read_metadata(res.path)
    entry_name = meta["name"]
    report = meta.get("evaluation") or {}
    dataset = report.get("dataset") or (meta.get("data") or {}).get("source")
    size = (report.get("protocol") or {}).get("image_size") or meta["input"].get("image_size") or 32
    split = (report.get("protocol") or {}).get("test_split") or "test"
    source = open_source(dataset, data_dir)
    backbone = load_raw_backbone(name)
    images, labels, features = backbone_features(source, split, size, backbone, num_images)
    if len(images) < k + 1:
        raise ConfigError(f"{dataset}/{split} has {len(images)} images; retrieval needs at least {k + 1}")
    nearest, precision = retrieval(features, labels, k)
    # Queries spread over the held-out images in their order (the same ones for every entry).
    picks = np.linspace(0, len(images) - 1, queries).astype(int)
    cards_dir = Path(cards_dir)
    cards_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "filters": str(draw_filters(backbone, cards_dir / picture_file(entry_name, "filters"), entry_name)),
        "retrieval": str(draw_retrieval(images, labels, nearest, picks, precision,
                                        cards_dir / picture_file(entry_name, "retrieval"), entry_name)),
    }
    pretext = draw_pretext_task(meta["recipe"], data_dir, cards_dir / picture_file(entry_name, "pretext"), backbone)
    if pretext is not None:
        written["pretext"] = str(pretext)
    log.info("%s: pictures in %s (precision@%d %.1f %% on %d images of %s/%s)", entry_name, cards_dir, k,
             100 * precision, len(images), dataset, split)
    return {"name": entry_name, "pictures": written, "precision_at_k": precision, "k": k, "images": len(images),
            "dataset": dataset, "split": split, "preset": res.path}


def draw_pretext_task(recipe: dict, data_dir, path: str | Path, backbone=None) -> Path | None:
    """`path`: the method's picture of its pretext task (`PretextMethod.pretext_picture`) on the
    held-out split of the data of `recipe` (a recorded recipe, as in an entry's metadata), at its
    training size, with the entry's `backbone` where the method's targets come from the network.
    None, and nothing written, for a method that draws none here."""
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.image_grid import draw_image_rows
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.recipe import recipe_from_dict

    recipe = recipe_from_dict(recipe)
    method = method_from_recipe(recipe)
    source = open_source(recipe.data.source, data_dir)
    picture = method.pretext_picture(source, recipe.data.eval_split, recipe.data.image_size, backbone=backbone)
    if picture is None:
        return None
    return draw_image_rows(picture.rows, picture.title, path)
