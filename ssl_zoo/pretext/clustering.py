"""Pseudo-labels from the data's own structure (DeepCluster, SeLa): host-side NumPy parts that an
epoch hook runs on the features gathered from every replica, so that every replica (and every
worker, which runs the same deterministic code on the same gathered features) trains on the
same assignments.

- `fit_pca_whitening` / `apply_pca_whitening`: DeepCluster's feature preprocessing (PCA to a few
  hundred dimensions, whitening, L2 normalisation; Caron et al. 2018, Sec. 3.3 / its
  `preprocess_features`).
- `kmeans`: scikit-learn's Lloyd k-means (see pyproject.toml for why not faiss here).
- `split_empty_clusters`: "when a cluster becomes empty, we randomly select a non-empty cluster
  and use its centroid with a small random perturbation as the new centroid for the empty
  cluster. We then reassign the points belonging to the non-empty cluster to the two resulting
  clusters" (Caron et al. 2018, Sec. 3.4).
- `inverse_size_weights`: the loss weight that makes every cluster count alike (ibid.: "sampling
  images based on a uniform distribution over the classes, or pseudo-labels ... equivalent to
  weighing the contribution of an input to the loss function by the inverse of the size of its
  assigned cluster").
- `sinkhorn_knopp`: SeLa's self-labelling as optimal transport under an equipartition
  constraint (Asano, Rupprecht & Vedaldi 2020, Sec. 3.1, Eq. 6-8).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ssl_zoo.data.sources import require_stable_examples
from ssl_zoo.errors import ConfigError


@dataclasses.dataclass
class PCAWhitening:
    mean: np.ndarray  # [D]
    projection: np.ndarray  # [D, p]: principal directions divided by sqrt(eigenvalue + eps)

    @property
    def dim(self) -> int:
        return self.projection.shape[1]


def fit_pca_whitening(features: np.ndarray, dim: int, eps: float = 1e-5) -> PCAWhitening:
    """PCA to `min(dim, D)` dimensions with whitening: the projected features have identity
    covariance (up to `eps`). float64 inside: the covariance of 50k x 512 float32 features loses
    the small eigenvalues that whitening then divides by."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ConfigError(f"PCA needs a [N, D] array with N >= 2, got shape {x.shape}")
    dim = min(dim, x.shape[1], len(x) - 1)
    mean = x.mean(axis=0)
    covariance = np.cov(x - mean, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    top = np.argsort(eigenvalues)[::-1][:dim]
    projection = eigenvectors[:, top] / np.sqrt(np.maximum(eigenvalues[top], 0.0) + eps)
    return PCAWhitening(mean=mean.astype(np.float32), projection=projection.astype(np.float32))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def apply_pca_whitening(features: np.ndarray, pca: PCAWhitening, normalize: bool = True) -> np.ndarray:
    z = (np.asarray(features, np.float32) - pca.mean) @ pca.projection
    return l2_normalize(z) if normalize else z


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared Euclidean), computed in blocks."""
    out = np.empty(len(x), np.int64)
    c2 = (centroids.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, len(x), 8192):
        block = x[start:start + 8192].astype(np.float64)
        out[start:start + 8192] = np.argmin(c2[None, :] - 2.0 * block @ centroids.T.astype(np.float64), axis=1)
    return out


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 20) -> tuple[np.ndarray, np.ndarray, int]:
    """(centroids [k, d], assignments [N], clusters that came out empty) by Lloyd's algorithm from
    k-means++ seeds, deterministic for a seed; empty clusters are then split off large ones
    (`split_empty_clusters`)."""
    from sklearn.cluster import KMeans

    if k < 2 or k > len(x):
        raise ConfigError(f"k-means needs 2 <= k <= {len(x)} (the number of features), got k={k}")
    fitted = KMeans(n_clusters=k, n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd",
                    random_state=seed).fit(x)
    centroids = fitted.cluster_centers_.astype(np.float32)
    assignments = nearest_centroid(x, centroids)
    return split_empty_clusters(x, centroids, assignments, np.random.default_rng(seed))


def split_empty_clusters(x: np.ndarray, centroids: np.ndarray, assignments: np.ndarray,
                         rng: np.random.Generator, perturbation: float = 1e-4) -> tuple[np.ndarray, np.ndarray, int]:
    """DeepCluster's empty-cluster rule: each empty cluster takes a perturbed copy of the centroid
    of a non-empty cluster (chosen with probability proportional to its size, among clusters of
    at least two points), that cluster's points go to the nearer of the two. Returns
    (centroids, assignments, number of clusters that were empty)."""
    centroids, assignments = centroids.copy(), assignments.copy()
    k = len(centroids)
    sizes = np.bincount(assignments, minlength=k)
    empty = [int(j) for j in np.flatnonzero(sizes == 0)]
    for j in empty:
        splittable = np.flatnonzero(sizes >= 2)
        if not len(splittable):
            break
        donor = int(rng.choice(splittable, p=sizes[splittable] / sizes[splittable].sum()))
        noise = perturbation * rng.standard_normal(centroids.shape[1]).astype(np.float32)
        centroids[j] = centroids[donor] * (1 + noise)
        centroids[donor] = centroids[donor] * (1 - noise)
        members = np.flatnonzero(assignments == donor)
        pair = np.stack([centroids[donor], centroids[j]])
        side = nearest_centroid(x[members], pair)
        if side.min() == side.max():  # a perturbation too small to separate: halve the members
            side = np.arange(len(members)) % 2
        assignments[members[side == 1]] = j
        sizes[donor], sizes[j] = int((side == 0).sum()), int((side == 1).sum())
    return centroids, assignments, len(empty)


def inverse_size_weights(assignments: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster loss weights N / (K * n_c) over the K non-empty clusters (0 for an empty one):
    the weighted loss counts every cluster alike, and the mean weight over the examples is 1."""
    sizes = np.bincount(assignments, minlength=k).astype(np.float64)
    filled = max(int((sizes > 0).sum()), 1)
    return np.where(sizes > 0, len(assignments) / (filled * np.maximum(sizes, 1)), 0.0).astype(np.float32)


