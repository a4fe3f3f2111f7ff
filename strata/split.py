"""Partitioning a data set's example indices across federated workers (IID or label-skewed)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["dirichlet_split", "holdout", "iid_split", "label_histogram"]

#: How many fresh Dirichlet draws ``dirichlet_split`` tries before it fixes shard sizes by hand.
MAX_DIRICHLET_TRIES = 100


def _check_workers(num_workers: int) -> None:
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")


def _draw_shards(
    by_class: list[np.ndarray], num_workers: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    shards: list[list[int]] = [[] for _ in range(num_workers)]
    for idx in by_class:
        shuffled = rng.permutation(idx)
        proportions = rng.dirichlet(np.full(num_workers, alpha))
        if not np.all(np.isfinite(proportions)):  # guard against degenerate draws at tiny alpha
            proportions = np.full(num_workers, 1.0 / num_workers)
        cuts = np.floor(np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
        for worker, part in enumerate(np.split(shuffled, cuts)):
            shards[worker].extend(int(i) for i in part)
    return shards


def dirichlet_split(
    labels: Sequence[int], num_workers: int, alpha: float, seed: int, min_size: int = 1
) -> list[list[int]]:
    """Split example indices ``0..len(labels)-1`` across workers with label skew.

    For each class, proportions are drawn from Dirichlet(``alpha`` * ones(num_workers)) and the
    class's shuffled indices are cut accordingly: small ``alpha`` (e.g. 0.1) gives each worker few
    classes, large ``alpha`` (e.g. 100) approaches an IID split. Draws are repeated (up to
    ``MAX_DIRICHLET_TRIES``) until every worker has at least ``min_size`` examples; after that,
    examples are moved from the largest shard to the smallest until it holds. Every index appears in
    exactly one shard; each shard is sorted. The result depends only on the arguments.
    """
    _check_workers(num_workers)
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    n = len(labels)
    if n < num_workers * min_size:
        raise ValueError(
            f"too few examples: {n} cannot give {num_workers} workers at least {min_size} each "
            f"(need {num_workers * min_size})"
        )
    label_array = np.asarray(labels, dtype=np.int64).reshape(n)
    by_class = [np.flatnonzero(label_array == c) for c in np.unique(label_array)]
    rng = np.random.default_rng(seed)

    shards: list[list[int]] = []
    for _ in range(MAX_DIRICHLET_TRIES):
        shards = _draw_shards(by_class, num_workers, alpha, rng)
        if min(len(s) for s in shards) >= min_size:
            break
    else:
        # Fix up the last draw: move random examples from the largest shard to the smallest.
        while True:
            smallest = min(range(num_workers), key=lambda w: len(shards[w]))
            if len(shards[smallest]) >= min_size:
                break
            largest = max(range(num_workers), key=lambda w: len(shards[w]))
            donor = shards[largest]
            shards[smallest].append(donor.pop(int(rng.integers(len(donor)))))
    return [sorted(s) for s in shards]


def iid_split(n: int, num_workers: int, seed: int) -> list[list[int]]:
    """Split indices ``0..n-1`` uniformly at random into shards whose sizes differ by at most one.

    Shards are sorted; when ``n < num_workers`` some shards are empty.
    """
    _check_workers(num_workers)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in part) for part in np.array_split(perm, num_workers)]


def holdout(indices: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``indices`` into ``(train, heldout)`` with about ``fraction`` of them held out.

    ``fraction`` must be in [0, 1). When ``fraction > 0`` and there are at least two indices, at
    least one is held out and at least one is kept for training. Both lists keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    items = list(indices)
    n = len(items)
    num_held = round(fraction * n)
    if fraction > 0 and n >= 2:
        num_held = min(max(num_held, 1), n - 1)
    elif n < 2:
        num_held = 0
    held_positions = set(np.random.default_rng(seed).choice(n, size=num_held, replace=False).tolist())
    train = [item for pos, item in enumerate(items) if pos not in held_positions]
    held = [item for pos, item in enumerate(items) if pos in held_positions]
    return train, held


def label_histogram(
    labels: Sequence[int], shards: Sequence[Sequence[int]], num_labels: int
) -> list[list[int]]:
    """Count, for each shard (worker), how many of its examples carry each label ``0..num_labels-1``."""
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    histogram: list[list[int]] = []
    for worker, shard in enumerate(shards):
        counts = [0] * num_labels
        for index in shard:
            if not 0 <= index < len(labels):
                raise ValueError(f"worker {worker}: index {index} out of range for {len(labels)} labels")
            label = labels[index]
            if not 0 <= label < num_labels:
                raise ValueError(
                    f"worker {worker}: label {label} of example {index} not in 0..{num_labels - 1}"
                )
            counts[label] += 1
        histogram.append(counts)
    return histogram
