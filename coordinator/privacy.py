"""A private federation's DP state, with one owner: which members a round samples, the mechanism each
round runs (clip S, expected participants m, noise), the ε spent so far, and the budget stop
(docs/methods.md section 6, docs/privacy.md).

The accounting is recomputed from the database: every round recorded as private is one application of
the Poisson-subsampled Gaussian mechanism with the (q, z) stored with it, whether it completed or not
(a round that released nothing is counted all the same: the bound stays sound). A restart resumes the
clip of adaptive clipping from the last round that set one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from coordinator.aggregators import PrivateAggregator
from coordinator.round import Round
from coordinator.settings import CoordinatorSettings
from coordinator.store import Store
from strata import accountant, privacy

T = TypeVar("T")


@dataclass(frozen=True)
class Mechanism:
    """What one private round does: clip to `clip`, divide by `expected`, noise σ = update_noise·clip on
    the sum, and (adaptive clipping) σ_b = count_noise on the count of unclipped updates."""

    clip: float
    expected: float
    noise_multiplier: float  # z, what the accountant composes
    update_noise: float  # z_Δ (= z without adaptive clipping)
    count_noise: float | None  # σ_b, None without adaptive clipping
    quantile: float = 0.5
    clip_lr: float = 0.2

    def next_clip(self, unclipped: float) -> float:
        return privacy.next_clip(self.clip, unclipped, self.expected, self.quantile, self.clip_lr)


class Privacy:
    def __init__(self, s: CoordinatorSettings, store: Store, fed_id: int) -> None:
        self.s = s
        self.store = store
        self.fed_id = fed_id
        self.rng = random.SystemRandom()  # who takes part must not be predictable from a seed

    def sample(self, online: Sequence[T]) -> list[T]:
        """Poisson sampling: each online member independently with probability q (all of them at q = 1)."""
        q = self.s.dp_sampling_rate
        return list(online) if q >= 1 else [m for m in online if self.rng.random() < q]

    def mechanism(self, members: int) -> Mechanism:
        """The mechanism of a round opening with `members` online members."""
        s = self.s
        clip = (self.store.last_next_clip(self.fed_id) if s.dp_adaptive_clip else None) or s.dp_clip
        m = privacy.expected_participants(s.dp_sampling_rate, members)
        return self._mechanism(clip, m, s.dp_noise_multiplier)

    def recorded(self, round_id: int) -> Mechanism:
        """The mechanism a round was opened with (a restart reopens it with the same)."""
        r = self.store.round_row(round_id)
        assert r.dp_clip is not None and r.dp_expected is not None and r.dp_noise_multiplier is not None
        return self._mechanism(r.dp_clip, r.dp_expected, r.dp_noise_multiplier)

    def _mechanism(self, clip: float, m: float, z: float) -> Mechanism:
        s = self.s
        if not s.dp_adaptive_clip:
            return Mechanism(clip, m, z, z, None)
        sigma_b = s.dp_count_noise or privacy.default_count_noise(z, m)
        z_update = privacy.update_noise_multiplier(z, sigma_b)
        return Mechanism(clip, m, z, z_update, sigma_b, s.dp_target_quantile, s.dp_clip_lr)

    def row_fields(self, mech: Mechanism) -> dict[str, object]:
        """The round row's fields for a round opened with `mech`."""
        return dict(
            private=True,
            dp_noise_multiplier=mech.noise_multiplier,
            dp_sampling_rate=self.s.dp_sampling_rate,
            dp_expected=mech.expected,
            dp_clip=mech.clip,
        )

    def closed(self, r: Round) -> dict[str, object]:
        """The round row's fields once private round `r` has aggregated: ε after it, and (adaptive
        clipping) the noised count of unclipped updates and the next round's clip."""
        agg = r.aggregator
        assert isinstance(agg, PrivateAggregator)
        out: dict[str, object] = {"dp_epsilon": self.epsilon()}  # this round's row is among the spent
        if agg.noised_unclipped is not None:
            out |= dict(
                dp_unclipped=agg.noised_unclipped, dp_next_clip=agg.mech.next_clip(agg.noised_unclipped)
            )
        return out

    def spent(self) -> list[accountant.Event]:
        """(q, z) of every private round recorded so far, oldest first."""
        return self.store.private_rounds(self.fed_id)

    def epsilon(self) -> float:
        """ε spent by the rounds recorded so far."""
        return accountant.epsilon(self.spent(), self.s.dp_delta)

    def over_budget(self, number: int) -> str | None:
        """Why round `number` must not open (its release would take ε past the target), or None."""
        s = self.s
        after = accountant.epsilon([*self.spent(), (s.dp_sampling_rate, s.dp_noise_multiplier)], s.dp_delta)
        if after <= s.dp_target_epsilon:
            return None
        return (
            f"privacy budget reached: round {number} would take ε to {after:.3g}, past the target "
            f"ε = {s.dp_target_epsilon:g} (δ = {s.dp_delta:g}); ε spent: {self.epsilon():.3g}"
        )

    def plan(self) -> str:
        """The ε the configured run will spend, for the operator before it starts."""
        s = self.s
        return accountant.plan_line(
            s.rounds, s.dp_sampling_rate, s.dp_noise_multiplier, s.dp_delta, s.dp_target_epsilon
        )
