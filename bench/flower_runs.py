"""The runs of bench.flower: the reference data written as make_split.py writes it, Flower 1.41's
Deployment Runtime (one SuperLink, 8 SuperNodes, `flwr run`) in its own virtual environment, and Strata
(one coordinator process, 8 worker processes) over real gRPC; each sampled for memory while it runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.optimizers_data import Split, Workload, jsonl_bytes
from bench.simulate import children, rss

FLOWER_APP = Path(__file__).resolve().parent / "flower_app"
FLOWER_VERSION = "1.41.0"
MiB = 2**20


def write_data(wl: Workload, split: Split, folder: Path) -> str:
    """client_<k>.jsonl and test.jsonl as make_split.py writes them; checked against WORKLOAD.md's SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"client_{k}.jsonl": jsonl_bytes([{"text": e.text, "label": e.label} for e in s])
             for k, s in enumerate(split.shards)}  # fmt: skip
    files["test.jsonl"] = jsonl_bytes([{"text": e.text, "label": e.label} for e in wl.test])
    for name, data in files.items():
        want = wl.reference_hashes.get(name)
        if want and hashlib.sha256(data).hexdigest() != want:
            raise SystemExit(f"{name} differs from the SHA-256 in WORKLOAD.md: not the reference data")
        (folder / name).write_bytes(data)
    return split.check


