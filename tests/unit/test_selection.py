"""Block scores and the selection rule: which blocks, how often, the starvation bound."""

from __future__ import annotations

import math
import random

import pytest
import torch

from strata.selection import agreement_scores, fedtlu_scores, select

BLOCKS = ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "head"]
HEAD = ["head"]


def test_fedtlu_score_is_as_stated_and_sums_per_block() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = float(x.norm()) / (2.0 * float(x.std(unbiased=False)))
    assert math.isclose(expected, math.sqrt(1 + x.mean() ** 2 / x.var(unbiased=False)), rel_tol=1e-6)
    scores = fedtlu_scores(
        {"a": x, "b": x * 10, "c": torch.ones(3), "d": torch.tensor([5.0])},
        {"a": "layer.0", "b": "layer.0", "c": "layer.1", "d": "head"},
    )
    assert math.isclose(scores["layer.0"], 2 * expected, rel_tol=1e-6)  # scale-free: x and 10x score the same
    assert scores["layer.1"] == 0.0 and scores["head"] == 0.0  # zero spread, one entry: undefined, 0


@pytest.mark.parametrize(
    ("mean_sq", "energy", "weight_sq", "expected"),
    [
        (4.0, 4.0, 100.0, 0.2),  # all workers agree (ρ = 0): relative size 0.2
        (4.0, 8.0, 100.0, 0.1),  # half the energy cancels
        (0.0, 8.0, 100.0, 0.0),  # everything cancels
        (4.0, 0.0, 100.0, 0.0),  # no energy: undefined, 0
    ],
)
def test_agreement_score(mean_sq: float, energy: float, weight_sq: float, expected: float) -> None:
    got = agreement_scores({"b": mean_sq}, {"b": energy}, {"b": weight_sq})["b"]
    assert math.isclose(got, expected, abs_tol=1e-12)


def test_top_k_by_score_keeps_the_head_and_model_order() -> None:
    scores = {"embeddings": 0.1, "layer.0": 0.5, "layer.1": 0.9, "layer.2": 0.2, "layer.3": 0.7}
    got = select("agreement", BLOCKS, HEAD, scores, k=2, round_number=1, last_trained={}, refresh_every=100)
    assert got == ["layer.1", "layer.3", "head"]
    assert select("full", BLOCKS, HEAD, scores, 2, 1, {}, 100) == BLOCKS
    assert select("fedtlu", BLOCKS, HEAD, scores, 0, 1, {}, 100) == BLOCKS  # k = 0: everything


def test_byte_budget() -> None:
    scores = {"embeddings": 0.9, "layer.0": 0.8, "layer.1": 0.7, "layer.2": 0.1, "layer.3": 0.05}
    sizes = {"embeddings": 100, "layer.0": 30, "layer.1": 30, "layer.2": 30, "layer.3": 30}
    got = select(
        "fedtlu",
        BLOCKS,
        HEAD,
        scores,
        k=1,
        round_number=1,
        last_trained={},
        refresh_every=100,
        sizes=sizes,
        budget=70,
    )
    assert got == ["layer.0", "layer.1", "head"]  # the embeddings do not fit; the next best that do


def test_random_is_seeded_and_picks_k() -> None:
    a = select("random", BLOCKS, HEAD, {}, 2, 3, {}, 100, rng=random.Random(7))
    b = select("random", BLOCKS, HEAD, {}, 2, 3, {}, 100, rng=random.Random(7))
    assert a == b and len(a) == 3 and "head" in a


@pytest.mark.parametrize("policy", ["random", "fedtlu", "agreement"])
@pytest.mark.parametrize("refresh_every", [2, 3, 5])
def test_no_block_starves(policy: str, refresh_every: int) -> None:
    """Over many rounds with fixed scores, every block trains at least every refresh_every rounds."""
    scores = {"embeddings": 0.0, "layer.0": 0.0, "layer.1": 0.9, "layer.2": 0.8, "layer.3": 0.0}
    last: dict[str, int] = {}
    rng = random.Random(0)
    for rnd in range(1, 40):
        chosen = select(
            policy,
            BLOCKS,
            HEAD,
            scores,
            k=1,
            round_number=rnd,
            last_trained=last,
            refresh_every=refresh_every,
            rng=rng,
        )
        assert "head" in chosen
        for b in chosen:
            last[b] = rnd
        for b in BLOCKS:
            assert rnd - last.get(b, 0) < refresh_every or rnd < refresh_every, (b, rnd, last)


def test_bad_arguments_list_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="full, random, fedtlu, agreement"):
        select("best", BLOCKS, HEAD, {}, 1, 1, {}, 3)
    with pytest.raises(ValueError, match="refresh_every"):
        select("fedtlu", BLOCKS, HEAD, {}, 1, 1, {}, 0)


def test_block_scores_from_the_accumulator_match_the_formulas() -> None:
    from strata.aggregate import FedAvgAccumulator
    from strata.selection import block_scores

    g = torch.Generator().manual_seed(0)
    block_of = {"a": "layer.0", "b": "layer.0", "c": "layer.1"}
    weights = {n: torch.randn(s, generator=g) for n, s in (("a", (8, 4)), ("b", (4,)), ("c", (16,)))}
    shared = {n: torch.randn(w.shape, generator=g) for n, w in weights.items()}
    # layer.0: workers agree (same direction); layer.1: two of them pull against each other
    deltas = [
        {n: shared[n] * (1 + k) if n != "c" else shared[n] * (1 if k < 2 else -1) for n in weights}
        for k in range(3)
    ]
    samples = [10, 30, 60]
    acc = FedAvgAccumulator()
    for d, n in zip(deltas, samples, strict=True):
        acc.accept(d, n)
    got = block_scores(acc.moments(), {n: float(w.pow(2).sum()) for n, w in weights.items()}, block_of)
    p = [n / sum(samples) for n in samples]
    mean = {n: sum(pk * d[n] for pk, d in zip(p, deltas, strict=True)) for n in weights}
    fed = fedtlu_scores(mean, block_of)
    for block, names in (("layer.0", ["a", "b"]), ("layer.1", ["c"])):
        m2 = sum(float(mean[n].pow(2).sum()) for n in names)
        e = sum(pk * sum(float(d[n].pow(2).sum()) for n in names) for pk, d in zip(p, deltas, strict=True))
        w2 = sum(float(weights[n].pow(2).sum()) for n in names)
        s = got[block]
        assert math.isclose(s.fedtlu, fed[block], rel_tol=1e-5)
        assert math.isclose(s.update_norm, math.sqrt(m2), rel_tol=1e-6)
        assert math.isclose(s.consensus, m2 / e, rel_tol=1e-6)
        assert math.isclose(s.agreement, math.sqrt(m2 / w2) * m2 / e, rel_tol=1e-6)
    assert got["layer.0"].consensus > 0.8 > 0.3 > got["layer.1"].consensus
