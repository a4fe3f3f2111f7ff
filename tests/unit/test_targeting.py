"""Targeting across rounds: what each scheduling mode trains and applies, probes, the refresh bound,
validation with the valid choices, and a restart that resumes the same schedule."""

from __future__ import annotations

import pytest

from strata.layers import Block, BlockMap
from strata.selection import BlockScore
from strata.targeting import Targeting, TargetingConfig

NAMES = ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "head"]


def bmap() -> BlockMap:
    blocks = tuple(
        Block(n, "head" if n == "head" else ("embeddings" if n == "embeddings" else "layer"), i, (f"{n}.w",))
        for i, n in enumerate(NAMES)
    )
    sizes = {"embeddings": 1000, "layer.0": 100, "layer.1": 100, "layer.2": 100, "layer.3": 100, "head": 10}
    return BlockMap("test", blocks, {f"{n}.w": n for n in NAMES}, sizes=sizes)


def scores(values: dict[str, float]) -> dict[str, BlockScore]:
    return {b: BlockScore(v, v, v, v, 1.0) for b, v in values.items()}


FAVOURS_TOP = {"embeddings": 0.1, "layer.0": 0.2, "layer.1": 0.3, "layer.2": 0.8, "layer.3": 0.9, "head": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(policy="best"), "choose one of full, random, fedtlu, agreement"),
        (dict(policy="fedtlu", blocks=2, schedule="sometimes"), "choose one of pre-selected, server-masked"),
        (dict(policy="full", blocks=2), "policy 'full' trains every block"),
        (dict(policy="agreement"), "needs the number of blocks"),
        (dict(policy="random", blocks=2, budget=4000), "not both"),
        (dict(policy="fedtlu", blocks=2, refresh_every=0), "refresh_every"),
        (dict(policy="fedtlu", blocks=6), "choose 1 to 5"),
        (dict(policy="fedtlu", budget=100), "below the smallest block"),
    ],
)
def test_nonsense_is_refused_with_the_valid_choices(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Targeting(TargetingConfig(**kwargs), bmap())


def test_full_trains_and_applies_everything() -> None:
    t = Targeting(TargetingConfig(), bmap())
    plan = t.plan(3)
    assert plan.train == tuple(NAMES) and not plan.probe
    applied, outcomes = t.decide(3, plan, scores(FAVOURS_TOP))
    assert applied == NAMES and all(o.applied and o.trained and o.fresh for o in outcomes)


def test_pre_selected_probes_then_picks_top_k_from_earlier_scores() -> None:
    t = Targeting(TargetingConfig("agreement", blocks=2, probe_every=4, refresh_every=100), bmap())
    first = t.plan(1)
    assert first.probe and first.train == tuple(NAMES)
    applied, _ = t.decide(1, first, scores(FAVOURS_TOP))
    assert applied == NAMES
    second = t.plan(2)
    assert not second.probe and second.train == ("layer.2", "layer.3", "head")
    # the round's updates carry only those blocks; the others keep their earlier score, not fresh
    applied, outcomes = t.decide(2, second, scores({"layer.2": 0.05, "layer.3": 0.9, "head": 0.5}))
    assert applied == ["layer.2", "layer.3", "head"]
    by = {o.block: o for o in outcomes}
    assert by["layer.1"].score == 0.3 and not by["layer.1"].fresh and not by["layer.1"].trained
    assert by["layer.1"].agreement is None
    assert by["layer.2"].score == 0.05 and by["layer.2"].fresh
    assert t.plan(3).train == ("layer.1", "layer.3", "head")  # layer.2's new low score drops it
    assert t.plan(5).probe  # rounds 1, 5, 9, ... are probes


def test_server_masked_trains_everything_and_applies_the_top_k_of_this_round() -> None:
    t = Targeting(TargetingConfig("fedtlu", blocks=1, schedule="server-masked", refresh_every=100), bmap())
    plan = t.plan(1)
    assert plan.train == tuple(NAMES) and not plan.probe
    applied, outcomes = t.decide(1, plan, scores(FAVOURS_TOP))
    assert applied == ["layer.3", "head"]
    assert all(o.trained and o.fresh for o in outcomes)
    assert [o.block for o in outcomes if o.applied] == applied


def test_byte_budget_counts_fp32_bytes() -> None:
    t = Targeting(TargetingConfig("agreement", budget=4 * 250, refresh_every=100), bmap())
    t.decide(1, t.plan(1), scores(FAVOURS_TOP))
    assert t.plan(2).train == ("layer.2", "layer.3", "head")  # 2 x 100 elements fit in 250, a third does not


@pytest.mark.parametrize("schedule", ["pre-selected", "server-masked"])
@pytest.mark.parametrize("policy", ["random", "fedtlu", "agreement"])
def test_every_block_is_applied_at_least_every_r_rounds(policy: str, schedule: str) -> None:
    refresh = 4
    t = Targeting(
        TargetingConfig(policy, blocks=1, refresh_every=refresh, schedule=schedule, probe_every=0), bmap()
    )
    last = dict.fromkeys(NAMES, 0)
    for r in range(1, 41):
        plan = t.plan(r)
        carried = {b: v for b, v in FAVOURS_TOP.items() if b in plan.train}
        applied, _ = t.decide(r, plan, scores(carried))
        assert "head" in applied
        for b in applied:
            last[b] = r
        for b in NAMES:
            assert r - last[b] < refresh, f"{b} not applied since round {last[b]} (round {r})"


def test_random_is_reproducible_and_varies_by_round() -> None:
    cfg = TargetingConfig("random", blocks=2, refresh_every=100, probe_every=0, seed=7)
    a, b = Targeting(cfg, bmap()), Targeting(cfg, bmap())
    for t in (a, b):
        t.decide(1, t.plan(1), scores(FAVOURS_TOP))
    picks = [a.plan(r).train for r in range(2, 12)]
    assert picks == [b.plan(r).train for r in range(2, 12)]
    assert len(set(picks)) > 1 and all(len(p) == 3 and p[-1] == "head" for p in picks)


def test_restore_resumes_the_same_schedule() -> None:
    cfg = TargetingConfig("agreement", blocks=2, refresh_every=3, probe_every=0)
    live = Targeting(cfg, bmap())
    rows = []
    for r in range(1, 6):
        plan = live.plan(r)
        carried = {b: FAVOURS_TOP[b] / r for b in plan.train}
        _, outcomes = live.decide(r, plan, scores(carried))
        rows += [(r, o.block, o.applied, o.score) for o in outcomes]
    restarted = Targeting(cfg, bmap())
    restarted.restore(rows)
    assert [restarted.plan(r).train for r in range(6, 10)] == [live.plan(r).train for r in range(6, 10)]
    assert not restarted.plan(6).probe
