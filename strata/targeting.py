"""Targeted layer updates across rounds: which blocks a round trains, which it applies, and what the
federation learns about every block along the way (docs/methods.md section 2).

`TargetingConfig` is a federation's choice (policy, k or byte budget, refresh bound, scheduling mode)
and checks itself against the model's block map. `Targeting` holds the state between rounds (the last
round each block was applied, the latest score of each) and answers two questions:

- `plan(t)`: the blocks workers train in round t. server-masked: every block. pre-selected: every
  block in a probe round (round 1 and every `probe_every` rounds), otherwise the policy's choice from
  the scores of earlier rounds.
- `decide(t, plan, scores)`: after aggregation, the blocks whose mean update is applied, and one
  `BlockOutcome` per block for the round's record. server-masked applies the policy's choice from
  this round's scores; pre-selected applies what was trained.

The state is rebuilt from the stored outcomes with `restore`, so a restarted coordinator continues
where it was.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from strata.selection import POLICIES, BlockScore, select

if TYPE_CHECKING:
    from strata.layers import BlockMap

SCHEDULES = ("pre-selected", "server-masked")


@dataclass(frozen=True, slots=True)
class TargetingConfig:
    policy: str = "full"
    blocks: int = 0  # k: non-head blocks per round (0 with policy full)
    budget: int = 0  # or: raw fp32 bytes of the non-head blocks per round
    refresh_every: int = 5  # R: every block is applied at least once every R rounds
    schedule: str = "pre-selected"
    probe_every: int = (
        10  # pre-selected: a round that trains every block, every this many rounds (0: only round 1)
    )
    seed: int = 0

    def check(self) -> None:
        """Refuse choices that make no sense whatever the model; messages list the valid choices."""
        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule: unknown scheduling mode {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if self.blocks < 0 or self.budget < 0:
            raise ValueError("blocks and block_budget must be >= 0")
        if self.refresh_every < 1 or self.probe_every < 0:
            raise ValueError("refresh_every must be >= 1 and probe_every >= 0")
        if self.policy == "full":
            if self.blocks or self.budget:
                raise ValueError(
                    "blocks / block_budget: policy 'full' trains every block; give k or a budget only with "
                    f"one of {', '.join(p for p in POLICIES if p != 'full')}"
                )
            return
        if self.blocks and self.budget:
            raise ValueError("blocks and block_budget: choose top-k by count or by bytes, not both")
        if not self.blocks and not self.budget:
            raise ValueError(
                f"blocks: policy {self.policy!r} needs the number of blocks to train per round (--blocks K, "
                "K >= 1) or a byte budget (--block-budget)"
            )

    def check_model(self, bmap: BlockMap) -> None:
        """Refuse a k or budget this model cannot meet; the message lists the model's blocks."""
        self.check()
        body = [b.name for b in bmap.blocks if not b.is_head]
        if self.policy == "full":
            return
        listing = ", ".join(body)
        if not body:
            raise ValueError(f"policy {self.policy!r}: the model has no blocks besides the task head")
        if self.blocks > len(body):
            raise ValueError(
                f"blocks: k = {self.blocks} but the model has {len(body)} selectable blocks besides the head "
                f"({listing}); choose 1 to {len(body)}"
            )
        if self.budget:
            smallest = min(4 * bmap.sizes[b] for b in body)
            if self.budget < smallest:
                raise ValueError(
                    f"block_budget: {self.budget} bytes is below the smallest block ({smallest} bytes of fp32); "
                    "no block would ever be chosen by score"
                )


@dataclass(frozen=True, slots=True)
class RoundPlan:
    round: int
    train: tuple[str, ...]  # blocks workers train and send, in model order
    probe: bool  # pre-selected: every block trains, to refresh every score


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    """One block in one round: trained, applied, and its score (carried from an earlier round when the
    block was not trained: `fresh` is False then, and the measurements are None)."""

    block: str
    position: int
    trained: bool
    applied: bool
    score: float | None
    fresh: bool
    fedtlu: float | None = None
    agreement: float | None = None
    update_norm: float | None = None
    relative: float | None = None
    consensus: float | None = None


