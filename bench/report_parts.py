"""Small pieces the reports of bench.worldlm, bench.privacy and bench.lora share."""

from __future__ import annotations

import math
from typing import Any

MB = 1e6


def ppl(loss: float | None) -> float:
    return math.inf if loss is None or loss > 700 else math.exp(loss)


def ok(items: dict[str, Any]) -> dict[str, Any]:
    """The arms (or levels) that ran to the end; the others carry an "error"."""
    return {k: v for k, v in items.items() if "error" not in v}


def failed(items: dict[str, Any], what: str) -> list[str]:
    bad = [
        f"- **{what} {k} failed**: `{' '.join(v['error'].split())}`" for k, v in items.items() if "error" in v
    ]
    return [*bad, ""] if bad else []


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
