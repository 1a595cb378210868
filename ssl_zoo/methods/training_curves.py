"""Loss curves for a card: what the run's history recorded per epoch, drawn and tabled.

For methods whose pretext has no single accuracy to show its progress (generative methods:
reconstruction, adversarial and per-half losses). A method opts in with

    card_training = staticmethod(training_curves.card_lines)
    card_plot = staticmethod(training_curves.card_plot)

Everything comes from the preset metadata's `history` (one record per epoch: `train_X` over the
epoch's steps, `eval_X` on the held-out split when it was evaluated).
"""

from __future__ import annotations

import math
from pathlib import Path

# Bookkeeping, not curves.
_NOT_CURVES = {"epoch", "step", "seconds", "images_per_second"}


def _curves(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{metric name ("train_loss", "eval_hole_error", ...): [(epoch, value)]}, numeric values only."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for key, value in record.items():
            if (key in _NOT_CURVES or key.startswith(("hook_", "learning_rate")) or isinstance(value, bool)
                    or not isinstance(value, (int, float)) or not math.isfinite(value)):
                continue
            curves.setdefault(key, []).append((int(record["epoch"]), float(value)))
    return curves


def _metric(key: str) -> str:
    return key.split("_", 1)[1] if key.startswith(("train_", "eval_")) else key


def card_lines(meta: dict, plot_name: str | None) -> list[str]:
    history = meta.get("history") or []
    if not history:
        return []
    curves = _curves(history)
    metrics = sorted({_metric(k) for k in curves}, key=lambda m: (m != "loss", m))
    lines = ["", "## Training curves\n",
             "Per epoch, from the run's history: `train` is the mean over the epoch's steps, `eval` the "
             "held-out split (evaluated every few epochs).\n"]
    if plot_name:
        lines += [f"![Training curves]({plot_name})\n"]
    header = ["epoch"] + [f"{split} {m}" for m in metrics for split in ("train", "eval")
                          if f"{split}_{m}" in curves]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in history:
        row = [str(record["epoch"])]
        for column in header[1:]:
            split, m = column.split(" ", 1)
            value = record.get(f"{split}_{m}")
            row.append("-" if value is None else f"{value:.4g}")
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def card_plot(meta: dict, path) -> Path | None:
    """One panel per metric, train (solid) and eval (dashed) against the epoch."""
    history = meta.get("history") or []
    curves = _curves(history)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({_metric(k) for k in curves}, key=lambda m: (m != "loss", m))
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for split, style in (("train", "-"), ("eval", "--")):
            points = curves.get(f"{split}_{m}")
            if points:
                ax.plot(*zip(*points), style, marker="o", markersize=3, label=split)
        ax.set_title(m.replace("_", " "), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{meta.get('name', '')}: training curves", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path
