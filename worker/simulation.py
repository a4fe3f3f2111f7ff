"""One process of `strata simulate`: its virtual workers, each a real worker with its own identity, token,
gRPC channel, data shard and error-feedback state, training one after another on one shared model copy."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from strata.member.download import ModelCopy
from strata.member.upload import Pending
from strata.memory import tune_malloc
from strata.serde import RoundTask
from worker.runner import Worker
from worker.settings import WorkerSettings
from worker.simulation_plan import Member, Pool, local_data, read_pool

log = logging.getLogger("strata.simulate")


@dataclass(frozen=True, slots=True)
class Trained:
    """What a host reports when one of its virtual workers delivered a round's update."""

    process: int
    name: str
    round: int
    loss: float
    seconds: float  # its local training time


Report = Callable[[Trained], Any]


class Host:
    """What the virtual workers of one process share: the model copy, and the right to train.

    Only one of them trains at a time (the copy holds the global version between trainings: `train`
    restores it), and at most `in_flight` trained updates wait for their upload, so memory stays that of
    one worker plus the updates on the wire, whatever the number of virtual workers."""

    def __init__(self, in_flight: int = 2) -> None:
        self.copy: ModelCopy | None = None  # the first virtual worker's, then everyone's
        self.done = threading.Event()  # one of them heard DONE: the federation is over
        self.training = threading.Lock()
        self.uploads = threading.BoundedSemaphore(in_flight)


class VirtualWorker(Worker):
    """A worker whose training waits its turn on the host's shared model copy; its upload overlaps the
    next one's training."""

    def __init__(self, settings: WorkerSettings, host: Host, process: int, report: Report | None) -> None:
        self.host = host
        self.process = process
        self.report_to = report
        super().__init__(settings, copy=host.copy)
        host.copy = self.copy
        self.client.abandon = host.done.is_set

    def run(self) -> int:
        """Serve rounds until DONE. A coordinator gone once another virtual worker of this process heard DONE
        (it stops serving when all it knows were told, or its linger ends) ends this one too."""
        try:
            rounds = super().run()
        except grpc.RpcError as err:
            if not self.host.done.is_set() or err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            log.info("%s: the federation finished and its coordinator is gone", self.s.name)
            return self.rounds_done
        self.host.done.set()
        return rounds

    def adapter(self, reply: Any) -> None:
        with self.host.training:  # a LoRA federation: one base model download and replica per process
            super().adapter(reply)

    def run_round(self, task: RoundTask) -> None:
        with self.host.uploads:
            with self.host.training:
                pending: Pending = self.prepare(task)
            self.pending = pending
            self.deliver()
        if self.report_to is not None:
            result = pending.result
            self.report_to(Trained(self.process, self.s.name, task.round, result.loss, result.seconds))


def host_members(
    settings: WorkerSettings,
    members: list[Member],
    process: int,
    threads: int,
    seed: int = 0,
    report: Report | None = None,
) -> dict[str, int]:
    """Run these virtual workers to the end of the federation in this process: rounds trained per worker.
    A failing virtual worker stops nothing but itself; the first failure is raised at the end."""
    tune_malloc()
    if threads:
        torch.set_num_threads(threads)
    pool: Pool | None = (
        read_pool(settings.data) if settings.data is not None and members[0].file is None else None
    )
    host = Host()
    workers = []
    for m in members:
        # each virtual worker trains without a bar of its own: `progress` is the simulation's round bar
        s = settings.model_copy(
            update={"name": m.name, "token": type(settings.token)(m.token), "progress": False}
        )
        w = VirtualWorker(s, host, process, report)
        w.data, w.local_labels = local_data(m, pool, settings.eval_fraction, seed)
        workers.append(w)
    del pool
    device = workers[0].copy.device
    log.info("process %d: %d virtual worker(s) on %s, %d thread(s)", process, len(workers), device, threads)
    errors: dict[str, BaseException] = {}

    def run(w: VirtualWorker) -> None:
        try:
            w.run()
        except BaseException as exc:  # noqa: BLE001 - reported below, with the worker's name
            log.error("%s stopped: %s", w.s.name, exc)
            errors[w.s.name] = exc

    started = time.monotonic()
    pool_threads = [threading.Thread(target=run, args=(w,), name=w.s.name, daemon=True) for w in workers]
    for t in pool_threads:
        t.start()
    for t in pool_threads:
        t.join()
    for w in workers:
        w.close()
    log.info("process %d: done in %.1fs", process, time.monotonic() - started)
    if errors:
        name, exc = next(iter(errors.items()))
        raise RuntimeError(f"{len(errors)} virtual worker(s) failed; {name}: {exc}") from exc
    return {w.s.name: w.rounds_done for w in workers}
