"""The close pass: one read of the spooled updates serves the refused updates, the divergence's dot
products and the robust aggregators, whatever block sizes the senders chose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator import close_pass as cp
from coordinator import spool
from coordinator.aggregators import Aggregator, RobustAggregator
from coordinator.ingest import RoundSums, reload
from coordinator.updates import Spooled
from strata import codec
from strata.codec import Codec
from strata.errors import InvalidInput
from strata.frames import expected_of, header_of, pieces
from strata.proto.v1 import coordinator_pb2 as pb

SHAPES = {"a.weight": (70, 50), "b.bias": (30,), "c.weight": (7, 3)}


def spool_update(
    path: Path, delta: dict[str, torch.Tensor], block: int, order: list[str] | None = None
) -> Path:
    """Write an update's chunks as the upload path spools them, with its own block size."""
    w = spool.SpoolWriter(path)
    w.write(pb.UpdateChunk(header=pb.UpdateHeader(round=1, num_samples=10)))
    for name in order or sorted(delta):
        enc = codec.encode(delta[name], Codec("fp32", block_elements=block))
        w.write(pb.UpdateChunk(tensor=header_of(name, delta[name], enc)))
        for b in enc.blocks:
            for piece in pieces(b):
                w.write(pb.UpdateChunk(data=piece))
    w.write(pb.UpdateChunk(end=pb.UpdateEnd(num_tensors=len(delta))))
    return w.commit()


def make_round(tmp_path: Path, deltas: list[dict[str, torch.Tensor]], samples: list[int], robust: str | None):
    expected = expected_of({n: torch.zeros(s) for n, s in SHAPES.items()})
    sums = RoundSums(expected)
    agg: Aggregator = RobustAggregator(sums, robust, 0.25) if robust else Aggregator(sums)
    updates = []
    for k, (d, n, block) in enumerate(zip(deltas, samples, [256, 999, 4096, 333], strict=False)):
        path = spool_update(tmp_path / f"u{k}.update", d, block)
        got = reload(path, sums, n)
        u = Spooled(f"w{k}", path, n, tensors=frozenset(got.names), sq=got.sq, norm=got.norm)
        agg.accept(u)
        updates.append(u)
    return agg, updates


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cp, "WINDOW", 1000)  # several windows per tensor, not aligned with the blocks


def randn_deltas(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(s, generator=g) for n, s in SHAPES.items()} for _ in range(count)]


def test_one_pass_subtracts_refused_updates_and_measures_dots_against_the_final_mean(tmp_path: Path) -> None:
    deltas = randn_deltas(4)
    deltas[3] = {n: 100 * t for n, t in deltas[3].items()}  # the outlier a filter refuses at close
    samples = [10, 20, 30, 40]
    agg, updates = make_round(tmp_path, deltas, samples, None)
    refused = [updates[3]]
    agg.retract(refused[0])
    dots = cp.close_pass(agg, updates[:3], refused, dots=True)
    total = sum(samples[:3])
    for n in SHAPES:
        mean = sum(d[n].double() * s for d, s in zip(deltas[:3], samples[:3], strict=True)) / total
        torch.testing.assert_close(
            agg.sums.sums[n].double() / agg.sums.counts[n], mean.reshape(-1), atol=1e-5, rtol=0
        )
        for u, d in zip(updates[:3], deltas[:3], strict=True):
            assert dots[u.key][n] == pytest.approx(
                float((d[n].double() * mean).sum()), abs=1e-3
            )  # float32 sums
    assert set(dots) == {"w0", "w1", "w2"}


@pytest.mark.parametrize("method", ["median", "trimmed-mean"])
def test_robust_windows_align_whatever_the_block_sizes(tmp_path: Path, method: str) -> None:
    deltas = randn_deltas(3, seed=1)
    agg, updates = make_round(tmp_path, deltas, [1, 1, 1], method)
    cp.close_pass(agg, updates, [], dots=False)
    got = dict(agg.result())
    for n in SHAPES:
        stack = torch.stack([d[n] for d in deltas])
        want = stack.median(dim=0).values if method == "median" else stack.sort(dim=0).values[0:3].mean(dim=0)
        torch.testing.assert_close(got[n], want)


def test_a_tensor_carried_by_some_updates_only_is_reduced_over_those(tmp_path: Path) -> None:
    deltas = randn_deltas(3, seed=2)
    del deltas[2]["b.bias"]
    agg, updates = make_round(tmp_path, deltas, [1, 1, 1], "median")
    cp.close_pass(agg, updates, [], dots=False)
    got = dict(agg.result())
    torch.testing.assert_close(got["b.bias"], (deltas[0]["b.bias"] + deltas[1]["b.bias"]) / 2)


def test_tensors_out_of_name_order_are_refused(tmp_path: Path) -> None:
    d = randn_deltas(1)[0]
    path = spool_update(tmp_path / "u.update", d, 256, order=["b.bias", "a.weight", "c.weight"])
    sums = RoundSums(expected_of({n: torch.zeros(s) for n, s in SHAPES.items()}))
    with pytest.raises(InvalidInput, match="ascending order"):
        reload(path, sums, 1)
    assert not sums.counts and all(float(t.abs().sum()) == 0 for t in sums.sums.values())


def test_no_pass_when_nothing_needs_the_spool() -> None:
    sums = RoundSums({})
    assert not cp.needs_pass(Aggregator(sums), [], divergence=False, accepted=3)
    assert cp.needs_pass(Aggregator(sums), [], divergence=True, accepted=3)
    assert cp.needs_pass(RobustAggregator(sums, "median"), [], divergence=False, accepted=3)


def test_without_a_robust_aggregator_the_dots_are_taken_a_group_at_a_time_and_equal_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory holds GROUP windows, not one per worker: the refused update is subtracted first, then the
    accepted ones are read GROUP at a time against the final mean, giving exactly the numbers of one pass
    over all of them side by side."""
    deltas = randn_deltas(4, seed=3)
    samples = [10, 20, 30, 40]
    results = []
    for mode in ("side by side", "grouped"):
        agg, updates = make_round(tmp_path / mode.replace(" ", "-"), deltas, samples, None)
        agg.retract(updates[3])
        if mode == "side by side":
            results.append(cp._lockstep(agg, updates[:3], updates[3:], dots=True))
            continue
        monkeypatch.setattr(cp, "GROUP", 2)
        sizes: list[tuple[int, int]] = []
        lockstep = cp._lockstep

        def spy(agg_, accepted, refused, dots, sizes=sizes, lockstep=lockstep):  # type: ignore[no-untyped-def]
            sizes.append((len(accepted), len(refused)))
            return lockstep(agg_, accepted, refused, dots)

        monkeypatch.setattr(cp, "_lockstep", spy)
        results.append(cp.close_pass(agg, updates[:3], updates[3:], dots=True))
        assert sizes == [(0, 1), (2, 0), (1, 0)]  # the refused one alone, then the accepted two and one
    assert results[0] == results[1]
