"""Time and memory of the clustering methods' label steps at 10k, 25k and 50k feature vectors,
with the fitted scaling exponent (time ~ N^b): DeepCluster's PCA-whitening + k-means
(`ssl_zoo.pretext.clustering`, the recipe's dimensions and k) and SeLa's Sinkhorn-Knopp on
[N, K] log-probabilities (the recipe's K and lambda, per head).

The features are Gaussian mixtures of the recipe's feature width (the quarter-width ResNet-18's
128-d pooled features): the cost of these steps depends on N, the width, k and the iterations,
not on what the vectors mean. Each size runs in its own subprocess, so that its peak memory
(VmHWM, the whole process: Python, NumPy, scikit-learn) is its own; each step runs 3 times and the
fastest is kept, with the imports done before the clock starts.

    python benchmarks/clustering.py --out benchmarks/results/clustering.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10_000, 25_000, 50_000)
REPEATS = 3


def run_one(step: str, n: int, width: int, k: int, pca_dim: int, iterations: int, lam: float) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from ssl_zoo.pretext import clustering

    import sklearn.cluster  # noqa: F401  (imported before the clock starts: its import takes ~2 s)
    from scipy.special import log_softmax

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, width)).astype(np.float32) * 2
    x = centres[rng.integers(0, 50, n)] + rng.normal(size=(n, width)).astype(np.float32)
    # A network's head on these features: a random linear layer, softmax over K labels.
    log_probs = log_softmax(x @ rng.normal(size=(width, k)).astype(np.float32) * 0.3, axis=1)
    runs = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        if step == "deepcluster":
            pca = clustering.fit_pca_whitening(x, pca_dim)
            z = clustering.apply_pca_whitening(x, pca)
            t1 = time.perf_counter()
            _, assignments, empty = clustering.kmeans(z, k, seed=0, iterations=iterations)
            t2 = time.perf_counter()
            runs.append({"pca_seconds": t1 - t0, "kmeans_seconds": t2 - t1, "seconds": t2 - t0, "empty_clusters": empty})
        else:
            labels, _ = clustering.sinkhorn_knopp(log_probs, lam=lam)
            sizes = np.bincount(labels, minlength=k)
            runs.append({"seconds": time.perf_counter() - t0, "largest_label_share": float(sizes.max() / n)})
    out = min(runs, key=lambda r: r["seconds"])  # the least disturbed of the repeats
    out["repeats_seconds"] = [round(r["seconds"], 3) for r in runs]
    # VmHWM is this process's own peak; ru_maxrss would carry the parent's across the exec (Linux).
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return {**out, "peak_rss_gib": int(line.split()[1]) / 2**20}


def exponent(sizes, seconds) -> float:
    import numpy as np

    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from ssl_zoo.train.recipe import load_recipe

    dc = load_recipe(ROOT / "training/deepcluster_resnet18w025_cifar10.toml").method
    sela = load_recipe(ROOT / "training/sela_resnet18w025_cifar10.toml").method
    width = 128  # quarter-width ResNet-18's pooled features
    settings = {
        "deepcluster": dict(width=width, k=dc["num_clusters"], pca_dim=dc["pca_dim"],
                            iterations=dc["kmeans_iterations"], lam=0.0),
        "sela": dict(width=width, k=sela["num_clusters"], pca_dim=0, iterations=0, lam=sela["lam"]),
    }
    if args.part:
        print(json.dumps(run_one(args.part, args.n, **settings[args.part])))
        return
    report = {"command": "python benchmarks/clustering.py",
              # The load average says whether something else shared the cores during the run.
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average_1min_at_start": os.getloadavg()[0]},
              "settings": settings, "steps": {}}
    for step in settings:
        rows = {}
        for n in SIZES:
            out = subprocess.run([sys.executable, __file__, "--part", step, "--n", str(n)],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{step} at {n}: {out.stderr[-2000:]}")
            rows[str(n)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(step, n, rows[str(n)], flush=True)
        report["steps"][step] = {
            "by_size": rows,
            "time_exponent": exponent(SIZES, [rows[str(n)]["seconds"] for n in SIZES]),
            "seconds_at_1m_extrapolated": rows[str(SIZES[-1])]["seconds"] * (1e6 / SIZES[-1])
            ** exponent(SIZES, [rows[str(n)]["seconds"] for n in SIZES]),
        }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
