"""What the cards of the clustering methods (DeepCluster, SeLa) show of their training: the
pseudo-labels' NMI against the true classes and against the previous labels, how the images
spread over the clusters, and the held-out pretext accuracy, per clustering, with a plot.

Everything is read from what the run recorded and the preset's metadata carries: the history's
`hook_*` values (epoch-start hooks), and the run reports the method names in `run_reports`
(`clusters.json`: DeepCluster's sorted cluster sizes per epoch; `refresh_hooks.json`: SeLa's
within-epoch refreshes), copied into the metadata at export (`ssl_zoo.export.read_run`).
"""

from __future__ import annotations

import math
from pathlib import Path

from ssl_zoo.methods.card import pct


def _num(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _share(v) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def deepcluster_training_lines(meta: dict, plot_name: str | None) -> list[str]:
    history = meta.get("history") or []
    clusters = ((meta.get("run_reports") or {}).get("clusters.json")) or {}
    if not history:
        return []
    data = (meta.get("evaluation") or {}).get("dataset") or (meta.get("data") or {}).get("source") or "the data"
    k = (meta.get("method") or {}).get("num_clusters")
    lines = ["", "## Clustering across training\n",
             f"Measured before every epoch on the whole training set ({data}); the true classes are used for "
             f"these NMI values only. Held-out pretext accuracy: the classifier predicts the nearest centroid "
             f"of images it never trained on (chance {pct(1 / k) if k else '1/k'}).\n",
             "| epoch | NMI vs true classes | NMI vs previous clustering | empty clusters split | smallest / median / "
             "largest cluster | held-out pretext accuracy |",
             "|---|---|---|---|---|---|"]
    for record in history:
        epoch = str(record["epoch"])
        sizes = (clusters.get(epoch) or {}).get("sizes")
        spread = "-"
        if sizes:
            n = sum(sizes)
            spread = f"{_share(sizes[-1] / n)} / {_share(sizes[len(sizes) // 2] / n)} / {_share(sizes[0] / n)}"
        lines.append(f"| {epoch} | {_num(record.get('hook_nmi_labels'))} | {_num(record.get('hook_nmi_previous'))} | "
                     f"{_num(record.get('hook_empty_clusters'), 0)} | {spread} | "
                     f"{pct(record['eval_accuracy']) if 'eval_accuracy' in record else '-'} |")
    if plot_name:
        lines += ["", f"![NMI per epoch and cluster sizes per clustering]({plot_name})"]
    return lines + [""]


def deepcluster_plot(meta: dict, path) -> Path | None:
    history = meta.get("history") or []
    clusters = ((meta.get("run_reports") or {}).get("clusters.json")) or {}
    if not history or not clusters:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    epochs = [r["epoch"] for r in history]
    left.plot(epochs, [r.get("hook_nmi_labels", math.nan) for r in history], "o-", label="vs true classes")
    left.plot(epochs, [r.get("hook_nmi_previous", math.nan) for r in history], "s--", label="vs previous clustering")
    left.set_xlabel("epoch (clustering before it)")
    left.set_ylabel("NMI")
    left.grid(alpha=0.3)
    left.legend()
    cmap = plt.get_cmap("viridis")
    keys = sorted(clusters, key=int)
    for i, epoch in enumerate(keys):
        sizes = clusters[epoch]["sizes"]
        right.plot(range(1, len(sizes) + 1), sizes, color=cmap(i / max(len(keys) - 1, 1)), label=f"epoch {epoch}")
    right.set_yscale("log")
    right.set_xlabel("cluster rank (largest first)")
    right.set_ylabel("images in cluster")
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=7, ncol=2)
    return _save(fig, plt, path, meta["name"])


def sela_training_lines(meta: dict, plot_name: str | None) -> list[str]:
    rows = sela_refreshes(meta)
    if not rows:
        return []
    k = (meta.get("method") or {}).get("num_clusters")
    lines = ["", "## Self-labelling across training\n",
             "Every refresh re-solves the labels of the whole training set by Sinkhorn-Knopp; the true classes are "
             f"used for the NMI only. Values averaged over the heads; an equal share is {_share(1 / k) if k else '1/K'}.\n",
             "| before step | NMI vs true classes | labels changed | largest label share |", "|---|---|---|---|"]
    for step, report in rows:
        lines.append(f"| {step + 1} | {_num(report.get('nmi_labels'))} | {_share(report.get('labels_changed'))} | "
                     f"{_share(report.get('largest_label_share'))} |")
    if plot_name:
        lines += ["", f"![NMI and label changes per refresh]({plot_name})"]
    return lines + [""]


def sela_refreshes(meta: dict) -> list[tuple[int, dict]]:
    """Every refresh as (steps done before it, report): within-epoch ones from refresh_hooks.json,
    epoch-start ones from the history's hook_* values."""
    rows = {int(step): report for step, report in
            ((meta.get("run_reports") or {}).get("refresh_hooks.json") or {}).items()}
    history = meta.get("history") or []
    steps_before = [0] + [r["step"] for r in history]
    for record, step in zip(history, steps_before):
        hook = {k[5:]: v for k, v in record.items() if k.startswith("hook_")}
        if hook:
            rows[step] = hook
    return sorted(rows.items())


def sela_plot(meta: dict, path) -> Path | None:
    rows = sela_refreshes(meta)
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [s for s, _ in rows]
    ax.plot(steps, [r.get("nmi_labels", math.nan) for _, r in rows], "o-", label="NMI vs true classes")
    ax.plot(steps, [r.get("labels_changed", math.nan) for _, r in rows], "s--", label="share of labels changed")
    ax.set_xlabel("optimizer steps before the refresh")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path, meta["name"])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path, title: str) -> Path:
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
