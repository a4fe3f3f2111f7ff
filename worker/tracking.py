"""A worker's own experiment tracking (strata/tracking.py, docs/tracking.md): its local training per round
(loss, accuracy, samples, steps, seconds, bytes sent, local DP ε) and its evaluation of each global version
on its held-out split, under its own run `FEDERATION/WORKER`, with the round number as the step. Nothing of
it reaches the coordinator."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from strata import atomic
from strata.member.upload import Pending
from strata.tracking import Tracker, flatten
from worker.settings import WorkerSettings

log = logging.getLogger("strata.worker")


def round_values(p: Pending, local_eval: tuple[float, float] | None) -> dict[str, float]:
    """What a delivered update logs: its training, its bytes, and this round's local evaluation if any."""
    r = p.result
    values = {
        "train/loss": r.loss,
        "train/accuracy": r.accuracy,
        "train/samples": float(r.num_samples),
        "train/steps": float(r.num_steps),
        "time/train_seconds": r.seconds,
        "bytes/up": float(sum(e.payload_bytes for e in p.encoded.values())),
        "bytes/up_fp32": float(sum(t.numel() * 4 for t in r.delta.values())),
    }
    if r.local_epsilon:
        values["privacy/local_epsilon"] = r.local_epsilon
    if local_eval is not None:
        values["local_test/loss"], values["local_test/accuracy"] = local_eval
    return values


class Backlog:
    """Rounds a tracking outage held back, kept in a file written atomically (absent when empty), so a
    worker restarted during the outage still logs them, with the time each round was delivered."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[tuple[int, dict[str, float], float]] = []
        if path.is_file():
            self.items = [(int(r), dict(v), float(w)) for r, v, w in json.loads(path.read_text())]

    def _save(self) -> None:
        if self.items:
            atomic.write_text(self.path, json.dumps(self.items))
        else:
            self.path.unlink(missing_ok=True)

    def add(self, step: int, values: dict[str, float], wall: float) -> None:
        """Queue a round; the next flush writes it to the file if a sink does not take it at once."""
        self.items.append((step, values, wall))

    def flush(self, tracker: Tracker) -> bool:
        """Offer the rounds in order until a sink refuses one; True when none is left. The file is
        touched only while something waits or was waiting: no I/O per round when tracking works."""
        taken = 0
        while taken < len(self.items) and tracker.step(*self.items[taken]):
            taken += 1
        del self.items[:taken]
        if self.items or self.path.exists():
            self._save()
        return not self.items


class WorkerTracking:
    """The worker's run, its tracker built on first use; rounds a tracking outage held back are offered
    again after the next round, and after a restart."""

    def __init__(self, s: WorkerSettings, federation: str) -> None:
        self.s, self.federation = s, federation
        self.tracker: Tracker | None = None
        self.local_eval: tuple[float, float] | None = None  # the version evaluated before this round
        self.backlog = Backlog(s.cache_dir / federation / f"{s.name}-tracking-backlog.json")

    def _tracker(self) -> Tracker:
        s = self.s
        if self.tracker is None:
            tags = {"strata.role": "worker", "strata.federation": self.federation, "strata.worker": s.name}
            path = s.cache_dir / self.federation / f"{s.name}-tracking.json"
            self.tracker = Tracker(s, f"{self.federation}/{s.name}", tags, path)
        settings: dict[str, Any] = s.model_dump(
            include={"name", "device", "eval_fraction", "local_dp", "lora_rank", "quantize_base"}
        )
        self.tracker.params(flatten(settings) | {"federation": self.federation})
        return self.tracker

    def delivered(self, p: Pending) -> None:
        self.backlog.add(p.task.round, round_values(p, self.local_eval), time.time())
        self.local_eval = None
        self.backlog.flush(self._tracker())

    def done(self) -> None:
        t = self._tracker()
        self.backlog.flush(t)
        t.end("FINISHED")