def sinkhorn_knopp(log_probs: np.ndarray, lam: float = 25.0, iterations: int = 1000,
                   tolerance: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """SeLa's labels: the transport plan Q = diag(alpha) P^lam diag(beta) between N images and K
    clusters with uniform marginals (each image one unit, each cluster N/K), from the network's
    log-probabilities [N, K]. Returns (labels = argmax_k Q [N], Q normalised so that rows sum to 1).

    P^lam underflows (p^25 for p = 1e-13 is below float64's range), so the kernel is shifted in
    log space first, by its row maxima and then its column maxima: every row and every column
    keeps an entry of 1, and the row/column scalings absorb the shift (the plan is unchanged).
    The scaling itself is linear (two matrix-vector products per iteration, float64) and stops
    when every image's mass is within `tolerance` of 1 (the cluster masses are exact after each
    column update)."""
    logp = np.asarray(log_probs, np.float64)
    if logp.ndim != 2 or not np.all(np.isfinite(logp)):
        raise ConfigError(f"Sinkhorn-Knopp needs finite [N, K] log-probabilities, got shape {logp.shape}")
    n, k = logp.shape
    shifted = lam * logp
    shifted -= shifted.max(axis=1, keepdims=True)
    shifted -= shifted.max(axis=0, keepdims=True)
    kernel = np.exp(shifted)
    alpha, beta = np.ones(n), np.ones(k)
    for it in range(iterations):
        alpha = 1.0 / (kernel @ beta)
        beta = (n / k) / (kernel.T @ alpha)
        if it % 10 == 9 or it == iterations - 1:
            rows = alpha * (kernel @ beta)
            if np.max(np.abs(rows - 1.0)) < tolerance:
                break
    q = alpha[:, None] * kernel * beta[None, :]
    return np.argmax(q, axis=1), q / q.sum(axis=1, keepdims=True)


def training_set_size(source, split: str, num_clusters: int, who: str) -> int:
    """The number of images a clustering method labels (its `prepare`), refusing more clusters than
    images before anything is built."""
    require_stable_examples(source, split, who, "labels each training image by its index")
    n = source.num_examples(split)
    if num_clusters > n:
        raise ConfigError(f"[method] {who} num_clusters={num_clusters} exceeds the {n} images of {source.name}/{split}")
    return n


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """NMI (arithmetic normalisation, scikit-learn's default) of two labelings; examples where
    either is negative (unknown) are left out, NaN when none is left."""
    from sklearn.metrics import normalized_mutual_info_score

    a, b = np.asarray(a), np.asarray(b)
    known = (a >= 0) & (b >= 0)
    return float(normalized_mutual_info_score(a[known], b[known])) if known.any() else float("nan")


__all__ = ["PCAWhitening", "apply_pca_whitening", "fit_pca_whitening", "inverse_size_weights", "kmeans",
           "l2_normalize", "nearest_centroid", "normalized_mutual_info", "sinkhorn_knopp", "split_empty_clusters",
           "training_set_size"]
