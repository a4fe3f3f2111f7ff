"""The close pass: one read of the round's spooled updates, side by side, window by window.

When a round closes, three things may need the updates again, not only their sums: the updates a
filter refused at close must be subtracted from the sums, the divergence needs each worker's
⟨Δ_k, Δ̄⟩ (docs/methods.md section 1), and a robust aggregator reduces each window of K rows. All three
share this single pass: every spooled update is decoded once, its blocks re-cut into windows of WINDOW
elements on one grid per tensor (senders may choose other block sizes), and the windows of every update
that carries a tensor are handled together. Memory holds one window per update read side by side: all of
them for a robust aggregator, GROUP at a time otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from coordinator.aggregators import Aggregator
from coordinator.ingest import blocks_of
from coordinator.updates import Spooled

WINDOW = 1 << 18
#: updates read side by side for the dot products when no robust aggregator needs them all at once
GROUP = 8


def windows(blocks: Iterator[tuple[str, int, torch.Tensor]]) -> Iterator[tuple[str, int, torch.Tensor]]:
    """Re-cut (name, start, values) blocks into windows of WINDOW elements (a tensor's last one shorter)."""
    name: str | None = None
    buf: list[torch.Tensor] = []
    have = start = 0
    for block_name, _, values in blocks:
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


def close_pass(
    aggregator: Aggregator, accepted: Sequence[Spooled], refused: Sequence[Spooled], dots: bool
) -> dict[str, dict[str, float]]:
    """Subtract the `refused` updates (already retracted from the counts) from the sums, feed the
    aggregator's `reduce`, and (with `dots`) return ⟨Δ_k, Δ̄⟩ per accepted update and tensor, Δ̄ being
    the mean of the accepted updates (float64 dot products).

    Only a robust aggregator needs every update's window side by side. Otherwise the refused updates are
    subtracted first, and the dot products are taken GROUP updates at a time against the final mean (the
    same numbers): memory holds GROUP windows, not one per worker."""
    if aggregator.reads_spool:
        return _lockstep(aggregator, accepted, refused, dots)
    if refused:
        _lockstep(aggregator, [], refused, dots=False)
    out: dict[str, dict[str, float]] = {u.key: {} for u in accepted}
    if dots:
        for i in range(0, len(accepted), GROUP):
            out |= _lockstep(aggregator, accepted[i : i + GROUP], [], dots=True)
    return out


def _lockstep(
    aggregator: Aggregator, accepted: Sequence[Spooled], refused: Sequence[Spooled], dots: bool
) -> dict[str, dict[str, float]]:
    """One pass over these updates side by side, window by window (see close_pass)."""
    sums = aggregator.sums
    out: dict[str, dict[str, float]] = {u.key: {} for u in accepted}
    weight = {u.key: aggregator.weight(u) for u in refused}
    streams = {u.key: windows(blocks_of(u.path, sums.expected)) for u in [*accepted, *refused]}
    heads = {k: next(s, None) for k, s in streams.items()}
    while live := {k: h for k, h in heads.items() if h is not None}:
        name, start = min((h[0], h[1]) for h in live.values())
        group = {k: h[2] for k, h in live.items() if (h[0], h[1]) == (name, start)}
        for k in group:  # each stream moves on; its windows must come in (name, start) order
            nxt = heads[k] = next(streams[k], None)
            if nxt is not None and (nxt[0], nxt[1]) <= (name, start):
                raise ValueError(f"update {k}: {nxt[0]} is out of order in its spool file")
        buf = sums.sums.get(name)
        if buf is None:  # every update that carried it was refused
            continue
        n = next(iter(group.values())).numel()
        window = buf[start : start + n]
        for k, values in group.items():
            if k in weight:
                window.add_(values.to(window.dtype), alpha=-weight[k])
        rows = {k: v for k, v in group.items() if k not in weight}
        if dots and rows:
            mean = window.to(torch.float64) / sums.counts[name]
            for k, values in rows.items():
                out[k][name] = out[k].get(name, 0.0) + float(torch.dot(values.to(torch.float64), mean))
        if aggregator.reads_spool and rows:
            aggregator.reduce(name, start, torch.stack([rows[k] for k in sorted(rows)]))
    return out


def needs_pass(aggregator: Aggregator, refused: Sequence[Spooled], divergence: bool, accepted: int) -> bool:
    """Whether closing this round must read the spool at all."""
    return bool(refused) or (accepted > 0 and (aggregator.reads_spool or divergence))
