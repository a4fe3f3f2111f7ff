"""The coordinator's experiment tracking (strata/tracking.py, docs/tracking.md): the federation's settings as
parameters, each finished round's metrics (test and train, bytes, timings, each block's divergence, score
and whether it was applied, ε when private) with the round number as the step, and, when asked, the final
model as an artifact.

Rounds are read back from the database after they are recorded, in a background task the round loop
wakes, so a slow or unreachable tracking server never holds a round up, and nothing is logged that a crash
could take back. A restart catches up from where each sink stopped."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.store import Store
from strata.modeling import perplexity
from strata.storage.models import Round, RoundBlock, RoundState
from strata.tracking import Tracker, flatten

if TYPE_CHECKING:
    from coordinator.settings import CoordinatorSettings

log = logging.getLogger("strata.coordinator")

#: Round columns logged as they are, by metric name
ROUND_FIELDS = {
    "test/accuracy": "test_accuracy",
    "test/loss": "test_loss",
    "train/accuracy": "train_accuracy",
    "train/loss": "train_loss",
    "round/updates": "num_updates",
    "round/samples": "num_samples",
    "round/update_norm": "update_norm",
    "round/noise_floor": "noise_floor",
    "bytes/up": "bytes_up",
    "bytes/down": "bytes_down",
    "bytes/up_fp32": "raw_bytes_up",
    "bytes/down_fp32": "raw_bytes_down",
    "time/round_seconds": "duration_seconds",
    "time/aggregate_seconds": "aggregate_seconds",
    "time/eval_seconds": "eval_seconds",
    "privacy/epsilon": "dp_epsilon",
    "privacy/clip": "dp_clip",
    "privacy/noise_multiplier": "dp_noise_multiplier",
    "privacy/expected_members": "dp_expected",
}
#: RoundBlock columns logged per block, as "<metric>/<block>"
BLOCK_FIELDS = {
    "divergence": "divergence",
    "cancelled": "cancelled",
    "block_norm": "update_norm",
    "score": "score",
    "lora_discarded": "lora_discarded",
}
STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def round_metrics(r: Round, blocks: Iterable[RoundBlock], causal: bool = False) -> dict[str, float]:
    """What one finished round logs: its columns, its blocks' divergence D, cancelled share ρ, update norm,
    the policy's score and whether the block was trained and applied."""
    out = {name: float(getattr(r, col)) for name, col in ROUND_FIELDS.items() if getattr(r, col) is not None}
    out["round/failed"] = float(r.state == RoundState.FAILED.value)
    out["round/probe"] = float(r.probe)
    if r.raw_bytes_up and r.bytes_up:
        out["bytes/up_ratio"] = r.raw_bytes_up / r.bytes_up
    if causal and r.test_loss is not None:
        out["test/perplexity"] = perplexity(r.test_loss)
    for b in blocks:
        for name, col in BLOCK_FIELDS.items():
            value = getattr(b, col)
            if value is not None:
                out[f"{name}/{b.block}"] = float(value)
        out[f"trained/{b.block}"] = float(b.trained)
        out[f"applied/{b.block}"] = float(b.applied)
    return out


class FederationTracking:
    """The federation's run in MLflow and TensorBoard, its tracker built on first use."""

    def __init__(self, s: CoordinatorSettings, store: Store, fed_id: int, causal: bool) -> None:
        self.s, self.store, self.fed_id, self.causal = s, store, fed_id, causal
        self.tracker: Tracker | None = None
        self.settings: dict[str, Any] = {}
        self.wake = asyncio.Event()
        self.lock = threading.Lock()  # the watcher's thread may still be logging when close() runs
        self.state_path = s.data_dir / "tracking" / f"{s.federation}.json"

    def _tracker(self) -> Tracker:
        if self.tracker is None:
            fed = self.store.federation(self.fed_id)
            self.settings = flatten(fed.config or {}) | {"task": fed.task_kind, "model": fed.model_name}
            tags = {"strata.role": "coordinator", "strata.federation": self.s.federation}
            self.tracker = Tracker(self.s, self.s.federation, tags, self.state_path)
        return self.tracker

    def sync(self) -> None:
        """Log every finished round not yet logged, in order; stop at the first a sink refuses."""
        with self.lock:
            t = self._tracker()
            t.params(self.settings)  # the sinks that have not taken the settings yet
            for r in self.store.finished_rounds(self.fed_id, t.logged()):
                wall = r.closed_at.timestamp() if r.closed_at else None
                if not t.step(r.number, round_metrics(r, r.block_outcomes, self.causal), wall):
                    return

    def start(self) -> list[asyncio.Task[None]]:
        """The background task that logs; it starts with the settings and what a restart has not logged."""
        self.poke()
        return [asyncio.create_task(self.watch())]

    def poke(self) -> None:
        """A round was recorded: log it in the background."""
        self.wake.set()

    async def watch(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await asyncio.to_thread(self.sync)
            except Exception as exc:  # noqa: BLE001 - e.g. the database briefly down: the next round retries
                log.warning("experiment tracking: %s", exc)

    async def close(self, state: str | None) -> None:
        """The round loop ended: log what is left. If the federation ended (`state`, or failed as the
        database says) the run ends too, with the model when asked; a coordinator stopped for a restart
        leaves it running, to be continued."""
        await asyncio.to_thread(self._close, state)

    def _close(self, state: str | None) -> None:
        self.sync()
        t = self.tracker
        if state is None:
            failed = self.store.federation(self.fed_id).state == "failed"
            state = "failed" if failed else None
        if t is None or state is None:
            return
        if self.s.track_model and state == "completed":
            self._log_model(t)
        t.end(STATUS.get(state, "FINISHED"))

    def _log_model(self, t: Tracker) -> None:
        from coordinator.export import export

        with tempfile.TemporaryDirectory(prefix="strata-track-") as tmp:
            out = Path(tmp) / "export"
            try:
                info: dict[str, Any] = export(self.s, out)
            except (ValueError, FileNotFoundError, LookupError) as exc:
                log.warning("could not export the final model for tracking: %s", exc)
                return
            if t.artifacts(out, "export"):
                log.info(
                    "logged version %s of %s as a tracking artifact", info.get("version"), self.s.federation
                )
