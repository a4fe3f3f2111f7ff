"""Robust aggregation from the spool: the coordinate-wise median or trimmed mean of a round's updates,
computed window by window over the spooled files read in lockstep, so memory holds one window of each
update (K × WINDOW floats) and never a whole model per worker.

Each update's frames are decoded block by block and re-cut into windows of the same WINDOW elements
for every update (senders may choose other block sizes). Every update of a round must carry the same
tensors; they arrive sorted by name (the worker sends them so), and a stream that disagrees is an error.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from coordinator.ingest import feed
from strata.frames import Expected, FrameAssembler

WINDOW = 1 << 18
METHODS = ("mean", "median", "trimmed-mean")


def robust_reduce(stack: torch.Tensor, method: str, trim: float) -> torch.Tensor:
    """Reduce K rows (updates) to one, coordinate by coordinate (pure)."""
    k = stack.shape[0]
    if method == "median":
        if k % 2:
            return stack.median(dim=0).values
        ordered = stack.sort(dim=0).values  # the mean of the two middle values for an even count
        return (ordered[k // 2 - 1] + ordered[k // 2]) / 2
    if method == "trimmed-mean":
        cut = math.floor(trim * k)
        if k - 2 * cut < 1:
            cut = (k - 1) // 2
        ordered = stack.sort(dim=0).values
        return ordered[cut : k - cut].mean(dim=0)
    raise ValueError(f"unknown robust method {method!r}; choose one of {', '.join(METHODS[1:])}")


def _blocks(path: Path, expected: dict[str, Expected]) -> Iterator[tuple[str, torch.Tensor]]:
    """(tensor name, decoded values) of each block of a spooled update, in order."""
    ready: deque[tuple[str, torch.Tensor]] = deque()
    asm = FrameAssembler(expected, on_block=lambda name, _start, values: ready.append((name, values.clone())))
    for _ in feed(path, asm):
        while ready:
            yield ready.popleft()


def _windows(path: Path, expected: dict[str, Expected]) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(name, start, values) windows of WINDOW elements (the last of a tensor shorter), whatever the blocks."""
    name: str | None = None
    buf: list[torch.Tensor] = []
    have = start = 0
    for block_name, values in _blocks(path, expected):
        if block_name != name:
            if name is not None and have:
                yield name, start, torch.cat(buf)
            name, buf, have, start = block_name, [], 0, 0
        buf.append(values)
        have += values.numel()
        while have >= WINDOW:
            flat = torch.cat(buf)
            yield name, start, flat[:WINDOW]
            start += WINDOW
            rest = flat[WINDOW:]
            buf, have = ([rest] if rest.numel() else []), rest.numel()
    if name is not None and have:
        yield name, start, torch.cat(buf)


def robust_mean(
    paths: Sequence[Path], expected: dict[str, Expected], method: str, trim: float = 0.1
) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(name, start, robust values) window by window over the updates in `paths`."""
    streams = [_windows(p, expected) for p in paths]
    sentinel = ("", -1, torch.empty(0))
    while True:
        items = [next(s, sentinel) for s in streams]
        ended = [it[1] == -1 for it in items]
        if all(ended):
            return
        if any(ended) or len({(n, st, v.numel()) for n, st, v in items}) != 1:
            raise ValueError("the round's updates do not carry the same tensors in the same order")
        name, start, _ = items[0]
        yield name, start, robust_reduce(torch.stack([v for _, _, v in items]), method, trim)
