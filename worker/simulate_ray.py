"""`strata simulate --backend ray`: the virtual workers' host processes as Ray tasks, on a Ray cluster or
a local Ray started here (`pip install 'strata[ray]'`). Each task needs the package and the data path."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from worker.errors import WorkerError
from worker.settings import WorkerSettings
from worker.simulation_plan import Member

log = logging.getLogger("strata.simulate")


def _host(
    settings: WorkerSettings, members: list[Member], process: int, threads: int, seed: int, events: Any
) -> dict[str, int]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from worker.simulation import host_members

    return host_members(settings, members, process, threads, seed, reporter(events))


def reporter(events: Any) -> Callable[[Any], None]:
    """Put each Trained on the Ray queue as a tuple of builtins. The queue's actor unpickles what it
    holds, and a Trained would make it import worker.simulation, and so torch, first: a minute on a loaded
    machine, with every virtual worker blocked in put meanwhile, long enough for a coordinator's linger
    to end before they hear DONE."""

    def report(trained: Any) -> None:
        events.put(dataclasses.astuple(trained))

    return report


def run_on_ray(
    settings: Any, groups: list[list[Member]], threads: int, on_trained: Callable[[Any], None]
) -> dict[str, int]:
    """One Ray task per group (num_cpus = its torch threads), their progress relayed through a Ray queue."""
    try:
        import ray
        from ray.util.queue import Empty, Queue
    except ImportError:
        raise WorkerError("backend ray needs Ray: pip install 'strata[ray]'") from None
    from worker.simulation import Trained

    started_here = not ray.is_initialized()
    if started_here:
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=True)
        else:
            ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        events = Queue()
        task = ray.remote(num_cpus=threads, max_retries=0)(_host)
        pending = [task.remote(settings, g, p, threads, settings.seed, events) for p, g in enumerate(groups)]
        refs = list(pending)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            while True:
                try:
                    on_trained(Trained(*events.get(block=False)))
                except Empty:
                    break
        while not events.empty():
            on_trained(Trained(*events.get(block=False)))
        trained: dict[str, int] = {}
        try:
            for result in ray.get(refs):
                trained.update(result)
        except ray.exceptions.RayTaskError as exc:
            raise RuntimeError(f"a Ray task failed: {exc.cause if exc.cause else exc}") from None
        return trained
    finally:
        if started_here:
            ray.shutdown()