class Targeting:
    def __init__(self, config: TargetingConfig, bmap: BlockMap) -> None:
        config.check_model(bmap)
        self.config = config
        self.bmap = bmap
        self.names = bmap.names
        self.head = [b.name for b in bmap.blocks if b.is_head]
        self.last_applied: dict[str, int] = {}
        self.scores: dict[str, float] = {}

    @property
    def active(self) -> bool:
        """False for policy full: every round trains and applies every block."""
        return self.config.policy != "full"

    def restore(self, outcomes: Iterable[tuple[int, str, bool, float | None]]) -> None:
        """Rebuild the state from stored (round, block, applied, score) rows of completed rounds."""
        for round_number, block, applied, score in sorted(outcomes, key=lambda o: o[0]):
            if block not in self.names:
                continue
            if applied:
                self.last_applied[block] = max(self.last_applied.get(block, 0), round_number)
            if score is not None:
                self.scores[block] = score

    def is_probe(self, round_number: int) -> bool:
        """pre-selected only: round 1, a round with no scores yet (e.g. after a restart from scratch),
        and every `probe_every`-th round train every block, refreshing every score."""
        c = self.config
        if not self.active or c.schedule == "server-masked":
            return False
        periodic = bool(c.probe_every) and (round_number - 1) % c.probe_every == 0
        return round_number <= 1 or not self.scores or periodic

    def plan(self, round_number: int) -> RoundPlan:
        probe = self.is_probe(round_number)
        if not self.active or self.config.schedule == "server-masked" or probe:
            return RoundPlan(round_number, tuple(self.names), probe)
        return RoundPlan(round_number, tuple(self._choose(round_number, self.scores)), False)

    def _choose(self, round_number: int, scores: Mapping[str, float]) -> list[str]:
        c = self.config
        return select(
            c.policy,
            self.names,
            self.head,
            scores,
            k=c.blocks,
            round_number=round_number,
            last_trained=self.last_applied,
            refresh_every=c.refresh_every,
            sizes={b: 4 * n for b, n in self.bmap.sizes.items()},
            budget=c.budget,
            rng=random.Random(c.seed * 1_000_003 + round_number),
        )

    def describe(self, plan: RoundPlan) -> str:
        """What a round trains and applies, in words, for the round's log line."""
        if not self.active:
            return "every block (policy full)"
        c = self.config
        if c.schedule == "server-masked":
            return f"every block trains, {c.policy} chooses which apply (server-masked)"
        what = "probe: every block" if plan.probe else ", ".join(plan.train)
        return f"trains {len(plan.train)}/{len(self.bmap.names)} blocks ({what})"

    def decide(
        self, round_number: int, plan: RoundPlan, scores: Mapping[str, BlockScore]
    ) -> tuple[list[str], list[BlockOutcome]]:
        """The blocks to apply after aggregation, and every block's outcome; updates the state.

        `scores` holds the blocks the round's updates carried (a block no update carried has none).
        """
        c = self.config
        fresh = {b: s.of(c.policy) for b, s in scores.items()}
        trained = set(plan.train)
        if self.active and c.schedule == "server-masked":
            applied = set(self._choose(round_number, {**self.scores, **fresh}))
        else:
            applied = set(trained)
        applied &= set(scores)  # nothing is applied that no update carried
        self.scores.update(fresh)
        out = []
        for i, b in enumerate(self.names):
            s = scores.get(b)
            if b in applied:
                self.last_applied[b] = round_number
            out.append(
                BlockOutcome(
                    block=b,
                    position=i,
                    trained=b in trained,
                    applied=b in applied,
                    score=self.scores.get(b),
                    fresh=s is not None,
                    fedtlu=s.fedtlu if s else None,
                    agreement=s.agreement if s else None,
                    update_norm=s.update_norm if s else None,
                    relative=s.relative if s else None,
                    consensus=s.consensus if s else None,
                )
            )
        return [b for b in self.names if b in applied], out
