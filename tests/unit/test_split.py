"""Unit tests for strata.split: partition properties, skew, determinism and validation."""

from __future__ import annotations

import numpy as np
import pytest

from strata import split
from strata.split import dirichlet_split, holdout, iid_split, label_histogram


def _labels(n: int, num_labels: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, num_labels, size=n).tolist()


def _assert_partition(shards: list[list[int]], n: int) -> None:
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(n))
    assert all(isinstance(i, int) for i in flat)
    assert all(shard == sorted(shard) for shard in shards)


def _mean_max_share(labels: list[int], shards: list[list[int]], num_labels: int) -> float:
    hist = np.array(label_histogram(labels, shards, num_labels), dtype=float)
    sizes = hist.sum(axis=1)
    return float(np.mean(hist.max(axis=1)[sizes > 0] / sizes[sizes > 0]))


# --- dirichlet_split -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "num_labels", "num_workers", "alpha", "min_size"),
    [
        (1000, 4, 5, 0.1, 1),
        (1000, 4, 5, 1.0, 10),
        (1000, 10, 20, 0.05, 5),
        (500, 2, 3, 100.0, 1),
        (10, 3, 10, 0.01, 1),  # exactly one example each: forces the fix-up path
        (50, 1, 4, 0.5, 0),
        (7, 2, 1, 0.3, 7),
    ],
)
def test_dirichlet_partition_and_min_size(
    n: int, num_labels: int, num_workers: int, alpha: float, min_size: int
) -> None:
    labels = _labels(n, num_labels)
    shards = dirichlet_split(labels, num_workers, alpha, seed=3, min_size=min_size)
    assert len(shards) == num_workers
    _assert_partition(shards, n)
    assert min(len(s) for s in shards) >= min_size


def test_dirichlet_fixup_after_failed_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(split, "MAX_DIRICHLET_TRIES", 1)
    labels = [0] * 40 + [1] * 40
    shards = dirichlet_split(labels, 8, 0.01, seed=0, min_size=10)
    _assert_partition(shards, 80)
    assert [len(s) for s in shards] == [10] * 8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_deterministic_per_seed(seed: int) -> None:
    labels = _labels(600, 5)
    a = dirichlet_split(labels, 6, 0.3, seed)
    assert a == dirichlet_split(labels, 6, 0.3, seed)
    assert a != dirichlet_split(labels, 6, 0.3, seed + 100)


def test_dirichlet_accepts_numpy_labels() -> None:
    labels = _labels(300, 3)
    assert dirichlet_split(np.array(labels), 4, 0.5, 1) == dirichlet_split(labels, 4, 0.5, 1)


def test_small_alpha_is_more_skewed_than_large_alpha() -> None:
    labels = _labels(4000, 10)
    shares = {
        alpha: np.mean(
            [_mean_max_share(labels, dirichlet_split(labels, 10, alpha, seed), 10) for seed in range(3)]
        )
        for alpha in (0.05, 1.0, 1000.0)
    }
    assert shares[0.05] > shares[1.0] > shares[1000.0]
    assert shares[0.05] > 0.6  # most workers dominated by one class
    assert shares[1000.0] < 0.2  # close to the IID share of about 0.1 plus sampling noise


