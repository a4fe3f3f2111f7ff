"""`strata simulate --processes P`: the virtual workers' host processes on this machine (spawned), their
progress sent back over a queue."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import sys
from collections.abc import Callable
from typing import Any

from worker.settings import WorkerSettings
from worker.simulation_plan import Member

log = logging.getLogger("strata.simulate")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _child(
    settings: WorkerSettings, members: list[Member], process: int, threads: int, seed: int, events: Any
) -> None:
    """One host process: its virtual workers' rounds trained per name go back as the last event."""
    logging.basicConfig(
        level=logging.getLogger().level or logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S"
    )
    from worker.simulation import host_members

    try:
        trained = host_members(settings, members, process, threads, seed, events.put)
    except Exception as exc:  # noqa: BLE001 - the parent reports it with the process number
        events.put(("failed", process, f"{type(exc).__name__}: {exc}"))
        sys.exit(1)
    events.put(("done", process, trained))


def run_processes(
    settings: Any, groups: list[list[Member]], threads: int, on_trained: Callable[[Any], None]
) -> dict[str, int]:
    """Spawn one process per group, relay their progress to `on_trained`; the rounds each worker trained.
    A failed process stops the others (a simulation missing workers would measure something else)."""
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs = [
        ctx.Process(
            target=_child, args=(settings, group, p, threads, settings.seed, events), name=f"strata-sim-{p}"
        )
        for p, group in enumerate(groups)
    ]
    for proc in procs:
        proc.start()
    trained: dict[str, int] = {}
    finished: set[int] = set()
    failure: str | None = None
    try:
        while len(finished) < len(procs) and failure is None:
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                dead = [
                    p for p, proc in enumerate(procs) if p not in finished and proc.exitcode not in (None, 0)
                ]
                if dead:
                    failure = f"process {dead[0]} exited with code {procs[dead[0]].exitcode}"
                continue
            if isinstance(event, tuple) and event[0] == "done":
                finished.add(event[1])
                trained.update(event[2])
            elif isinstance(event, tuple) and event[0] == "failed":
                failure = f"process {event[1]}: {event[2]}"
            else:
                on_trained(event)
    finally:
        for proc in procs:
            if failure is not None or proc.exitcode is None:
                proc.join(5 if failure is None else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
    if failure is not None:
        raise RuntimeError(failure)
    return trained
