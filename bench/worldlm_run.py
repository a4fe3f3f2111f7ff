"""Running one tree of federations for bench.worldlm: coordinators in this process (real gRPC on
127.0.0.1, one SQLite database each) or as `python -m strata.cli coordinator` processes, workers in
threads of this process; afterwards each coordinator's rounds rows and its checkpoints are read back.

A `Node` is one coordinator. A node with `data` is a federation of workers (one per folder, named after
the folder); a node with `children` is a federation of federations; a child joins its parent as one
member with `inner_rounds` 1. Only the top node's `rounds` counts (a member runs until its parent is done).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select

from coordinator import checkpoint
from coordinator.settings import CoordinatorSettings
from coordinator.store import Store
from strata.data import Example
from strata.modeling import evaluate, load_model, load_tensors
from strata.storage.models import KeyWeight, Update, Worker
from strata.storage.models import Round as RoundRow
from tests.helpers import ServedCoordinator, run_to_done, service_env, worker_values


@dataclass
class Node:
    """One coordinator of the tree: its federation's name, its members, what it evaluates."""

    name: str
    data: list[Path] = field(default_factory=list)  # worker data folders (a federation of workers)
    children: list[Node] = field(default_factory=list)  # member federations
    eval_data: Path | None = None  # the held-out file this coordinator evaluates each version on
    extra: dict[str, Any] = field(default_factory=dict)  # settings of this node only (key blocks, ...)

    def members(self) -> list[str]:
        return [c.name for c in self.children] or [d.name for d in self.data]

    def walk(self, depth: int = 0) -> list[tuple[Node, int]]:
        """This node and every node under it, parents first, with their depth (0: the top)."""
        return [(self, depth)] + [x for c in self.children for x in c.walk(depth + 1)]


@dataclass
class Run:
    """What one run left: per coordinator its tier (depth), rounds rows, checkpoint folder, memory."""

    rounds: dict[str, list[dict[str, Any]]]
    tier: dict[str, int]
    ckpt: dict[str, Path]
    seconds: float
    rss: dict[str, dict[str, float]] = field(default_factory=dict)  # MiB: at start and peak (processes)
    key_weights: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # a parent's attention α


def token(name: str) -> str:
    return f"token-{name}-0123456789"


def coordinator_values(
    node: Node, parent: str | None, work: Path, common: dict[str, Any], listen: str
) -> dict[str, Any]:
    """The coordinator settings of `node` as plain values (None: left unset)."""
    folder = work / node.name
    n = len(node.members())
    values = dict(common) | dict(
        federation=node.name,
        listen=listen,
        database_url=f"sqlite:///{folder / 'strata.db'}",
        data_dir=folder,
        min_workers=n,
        min_updates=n,  # every member in every round: equal training in every arm
        worker_tokens=[token(m) for m in node.members()],
        eval_data=node.eval_data,
    )
    if parent is not None:  # task, labels and model come from the parent
        values |= dict(parent=parent, parent_token=token(node.name), inner_rounds=1, model=None, labels=None)
        values.pop("task", None)
    return values | node.extra


def make_workers(node: Node, address: str, work: Path) -> list[Any]:
    from worker.runner import Worker
    from worker.settings import WorkerSettings

    out = []
    for d in node.data:
        v = worker_values(address, token(d.name), d.name, d, work / "workers") | dict(
            eval_fraction=0.0, poll_seconds=1, connect_timeout=600
        )
        out.append(Worker(WorkerSettings.load(v)))
    return out


