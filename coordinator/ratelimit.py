"""Per-token request rate limits: a token bucket for each worker token (`rate` requests a second on
average, bursts up to `burst`), checked by the auth interceptor before a handler runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # tokens added per second
    burst: float  # capacity
    tokens: float
    updated: float

    def allow(self, now: float) -> bool:
        """Take one token if there is one (refilled for the time since the last call)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """One bucket per key (a worker token's hash); `rate` 0 turns limiting off."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.buckets: dict[str, TokenBucket] = {}

    def allow(self, key: str) -> bool:
        if self.rate == 0:
            return True
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.allow(now)