class Sampler(threading.Thread):
    """Peak RSS, every 0.25 s, of named process trees: each tree's own peak and the peak of their sum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.roots: dict[str, list[int]] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.running = True

    def add(self, role: str, pid: int) -> None:
        self.roots.setdefault(role, []).append(pid)

    def tree(self, pid: int) -> int:
        total, stack = 0, [pid]
        while stack:
            p = stack.pop()
            total += rss(p)
            stack += children(p)
        return total

    def run(self) -> None:
        while self.running:
            now = {role: sum(self.tree(p) for p in pids) for role, pids in list(self.roots.items())}
            for role, v in now.items():
                self.peak[role] = max(self.peak.get(role, 0), v)
            self.peak_total = max(self.peak_total, sum(now.values()))
            time.sleep(0.25)

    def stop(self) -> dict[str, Any]:
        self.running = False
        self.join(2)
        return {
            "peak_mib": {k: v / MiB for k, v in self.peak.items()},
            "peak_total_mib": self.peak_total / MiB,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the process serving port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s")


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


def one_thread() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_flower(
    python: Path, data: Path, model: Path, work: Path, rounds: int, clients: int
) -> dict[str, Any]:
    """The reference workload on Flower's Deployment Runtime, as RESULTS-flower.md arranged it."""
    bindir = python.parent
    home = work / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "reference-local"\n\n[superlink.reference-local]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    results = work / "flower-results.json"
    overrides = work / "run-config.toml"
    overrides.write_text(
        f'num-server-rounds = {rounds}\ndata-dir = "{data}"\nmodel-dir = "{model}"\nresults = "{results}"\n'
    )
    env = one_thread() | {"FLWR_HOME": str(home), "PYTHONPATH": str(FLOWER_APP),
                          "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    sampler = Sampler()

    def start(role: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        out = open(logs / f"{role}-{len(procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        sampler.add(role, p.pid)
        return p

    started = time.monotonic()
    sampler.start()
    try:
        start("superlink", [str(bindir / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                            "--host", "127.0.0.1", "--port", str(port)])  # fmt: skip
        wait_for_port(port, procs[0])
        for k in range(clients):
            start("supernode", [str(bindir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                "--host", "127.0.0.1", "--port", str(free_port()),
                                "--node-config", f"partition-id={k} num-partitions={clients}"])  # fmt: skip
        time.sleep(5)
        submitted = time.monotonic()
        run = start("flwr-cli", [str(bindir / "flwr"), "run", str(FLOWER_APP), "reference-local", "--stream",
                                 "--run-config", str(overrides)])  # fmt: skip
        deadline = time.monotonic() + 3600 * 3
        while not results.is_file():
            if time.monotonic() > deadline:
                raise SystemExit("Flower did not finish in 3 hours; logs in " + str(logs))
            if run.poll() is not None and not results.is_file():
                time.sleep(5)
                if not results.is_file():
                    raise SystemExit(f"flwr run exited with {run.returncode} and no results; logs in {logs}")
            time.sleep(1)
        wall = time.monotonic() - started
        submit_to_results = time.monotonic() - submitted
    finally:
        stop_all(procs)
        memory = sampler.stop()
    out = json.loads(results.read_text())
    return out | {"wall": wall, "submit_to_results": submit_to_results, "memory": memory}


def run_strata(
    label: str, up: str, down: str, rank: int, base: bool, data: Path, model: Path, labels: list[str], work: Path,
    rounds: int, clients: int,
) -> dict[str, Any]:  # fmt: skip
    """The reference workload on Strata: a coordinator and `clients` worker processes over real gRPC."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tokens = [f"bench-flower-{k:02d}-token" for k in range(clients)]
    db = work / "strata.db"
    env = one_thread() | {"STRATA_COORDINATOR_WORKER_TOKENS": ",".join(tokens)}
    procs: list[subprocess.Popen[bytes]] = []
    sampler = Sampler()
    strata = [sys.executable, "-m", "strata.cli", "--log-level", "WARNING"]
    started = time.monotonic()
    sampler.start()
    try:
        coord = subprocess.Popen(
            [*strata, "coordinator", "--listen", "127.0.0.1:0", "--port-file", str(work / "port"),
             "--database-url", f"sqlite:///{db}", "--data-dir", str(work / "coord"), "--model", str(model),
             "--labels", ",".join(labels), "--eval-data", str(data / "test.jsonl"), "--rounds", str(rounds),
             "--min-workers", str(clients), "--min-updates", str(clients), "--round-timeout", "3600",
             "--local-epochs", "1", "--batch-size", "32", "--learning-rate", "5e-5", "--weight-decay", "0",
             "--max-seq-len", "64", "--seed", "0", "--encoding", up, "--down-encoding", down,
             "--lowrank-rank", str(rank), "--rate-limit", "0", "--torch-threads", "2", "--linger-seconds", "15",
             "--task-poll-seconds", "1"],
            env=env | {"OMP_NUM_THREADS": "2"}, stdout=open(work / "coordinator.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append(coord)
        sampler.add("coordinator", coord.pid)
        while not (work / "port").is_file():
            if coord.poll() is not None:
                raise SystemExit(
                    f"{label}: the coordinator exited with {coord.returncode}; see {work / 'coordinator.log'}"
                )
            time.sleep(0.2)
        address = f"127.0.0.1:{(work / 'port').read_text().strip()}"
        for k in range(clients):
            extra = ["--base-model", str(model)] if base else []
            w = subprocess.Popen(
                [*strata, "worker", "--coordinator", address, "--token", tokens[k], "--name", f"client-{k}",
                 "--data", str(data / f"client_{k}.jsonl"), "--eval-fraction", "0", "--cache-dir",
                 str(work / f"w{k}"), "--device", "cpu", "--no-progress", "--poll-seconds", "5", *extra],
                env=env, stdout=open(work / f"worker-{k}.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                start_new_session=True,
            )  # fmt: skip
            procs.append(w)
            sampler.add("workers", w.pid)
        for w in procs[1:]:
            if w.wait(3600 * 2) != 0:
                raise SystemExit(f"{label}: a worker exited with {w.returncode}; see {work}")
        wall = time.monotonic() - started
        coord.wait(120)
    finally:
        stop_all(procs)
        memory = sampler.stop()
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM rounds WHERE state = 'completed' ORDER BY number").fetchall()
    conn.close()
    rounds_out = [{"round": r["number"], "accuracy": r["test_accuracy"], "loss": r["test_loss"],
                   "seconds": r["duration_seconds"], "eval_s": r["eval_seconds"], "down": r["bytes_down"],
                   "up": r["bytes_up"], "train_loss": r["train_loss"], "replies": r["num_updates"]} for r in rows]  # fmt: skip
    return {"label": label, "rounds": rounds_out, "wall": wall, "memory": memory}
