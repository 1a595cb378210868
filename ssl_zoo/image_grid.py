"""Rows of images as one PNG: the pictures of a pretext task on held-out images (grey input /
colorized / true colour; masked / inpainted / original). A leaf module: NumPy and matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def draw_image_rows(rows: list[tuple[str, np.ndarray]], title: str, path: str | Path) -> Path:
    """`rows`: (label, images [N, H, W, 3] in [0, 255]) per row, all with the same N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.2 * len(rows) + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
