"""The one top-k search of the filter's `top_fraction` steps and the subset's exact-N cut.

Scores become uint32 order keys (their float order, as integers); each shard sends a histogram of its
keys' top 16 bits; the merged histogram names the one bin where the k-th largest key falls and how many
keys lie above it; only that bin's values are then gathered, so the driver never holds a pool's scores.
"""

from __future__ import annotations

import numpy as np

BINS = 1 << 16


def order_key(scores: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the float32 order of `scores` (NaN: treat as -inf before calling)."""
    u = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    return np.where(u & 0x80000000, ~u, u | 0x80000000).astype(np.uint32)


def bin_of(keys: np.ndarray) -> np.ndarray:
    return np.asarray(keys) >> 16


def histogram(keys: np.ndarray) -> np.ndarray:
    """One shard's share of the search: counts of its keys per bin."""
    return np.bincount(bin_of(keys), minlength=BINS).astype(np.int64)


def locate(hist: np.ndarray, k: int) -> tuple[int, int]:
    """(bin, above): the bin holding the k-th largest key (1-based; 0 < k <= hist.sum()), and how many
    keys lie in the bins above it, so that the k-th largest is the (k - above)-th largest of that bin."""
    desc = np.cumsum(hist[::-1])  # keys in bins >= BINS - 1 - j
    j = int(np.searchsorted(desc, k))
    return BINS - 1 - j, (int(desc[j - 1]) if j > 0 else 0)
