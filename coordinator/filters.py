"""Update filters: defences that refuse updates, as a chain the round consults, so a new defence is a new
filter and not an edit of the round loop. A filter may judge an update alone when it completes
(`on_complete`) and the round's accepted updates together when the round closes (`at_close`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from coordinator.updates import Spooled


class UpdateFilter:
    """A filter that refuses nothing; subclasses override one hook or both."""

    def on_complete(self, norm: float) -> str | None:
        """Why a complete update must be refused (None: keep it); before it is counted."""
        return None

    def at_close(self, updates: Sequence[Spooled]) -> dict[str, str]:
        """uid -> why, for accepted updates to take back out once the round has closed."""
        return {}


class NormBound(UpdateFilter):
    """Refuse an update whose L2 norm exceeds an absolute bound."""

    def __init__(self, bound: float) -> None:
        self.bound = bound

    def on_complete(self, norm: float) -> str | None:
        if norm > self.bound:
            return f"update norm {norm:.4g} exceeds the federation's bound {self.bound:g}"
        return None


class NormRatio(UpdateFilter):
    """Refuse, at close, updates whose norm exceeds `ratio` × the round's median (with 3 or more updates)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def at_close(self, updates: Sequence[Spooled]) -> dict[str, str]:
        if len(updates) < 3:
            return {}
        median = statistics.median(u.norm for u in updates)
        if median <= 0:
            return {}
        return {
            u.key: f"update norm {u.norm:.4g} exceeds {self.ratio:g} x the round's median {median:.4g}"
            for u in updates
            if u.norm > self.ratio * median
        }


def make_filters(max_update_norm: float, max_norm_ratio: float) -> list[UpdateFilter]:
    """The chain a federation's settings ask for (0 turns a bound off)."""
    chain: list[UpdateFilter] = []
    if max_update_norm:
        chain.append(NormBound(max_update_norm))
    if max_norm_ratio:
        chain.append(NormRatio(max_norm_ratio))
    return chain


def refuse_on_complete(chain: Sequence[UpdateFilter], norm: float) -> str | None:
    return next((why for f in chain if (why := f.on_complete(norm)) is not None), None)


def refuse_at_close(chain: Sequence[UpdateFilter], updates: Sequence[Spooled]) -> dict[str, str]:
    """Every filter judges the updates the ones before it kept."""
    refused: dict[str, str] = {}
    for f in chain:
        refused |= f.at_close([u for u in updates if u.key not in refused])
    return refused
