"""`strata simulate`: N virtual workers against a real coordinator over real gRPC, multiplexed over a few
processes on this machine (or Ray tasks on a Ray cluster), each process training its workers one after
another on one shared model copy (docs/simulation.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from worker.settings import WorkerSettings

log = logging.getLogger("strata.simulate")
PARTITIONS = ("iid", "dirichlet", "files")
BACKENDS = ("local", "ray")


class SimulateSettings(WorkerSettings):
    model_config = SettingsConfigDict(env_prefix="STRATA_SIMULATE_", extra="forbid", validate_default=True)
    toml_table = "simulate"

    name: str = Field(
        "sim",
        pattern=r"^[A-Za-z0-9_.\-]{1,100}$",
        description="Prefix of the virtual workers' names: NAME-0000, ...",
    )
    eval_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of each virtual worker's shard held out to evaluate every version on (0: none; the "
        "coordinator's test set evaluates the global model)",
    )
    progress: bool = Field(True, description="Show a progress bar of the virtual workers trained each round")
    workers: int = Field(8, ge=1, le=100_000, description="Virtual workers to simulate")
    processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Processes (or Ray tasks) hosting them, each with one shared model copy",
    )
    threads: int = Field(
        0, ge=0, description="Torch threads per process (0: this machine's cores / processes)"
    )
    tokens_file: Path | None = Field(
        None, description="One worker token per line, line k for virtual worker k (unset: all use --token)"
    )
    partition: str = Field(
        "iid",
        description="How --data is shared out: iid, dirichlet (label skew, --alpha) or files (--data is a folder "
        "holding one file per virtual worker, in name order)",
    )
    alpha: float = Field(
        0.5, gt=0, description="Dirichlet concentration of partition dirichlet (small: more skew)"
    )
    seed: int = Field(0, ge=0, description="Seed of the partition and of each shard's held-out share")
    backend: str = Field(
        "local", description="local: child processes here; ray: Ray tasks (pip install 'strata[ray]')"
    )
    ray_address: str | None = Field(
        None, description="backend ray: the cluster to join, e.g. ray://head:10001 (unset: start a local Ray)"
    )

    @model_validator(mode="after")
    def _check_simulation(self) -> SimulateSettings:
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition: unknown {self.partition!r}; valid: {', '.join(PARTITIONS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: unknown {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.eval_data is not None:
            raise ValueError(
                "eval_data: virtual workers evaluate on a held-out share of their own shard (--eval-fraction); "
                "evaluate the global model on the coordinator's test set instead"
            )
        if self.ray_address and self.backend != "ray":
            raise ValueError("ray_address: set --backend ray too")
        return self


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    SimulateSettings.add_command(
        sub,
        "simulate",
        help="simulate many workers against a coordinator",
        description="Run N virtual workers, each with its own name, token, data shard and error feedback, "
        "against a real coordinator over gRPC; each process trains its workers one after another on one "
        "shared model copy.",
        run=simulate,
    )


class RoundLines:
    """The live view: a bar of virtual workers trained in the current round, and one line per round."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.round = 0
        self.count = 0
        self.loss = 0.0
        self.started = time.monotonic()
        self.bar: Any = None
        self.lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        with self.lock:
            if event.round != self.round:
                self.close_round()
                self.round, self.count, self.loss, self.started = event.round, 0, 0.0, time.monotonic()
                if self.progress:
                    from tqdm import tqdm

                    self.bar = tqdm(
                        desc=f"round {event.round}", unit="worker", leave=False, dynamic_ncols=True
                    )
            self.count += 1
            self.loss += event.loss
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{self.loss / self.count:.4f}")

    def close_round(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.count:
            log.info(
                "round %d: %d virtual worker(s) trained, mean loss %.4f, %.1fs",
                self.round,
                self.count,
                self.loss / self.count,
                time.monotonic() - self.started,
            )


def simulate(s: SimulateSettings) -> int:
    from strata.data import DataError
    from strata.errors import MemberError
    from worker import simulation_plan as sp
    from worker.errors import WorkerError

    try:
        if s.data is None:
            raise WorkerError("data: give the data to share out (--data FILE or folder)")
        tokens = (
            sp.read_tokens(s.tokens_file, s.workers)
            if s.tokens_file
            else [s.token.get_secret_value()] * s.workers
        )
        if s.partition == "files":
            files = sp.shard_files(s.data)
            if len(files) != s.workers:
                raise WorkerError(
                    f"data: {s.data} holds {len(files)} data file(s) for {s.workers} virtual workers"
                )
            members = sp.plan(s.name, tokens, files=files)
            sizes = "own files"
        else:
            shards = sp.partition(sp.read_pool(s.data), s.workers, s.partition, s.alpha, s.seed)
            members = sp.plan(s.name, tokens, shards=shards)
            sizes = f"{min(map(len, shards))}–{max(map(len, shards))} examples each"
        groups = sp.assign(members, s.processes)
        threads = s.threads or max(1, (os.cpu_count() or 1) // len(groups))
        log.info(
            "simulating %d virtual worker(s) (%s, %s) in %d %s, %d thread(s) each, against %s",
            len(members),
            s.partition,
            sizes,
            len(groups),
            "Ray task(s)" if s.backend == "ray" else "process(es)",
            threads,
            s.coordinator,
        )
        lines = RoundLines(s.progress)
        started = time.monotonic()
        if s.backend == "ray":
            from worker.simulate_ray import run_on_ray

            trained = run_on_ray(s, groups, threads, lines)
        elif len(groups) == 1:
            from worker.simulation import host_members

            trained = host_members(s, groups[0], 0, threads, s.seed, lines)
        else:
            from worker.simulate_processes import run_processes

            trained = run_processes(s, groups, threads, lines)
        lines.close_round()
    except (WorkerError, MemberError, DataError, RuntimeError) as exc:
        print(f"strata simulate: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"strata simulate: coordinator answered {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    log.info(
        "simulation done: %d virtual worker(s), %d update(s) delivered, %.1fs",
        len(trained),
        sum(trained.values()),
        time.monotonic() - started,
    )
    return 0