@pytest.mark.parametrize(
    ("n", "num_workers", "alpha", "min_size", "message"),
    [
        (10, 0, 1.0, 1, "num_workers must be >= 1"),
        (10, -2, 1.0, 1, "num_workers must be >= 1"),
        (10, 2, 0.0, 1, "alpha must be a finite number > 0"),
        (10, 2, -1.0, 1, "alpha must be a finite number > 0"),
        (10, 2, float("nan"), 1, "alpha must be a finite number > 0"),
        (10, 2, float("inf"), 1, "alpha must be a finite number > 0"),
        (10, 2, 1.0, -1, "min_size must be >= 0"),
        (9, 5, 1.0, 2, r"too few examples: 9 cannot give 5 workers at least 2 each \(need 10\)"),
        (0, 1, 1.0, 1, "too few examples"),
    ],
)
def test_dirichlet_errors(n: int, num_workers: int, alpha: float, min_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dirichlet_split(_labels(n, 2), num_workers, alpha, seed=0, min_size=min_size)


def test_dirichlet_empty_with_zero_min_size() -> None:
    assert dirichlet_split([], 3, 1.0, seed=0, min_size=0) == [[], [], []]


# --- iid_split -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "num_workers"), [(100, 3), (10, 10), (7, 1), (3, 5), (0, 2)])
def test_iid_partition_and_balance(n: int, num_workers: int) -> None:
    shards = iid_split(n, num_workers, seed=4)
    assert len(shards) == num_workers
    _assert_partition(shards, n)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_iid_deterministic_and_shuffled() -> None:
    a = iid_split(100, 4, seed=9)
    assert a == iid_split(100, 4, seed=9)
    assert a != iid_split(100, 4, seed=10)
    assert a[0] != list(range(25))


@pytest.mark.parametrize(("n", "num_workers", "message"), [(10, 0, "num_workers"), (-1, 2, "n must be >= 0")])
def test_iid_errors(n: int, num_workers: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        iid_split(n, num_workers, seed=0)


# --- holdout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "expected_held"),
    [
        (100, 0.1, 10),
        (100, 0.0, 0),
        (10, 0.01, 1),  # rounds to 0 but at least one is held out
        (2, 0.5, 1),
        (2, 0.99, 1),  # at least one stays for training
        (1, 0.5, 0),
        (0, 0.5, 0),
        (5, 0.9, 4),
    ],
)
def test_holdout_sizes(n: int, fraction: float, expected_held: int) -> None:
    indices = list(range(100, 100 + n))
    train, held = holdout(indices, fraction, seed=1)
    assert len(held) == expected_held
    assert sorted(train + held) == indices
    assert train == sorted(train) and held == sorted(held)  # input order kept


def test_holdout_keeps_input_order_and_is_deterministic() -> None:
    indices = [9, 3, 7, 1, 5, 8, 2]
    train, held = holdout(indices, 0.3, seed=2)
    assert [i for i in indices if i in train] == train
    assert [i for i in indices if i in held] == held
    assert (train, held) == holdout(indices, 0.3, seed=2)
    assert holdout(list(range(100)), 0.2, seed=2) != holdout(list(range(100)), 0.2, seed=3)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_holdout_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        holdout([1, 2, 3], fraction, seed=0)


# --- label_histogram -------------------------------------------------------------------------


def test_label_histogram_counts() -> None:
    labels = [0, 1, 1, 2, 0, 2, 2]
    shards = [[0, 1, 2], [3, 5, 6], [4], []]
    assert label_histogram(labels, shards, 3) == [[1, 2, 0], [0, 0, 3], [1, 0, 0], [0, 0, 0]]
    assert label_histogram(labels, shards, 4) == [[1, 2, 0, 0], [0, 0, 3, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_label_histogram_sums_match_shards() -> None:
    labels = _labels(500, 4)
    shards = dirichlet_split(labels, 5, 0.5, seed=0)
    hist = label_histogram(labels, shards, 4)
    assert [sum(row) for row in hist] == [len(s) for s in shards]
    assert np.sum(hist, axis=0).tolist() == np.bincount(labels, minlength=4).tolist()


@pytest.mark.parametrize(
    ("labels", "shards", "num_labels", "message"),
    [
        ([0, 1], [[0, 2]], 2, "worker 0: index 2 out of range"),
        ([0, 1], [[0], [-1]], 2, "worker 1: index -1 out of range"),
        ([0, 3], [[0, 1]], 2, r"worker 0: label 3 of example 1 not in 0\.\.1"),
        ([0, 1], [[0]], 0, "num_labels must be >= 1"),
    ],
)
def test_label_histogram_errors(
    labels: list[int], shards: list[list[int]], num_labels: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        label_histogram(labels, shards, num_labels)
