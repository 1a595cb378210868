"""Rows of images as one PNG: the pictures of a pretext task on held-out images (grey input /
colorized / true colour; masked / inpainted / original; an image in its four rotations; a jigsaw
puzzle and its solution). A leaf module: NumPy and matplotlib."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np


class PictureRow(NamedTuple):
    label: str  # written beside the row
    images: np.ndarray  # [N, H, W, 3], values in [0, 255] (see `for_display` for others)
    captions: Sequence[str] | None = None  # one per image, written under it


class Picture(NamedTuple):
    title: str
    rows: list[PictureRow]


def for_display(images) -> np.ndarray:
    """Images [..., H, W, 3] ready to draw: those with values outside [0, 255] (per-tile standardised
    jigsaw tiles, a patch with noise in a dropped channel) are stretched, each on its own, to span
    [0, 255]; the others are left as they are."""
    images = np.asarray(images, np.float32)
    flat = images.reshape((-1,) + images.shape[-3:]).copy()
    for i, image in enumerate(flat):
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 255.0:
            flat[i] = (image - low) * (255.0 / max(high - low, 1e-6))
    return flat.reshape(images.shape)


def mosaic(tiles, grid: int = 3, gap: int = 2) -> np.ndarray:
    """Tiles [grid * grid, t, t, 3] -> one image of the grid in raster order, `gap` white pixels
    between cells."""
    tiles = np.asarray(tiles, np.float32)
    n, t = tiles.shape[0], tiles.shape[1]
    if n != grid * grid:
        raise ValueError(f"a {grid}x{grid} mosaic takes {grid * grid} tiles, got {n}")
    side = grid * t + (grid - 1) * gap
    out = np.full((side, side, tiles.shape[-1]), 255.0, np.float32)
    for k in range(n):
        r, c = divmod(k, grid)
        out[r * (t + gap):r * (t + gap) + t, c * (t + gap):c * (t + gap) + t] = tiles[k]
    return out


def draw_image_rows(rows: list[tuple], title: str, path: str | Path) -> Path:
    """`rows`: `PictureRow`s, or (label, images [N, H, W, 3] in [0, 255]) pairs; rows may differ in
    length and image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [PictureRow(*row) for row in rows]
    path = Path(path)
    n = max(len(row.images) for row in rows)
    captioned = any(row.captions for row in rows)
    # The title wrapped to the figure's width (about 16 characters an inch at 8 points).
    title = textwrap.fill(title, width=max(40, int(16 * 1.2 * n)))
    title_lines = title.count("\n") + 1
    fig, axes = plt.subplots(len(rows), n, squeeze=False,
                             figsize=(1.2 * n, (1.45 if captioned else 1.2) * len(rows) + 0.25 + 0.15 * title_lines))
    for r, row in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(row.images):
                ax.axis("off")
                continue
            ax.imshow(np.clip(row.images[i], 0, 255).astype(np.uint8), interpolation="nearest")
            if row.captions:
                ax.set_xlabel(row.captions[i], fontsize=6)
            if i == 0:
                ax.set_ylabel(row.label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
