"""The per-token rate limit: bursts, the average rate, separate tokens, off at 0."""

from __future__ import annotations

import pytest

from coordinator.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_the_average_rate() -> None:
    clock = Clock()
    lim = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [lim.allow("a") for _ in range(4)] == [True, True, True, False]  # a burst of 3
    assert lim.allow("b")  # another token has its own bucket
    clock.t += 0.5  # one token back
    assert lim.allow("a") and not lim.allow("a")
    clock.t += 10  # refills only up to the burst
    assert sum(lim.allow("a") for _ in range(10)) == 3
    allowed = 0
    for _ in range(100):  # over 10 s at 10 calls a second, 2/s pass
        clock.t += 0.1
        allowed += lim.allow("a")
    assert allowed == pytest.approx(20, abs=1)


def test_zero_rate_is_off_and_nonsense_is_refused() -> None:
    lim = RateLimiter(rate=0, burst=1)
    assert all(lim.allow("a") for _ in range(1000))
    with pytest.raises(ValueError):
        RateLimiter(rate=-1, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)
