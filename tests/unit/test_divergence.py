"""Layer-wise divergence against a direct numpy computation on random deltas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from strata.aggregate import FedAvgAccumulator
from strata.divergence import by_block, cosine, divergence, noise_floor, sum_by_block, worker_alignment

BLOCK_OF = {"a": "layer.0", "b": "layer.0", "c": "head"}
SHAPES = {"a": (40, 30), "b": (30,), "c": (5, 30)}


def deltas(k: int, seed: int, shared: float) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    common = {n: rng.normal(size=s) for n, s in SHAPES.items()}
    return [{n: shared * common[n] + rng.normal(size=s) for n, s in SHAPES.items()} for _ in range(k)]


@pytest.mark.parametrize(("k", "shared"), [(2, 0.0), (5, 1.0), (8, 3.0)])
def test_measures_match_numpy(k: int, shared: float) -> None:
    ds = deltas(k, seed=k, shared=shared)
    n = np.random.default_rng(99).integers(10, 100, size=k)
    p = n / n.sum()
    acc = FedAvgAccumulator()
    for d, nk in zip(ds, n, strict=True):
        acc.accept({name: torch.from_numpy(v) for name, v in d.items()}, int(nk))
    moments = acc.moments()
    energy = {name: m.energy for name, m in moments.items()}
    mean_sq = {name: m.s2 for name, m in moments.items()}
    got = by_block(energy, mean_sq, BLOCK_OF, list(p))
    for block in ("layer.0", "head"):
        names = [x for x in SHAPES if BLOCK_OF[x] == block]
        flat = [np.concatenate([d[x].ravel() for x in names]) for d in ds]
        mean = sum(pk * f for pk, f in zip(p, flat, strict=True))
        e = sum(pk * f @ f for pk, f in zip(p, flat, strict=True))
        v = sum(pk * (f - mean) @ (f - mean) for pk, f in zip(p, flat, strict=True))
        g = got[block]
        assert g.energy == pytest.approx(e, rel=1e-9)
        assert g.mean_sq == pytest.approx(mean @ mean, rel=1e-9)
        assert g.spread == pytest.approx(v, rel=1e-6)
        assert g.divergence == pytest.approx(v / (mean @ mean), rel=1e-6)
        assert g.cancelled == pytest.approx(v / e, rel=1e-6)
        assert g.noise_floor == pytest.approx(1 - (p**2).sum())
        # per worker: norm and cosine to the mean, from dot products (the second pass)
        for f in flat:
            dots = {block: float(f @ mean)}
            ((norm, cos),) = worker_alignment(
                dots, {block: float(f @ f)}, {block: float(mean @ mean)}
            ).values()
            assert norm == pytest.approx(np.linalg.norm(f))
            assert cos == pytest.approx(f @ mean / (np.linalg.norm(f) * np.linalg.norm(mean)))
    if shared == 0.0:  # independent directions: ρ sits at its noise floor
        assert got["layer.0"].cancelled == pytest.approx(got["layer.0"].noise_floor, abs=0.08)
    else:  # a shared direction pulls ρ below it
        assert got["layer.0"].cancelled < got["layer.0"].noise_floor


def test_undefined_below_two_workers_is_none_not_zero() -> None:
    d = divergence(4.0, 4.0, [1.0])
    assert (d.energy, d.mean_sq) == (4.0, 4.0)
    assert (d.spread, d.divergence, d.cancelled, d.noise_floor) == (None, None, None, None)
    assert noise_floor([3.0]) is None


def test_edge_cases() -> None:
    same = divergence(2.0, 2.0, [0.5, 0.5])
    assert (same.spread, same.divergence, same.cancelled) == (0.0, 0.0, 0.0)
    opposite = divergence(2.0, 0.0, [0.5, 0.5])  # two equal and opposite moves: everything cancels
    assert opposite.cancelled == 1.0 and opposite.divergence > 1e9
    assert divergence(2.0, 2.0 + 1e-15, [0.5, 0.5]).spread == 0.0  # rounding never makes V negative
    assert divergence(0.0, 0.0, [0.5, 0.5]).cancelled is None  # nothing moved
    assert cosine(1.0, 0.0, 1.0) is None and cosine(2.0, 1.0, 4.0) == 1.0
    assert math.isclose(cosine(-1.0, 1.0, 1.0) or 0, -1.0)
    assert sum_by_block({"a": 1.0, "b": 2.0, "c": 4.0}, BLOCK_OF) == {"layer.0": 3.0, "head": 4.0}
