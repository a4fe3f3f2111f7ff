"""Failpoints: named places in the code where a fault test makes the process die on the spot.

A failpoint does nothing unless the environment variable STRATA_FAILPOINTS names it, so the product pays
one dictionary lookup per point. The fault tests start a coordinator or worker *process* with, e.g.,

    STRATA_FAILPOINTS="coordinator.aggregate.applying@2"

and the process sends itself SIGKILL the second time it reaches that point: a real `kill -9` at an
exact instant (mid-upload, mid-aggregation, between a checkpoint's write and its rename, ...), which a
kill from outside could only hit by chance. Several points are separated by commas; `name` alone means
the first time it is reached.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "STRATA_FAILPOINTS"


def parse(spec: str) -> dict[str, int]:
    """{point: the hit (1-based) at which it fires} from "a.b@2,c.d"."""
    points: dict[str, int] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, at = item.partition("@")
        try:
            hit = int(at) if at else 1
        except ValueError:
            raise ValueError(f"{ENV}: {item!r} is not NAME or NAME@HIT") from None
        if hit < 1:
            raise ValueError(f"{ENV}: {item!r}: the hit counts from 1")
        points[name.strip()] = hit
    return points


_armed = parse(os.environ.get(ENV, ""))
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    """Reached `name`: if a test armed it and this is the hit it waits for, die at once (SIGKILL)."""
    if not _armed or name not in _armed:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _armed[name]:
        sys.stderr.write(f"failpoint {name} (hit {_hits[name]}): SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
