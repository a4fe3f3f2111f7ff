"""Coordinate-wise median and trimmed mean, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator.robust import robust_reduce


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


def test_spooled_updates_with_different_block_sizes_align_by_window(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from coordinator import robust, spool
    from strata import codec
    from strata.codec import Codec
    from strata.frames import expected_of
    from strata.serde import RoundTask, TrainingConfig
    from worker.runner import update_chunks
    from worker.trainer import TrainResult

    monkeypatch.setattr(robust, "WINDOW", 1000)
    g = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (70, 50), "b.bias": (30,)}
    deltas = [{n: torch.randn(s, generator=g) for n, s in shapes.items()} for _ in range(3)]
    task = RoundTask(1, 0, "h", 0.0, TrainingConfig(), "fp32", 1)
    paths = []
    for k, (d, block) in enumerate(zip(deltas, [256, 999, 4096], strict=True)):  # each its own block size
        encoded = {n: codec.encode(t, Codec("fp32", block_elements=block)) for n, t in d.items()}
        res = TrainResult(d, 10, 1, 0.0, 0.0, 0.0)
        w = spool.SpoolWriter(tmp_path / f"u{k}.update")
        for chunk in update_chunks("w", task, res, encoded):
            w.write(chunk)
        paths.append(w.commit())
    got: dict[str, torch.Tensor] = {n: torch.empty(0) for n in shapes}
    for name, start, values in robust.robust_mean(paths, expected_of(deltas[0]), "median"):
        assert start == got[name].numel()
        got[name] = torch.cat([got[name], values])
    for n in shapes:
        want = torch.stack([d[n].reshape(-1) for d in deltas]).median(dim=0).values
        torch.testing.assert_close(got[n], want)