def run_tree(roots: Node | list[Node], common: dict[str, Any], work: Path, processes: bool = False) -> Run:
    """Run the trees under `roots` (several: side by side, independent) to their end; raise if a
    coordinator failed or a federation did not complete its rounds."""
    nodes = [x for r in ([roots] if isinstance(roots, Node) else roots) for x in r.walk()]
    started = time.monotonic()
    timeout = float(common["round_timeout"]) * (int(common["rounds"]) + 1)
    address: dict[str, str] = {}
    served: list[ServedCoordinator] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    watch = RssWatch()
    before = proc_status(os.getpid()).get("VmRSS", math.nan)
    workers: list[Any] = []
    parent_of = {c.name: n.name for n, _ in nodes for c in n.children}

    def start(node: Node) -> None:
        parent = address.get(parent_of.get(node.name, ""))
        if processes:
            port = free_port()
            values = coordinator_values(node, parent, work, common, f"127.0.0.1:{port}")
            procs[node.name] = start_process(values, work / node.name)
            address[node.name] = f"127.0.0.1:{port}"
        else:
            values = coordinator_values(node, parent, work, common, "127.0.0.1:0")
            served.append(ServedCoordinator(CoordinatorSettings.load(drop_none(values))))
            address[node.name] = served[-1].address

    try:
        # parents first: a member joins its parent as it starts; one at a time, since each migrates its
        # database with alembic, whose context is global to the process
        for node, _ in sorted(nodes, key=lambda nd: nd[1]):
            start(node)
        if processes:  # every process loads its model at once; a member retries until its parent listens
            for node, _ in nodes:
                wait_ready(procs[node.name], work / node.name)
                watch.add(node.name, procs[node.name].pid)
        for node, _ in nodes:
            workers += make_workers(node, address[node.name], work)
        run_to_done(workers, timeout=timeout)
        for c in reversed(served):
            c.wait(timeout)
        for name, p in procs.items():
            if p.wait(timeout) != 0:
                log = (work / name / "log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"coordinator {name} exited with {p.returncode}; its log ends:\n{log}")
    finally:
        for w in workers:
            w.close()
        for c in served:
            if c.thread.is_alive():
                c.stop()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        watch.stop()
    seconds = time.monotonic() - started
    rss = watch.result()
    if not processes:  # one process holds every coordinator and worker: only its whole RSS is known
        rss = {"(this process)": {"start": before, "peak": proc_status(os.getpid()).get("VmHWM", math.nan)}}
    rounds = {node.name: read_rounds(work / node.name, node.name) for node, _ in nodes}
    weights = {n.name: read_key_weights(work / n.name, n.name) for n, _ in nodes if n.children}
    want = int(common["rounds"])
    for name, rows in rounds.items():
        states = [r["state"] for r in rows]
        if states != ["completed"] * want:
            raise RuntimeError(f"federation {name}: rounds {states}, expected {want} completed")
    return Run(
        rounds,
        {n.name: d for n, d in nodes},
        {n.name: work / n.name / "checkpoints" / n.name for n, _ in nodes},
        seconds,
        rss,
        {k: v for k, v in weights.items() if v},
    )


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def read_rounds(folder: Path, name: str) -> list[dict[str, Any]]:
    store = Store(f"sqlite:///{folder / 'strata.db'}")
    try:
        fed = store.get_or_create_federation(name)
        return [
            dict(
                number=r.number,
                state=r.state,
                result_version=r.result_version,
                test_loss=r.test_loss,
                test_accuracy=r.test_accuracy,
                train_loss=r.train_loss,
                bytes_up=int(r.bytes_up or 0),
                bytes_down=int(r.bytes_down or 0),
                num_updates=r.num_updates,
                seconds=r.duration_seconds,
            )
            for r in store.rounds(fed.id)
        ]
    finally:
        store.close()


def read_key_weights(folder: Path, name: str) -> list[dict[str, Any]]:
    """A parent's recorded key-block weights: per round, block and member, α, its cosine and n_c."""
    store = Store(f"sqlite:///{folder / 'strata.db'}")
    try:
        fed = store.get_or_create_federation(name)
        with store.sessions() as s:
            rows = s.execute(
                select(
                    RoundRow.number,
                    KeyWeight.block,
                    Worker.name,
                    KeyWeight.weight,
                    KeyWeight.cosine,
                    Update.num_samples,
                )
                .join(RoundRow, RoundRow.id == KeyWeight.round_id)
                .join(Update, Update.id == KeyWeight.update_id)
                .join(Worker, Worker.id == Update.worker_id)
                .where(RoundRow.federation_id == fed.id)
                .order_by(RoundRow.number, KeyWeight.block, Worker.name)
            ).all()
        keys = ("round", "block", "member", "weight", "cosine", "samples")
        return [dict(zip(keys, r, strict=True)) for r in rows]
    finally:
        store.close()


# ---------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(values: dict[str, Any], folder: Path) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    values = drop_none(values) | dict(port_file=folder / "port", torch_threads=1)
    log = open(folder / "log", "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "strata.cli", "coordinator"],
        env=service_env("COORDINATOR", values),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_ready(proc: subprocess.Popen[bytes], folder: Path, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not (folder / "port").is_file():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(
                f"coordinator in {folder} did not start:\n{(folder / 'log').read_text()[-3000:]}"
            )
        time.sleep(0.2)


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB (Linux /proc)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


class RssWatch:
    """Polls each coordinator process's RSS: its value once it listens (model loaded) and its peak."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.seen: dict[str, dict[str, float]] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def add(self, name: str, pid: int) -> None:
        self.seen[name] = {"start": proc_status(pid).get("VmRSS", float("nan")), "peak": 0.0}
        self.pids[name] = pid

    def _poll(self) -> None:
        while not self.stopped.wait(0.25):
            for name, pid in list(self.pids.items()):
                hwm = proc_status(pid).get("VmHWM")
                if hwm is not None:
                    self.seen[name]["peak"] = max(self.seen[name]["peak"], hwm)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(2)

    def result(self) -> dict[str, dict[str, float]]:
        return self.seen


# ---------------------------------------------------------------------------------------- evaluation


class Evaluator:
    """Evaluates stored versions (checkpoints) on held-out examples with `strata.modeling.evaluate`,
    as a coordinator evaluates its own versions (same function, same max_seq_len)."""

    def __init__(self, model_dir: Path, labels: list[str], task: str, max_len: int) -> None:
        self.model, self.tokenizer = load_model(model_dir, labels, seed=0, task=task)
        self.max_len = max_len

    def __call__(self, ckpt: Path, version: int, examples: list[Example]) -> tuple[float, float]:
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            load_tensors(self.model, checkpoint.load(ckpt, version))
            return evaluate(self.model, self.tokenizer, examples, self.max_len)
        finally:
            torch.set_num_threads(threads)
