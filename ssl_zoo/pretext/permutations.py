"""Permutation sets for jigsaw pretexts, NumPy only (no TensorFlow import: cheap to call from any
process, which the tests use to check that every process builds the identical set).

Noroozi & Favaro 2016, Sec. 3.3: "the minimum Hamming distance ... between the permutations plays
an important role"; their Algorithm 1 adds permutations greedily by distance to the chosen ones.
We maximise the *minimum* distance to the chosen set, breaking ties by the summed distance (the
paper's criterion) and then by a seeded random order of the candidates.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from ssl_zoo.errors import ConfigError

NUM_TILES = 9


@functools.lru_cache(maxsize=2)
def _all_permutations(size: int) -> np.ndarray:
    """All size! permutations in lexicographic order, [size!, size] uint8 (read-only)."""
    perms = np.array(list(itertools.permutations(range(size))), np.uint8)
    perms.setflags(write=False)
    return perms


@functools.lru_cache(maxsize=16)
def _greedy(n: int, seed: int, size: int) -> tuple[np.ndarray, int]:
    perms = _all_permutations(size)
    if not 1 <= n <= len(perms):
        raise ConfigError(f"num_permutations must be in [1, {len(perms)}], got {n}")
    # A seeded shuffle of the candidates: argmax takes the first maximum, so ties are broken in a
    # random order that is a pure function of the seed.
    order = np.random.default_rng(seed).permutation(len(perms))
    columns = np.ascontiguousarray(perms[order].T)  # [size, P]: one contiguous row per position
    min_dist = np.full(columns.shape[1], size + 1, np.uint8)
    sum_dist = np.zeros(columns.shape[1], np.int32)
    matches = np.empty(columns.shape[1], np.uint8)
    chosen = np.empty(n, np.int64)
    best = 0  # the first permutation: the first candidate of the seeded order
    for i in range(n):
        chosen[i] = best
        p = columns[:, best]
        matches[:] = columns[0] == p[0]
        for k in range(1, size):
            matches += columns[k] == p[k]
        dist = size - matches  # uint8
        np.minimum(min_dist, dist, out=min_dist)
        sum_dist += dist
        # Maximal minimum distance first, then maximal summed distance (Algorithm 1 of the paper),
        # then the first in the seeded order.
        tied = np.flatnonzero(min_dist == min_dist.max())
        best = int(tied[np.argmax(sum_dist[tied])])
    selected = columns[:, chosen].T.copy()
    return selected, _min_hamming_from(selected)


def _min_hamming_from(perms: np.ndarray) -> int:
    """Minimum pairwise Hamming distance of a set of permutations (9 if the set has one member)."""
    perms = np.asarray(perms)
    if len(perms) < 2:
        return perms.shape[1]
    best = perms.shape[1]
    for i in range(len(perms) - 1):
        d = (perms[i + 1 :] != perms[i]).sum(1).min()
        best = min(best, int(d))
    return best


def maximal_hamming_permutations(n: int, seed: int = 0, size: int = NUM_TILES) -> np.ndarray:
    """`n` permutations of `size` elements, chosen greedily for maximal minimum Hamming distance.

    Deterministic from `seed` (NumPy's PCG64 `Generator` only orders the candidates; the choice
    itself is a deterministic argmax). Returns int32 [n, size]. On one CPU core: ~1.5 s once per
    process to enumerate the 9! candidates, then ~0.2 s for n=100 and ~2 s for n=1000 (each step
    compares the last chosen permutation with all candidates); results are cached per process.
    """
    return _greedy(int(n), int(seed), int(size))[0].astype(np.int32)


def min_hamming_distance(perms) -> int:
    """Minimum pairwise Hamming distance of a permutation set."""
    return _min_hamming_from(np.asarray(perms))


def encode_permutations(perms) -> tuple[str, ...]:
    """[n, 9] ints -> ("012345678", ...): the compact form stored in a method's config."""
    return tuple("".join(str(int(v)) for v in row) for row in np.asarray(perms))


def decode_permutations(rows) -> np.ndarray:
    """The inverse of `encode_permutations`, with validation."""
    perms = np.array([[int(c) for c in str(row)] for row in rows], np.int32)
    if perms.ndim != 2 or perms.shape[1] != NUM_TILES:
        raise ConfigError(f"permutations must be strings of {NUM_TILES} digits, got shape {perms.shape}")
    if not (np.sort(perms, axis=1) == np.arange(NUM_TILES)).all():
        raise ConfigError("every permutation must contain each of 0..8 exactly once")
    if len({tuple(p) for p in perms}) != len(perms):
        raise ConfigError("the permutation set has duplicates")
    return perms
