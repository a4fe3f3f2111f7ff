"""Coordinate-wise median and trimmed mean, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator.aggregators import robust_reduce


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 8])
def test_median_and_trimmed_mean_match_numpy(k: int) -> None:
    x = np.random.default_rng(k).normal(size=(k, 1000)).astype(np.float32)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(
        robust_reduce(t, "median", 0.0).numpy(), np.median(x, axis=0), rtol=1e-6, atol=1e-6
    )
    cut = int(np.floor(0.25 * k))
    cut = cut if k - 2 * cut >= 1 else (k - 1) // 2
    expected = np.sort(x, axis=0)[cut : k - cut].mean(axis=0)
    np.testing.assert_allclose(robust_reduce(t, "trimmed-mean", 0.25).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_one_outlier_cannot_move_the_median() -> None:
    rows = torch.tensor([[1.0, 2.0], [1.1, 2.1], [1e9, -1e9]])
    assert torch.allclose(robust_reduce(rows, "median", 0.0), torch.tensor([1.1, 2.0]))
    with pytest.raises(ValueError, match="choose one of median, trimmed-mean"):
        robust_reduce(rows, "mode", 0.0)
