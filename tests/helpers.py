"""Test helpers: a coordinator served from a background thread, tiny models and worker data sets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coordinator.server import CoordinatorServer
from coordinator.settings import CoordinatorSettings
from dashboard_api.server import build_server
from strata import synthetic
from strata.data import write_examples, write_labels
from strata.modeling import make_tiny_model_dir
from strata.split import dirichlet_split

TOKENS = ["token-org-1-aaaaaaaa", "token-org-2-bbbbbbbb", "token-org-3-cccccccc"]


class ServedCoordinator:
    """A real CoordinatorServer on 127.0.0.1:0, its event loop in a thread; `join()` waits for it to end."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.server = CoordinatorServer(settings)
        self.error: BaseException | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self._started.wait(60):
            raise RuntimeError("coordinator did not start")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        async def main() -> None:
            orig_start = self.server.start

            async def start() -> int:
                port = await orig_start()
                self._started.set()
                return port

            self.server.start = start  # type: ignore[method-assign]
            await self.server.serve()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test
            self.error = exc
            self._started.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(30)

    def wait(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.stop()
            raise TimeoutError("the federation did not finish in time")
        if self.error is not None:
            raise self.error


@contextmanager
def served_dashboard(
    database_url: str, read_token: str | None = None, admin_key: str | None = None
) -> Iterator[str]:
    """The dashboard on `database_url` over HTTP on 127.0.0.1:0, in a thread: its base URL (ends with /)."""
    server = build_server(
        database_url, "127.0.0.1", 0, 3600.0, log_level="warning", read_token=read_token, admin_key=admin_key
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def coordinator_settings(
    tmp_path: Path, db_url: str, model_dir: Path, **overrides: Any
) -> CoordinatorSettings:
    return CoordinatorSettings.load(coordinator_values(tmp_path, db_url, model_dir, **overrides))


def coordinator_values(tmp_path: Path, db_url: str, model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The test coordinator's settings as plain values (for a process: `service_env(...)`)."""
    values: dict[str, Any] = dict(
        federation="test",
        listen="127.0.0.1:0",
        database_url=db_url,
        data_dir=tmp_path / "coord",
        model=model_dir,
        labels=",".join(synthetic.LABELS),
        rounds=2,
        min_workers=3,
        min_updates=3,
        round_timeout=60,
        worker_tokens=TOKENS,
        batch_size=16,
        learning_rate=1e-3,
        max_seq_len=32,
        max_steps=4,
        linger_seconds=2.0,
        grace_seconds=1.0,
        task_poll_seconds=2.0,
    )
    values.update(overrides)
    return values


def service_env(prefix: str, values: dict[str, Any], **extra: str) -> dict[str, str]:
    """This process's environment without any STRATA_ setting, plus `values` as STRATA_<PREFIX>_<NAME>
    variables (lists comma-separated): how a test starts a `strata` service as a process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    for k, v in values.items():
        env[f"STRATA_{prefix}_{k.upper()}"] = ",".join(v) if isinstance(v, list) else str(v)
    return env | extra


class CoordinatorProcess:
    """A `strata coordinator` process with these settings, optionally armed with a failpoint; a restart
    takes the same port, database and data folder. Its output goes to `<folder>/<name>-<start>.log`."""

    def __init__(self, values: dict[str, Any], folder: Path, name: str) -> None:
        self.values = {k: v for k, v in values.items() if v is not None}
        self.folder, self.name = folder, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}-{self.starts}.log"

    def start(self, failpoint: str | None = None) -> int:
        self.starts += 1
        port_file = self.folder / f"{self.name}.port"
        port_file.unlink(missing_ok=True)
        values = self.values | {"listen": f"127.0.0.1:{self.port}", "port_file": port_file}
        env = service_env("COORDINATOR", values, **({"STRATA_FAILPOINTS": failpoint} if failpoint else {}))
        self.folder.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "wb")  # noqa: SIM115 - the process owns it
        self.proc = proc = subprocess.Popen(
            [sys.executable, "-m", "strata.cli", "coordinator"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        wait_until(lambda: port_file.is_file() or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, self.text()
        self.port = int(port_file.read_text())
        return self.port

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def text(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def make_model(path: Path, seed: int = 0) -> Path:
    train, _ = synthetic.generate_splits(400, 10, seed=1)
    return make_tiny_model_dir(
        path,
        [e.text for e in train],
        synthetic.LABELS,
        seed=seed,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        vocab_size=600,
        max_len=32,
    )


def make_worker_data(root: Path, num_workers: int, per_worker: int = 60, seed: int = 0) -> list[Path]:
    train, _ = synthetic.generate_splits(per_worker * num_workers, 10, seed=seed)
    shards = dirichlet_split([e.label for e in train], num_workers, alpha=0.5, seed=seed, min_size=10)
    dirs = []
    for k, shard in enumerate(shards):
        d = root / f"org-{k + 1}"
        examples = [train[i] for i in shard]
        write_examples(d / "train.jsonl", examples[:-4])
        write_examples(d / "test.jsonl", examples[-4:])
        write_labels(d, synthetic.LABELS)
        dirs.append(d)
    return dirs


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def worker_values(address: str, token: str, name: str, data: Path, tmp_path: Path) -> dict[str, Any]:
    """A test worker's settings as plain values (for a process: `service_env("WORKER", ...)`)."""
    return dict(
        coordinator=address,
        token=token,
        name=name,
        data=data,
        cache_dir=tmp_path / name,
        device="cpu",
        progress=False,
        poll_seconds=2,
        connect_timeout=30,
    )


def make_workers(
    address: str,
    data_dirs: list[Path],
    tmp_path: Path,
    on_update: Any = None,
    extra: dict[str, Any] | None = None,
    tokens: list[str] | None = None,
) -> list[Any]:
    """One in-process Worker per data folder, named org-1, org-2, ... with the test tokens."""
    from worker.runner import Worker
    from worker.settings import WorkerSettings

    workers = []
    for k, d in enumerate(data_dirs):
        name = f"org-{k + 1}"
        s = WorkerSettings.load(
            worker_values(address, (tokens or TOKENS)[k], name, d, tmp_path) | (extra or {})
        )
        callback = (lambda task, result, name=name: on_update(name, task, result)) if on_update else None
        workers.append(Worker(s, on_update=callback))
    return workers


def run_to_done(workers: list[Any], timeout: float = 240) -> None:
    """Run every worker in its own thread until the federation is done; re-raise the first failure."""
    errors: list[BaseException] = []

    def go(w: Any) -> None:
        try:
            w.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]


def run_federation(
    settings: CoordinatorSettings, tmp_path: Path, workers: int = 3, extra: dict[str, Any] | None = None
) -> None:
    """Serve a coordinator with `settings` and run `workers` test workers (make_worker_data) to the end."""
    coord = ServedCoordinator(settings)
    running = make_workers(coord.address, make_worker_data(tmp_path / "data", workers), tmp_path, extra=extra)
    try:
        run_to_done(running)
    finally:
        for w in running:
            w.close()
    coord.wait()


def run_recording(address: str, tmp_path: Path) -> dict[str, list[tuple[Any, Any]]]:
    """Run three workers to the end; per worker name, every (task, result) it sent."""
    sent: dict[str, list[tuple[Any, Any]]] = {f"org-{k + 1}": [] for k in range(3)}
    workers = make_workers(
        address,
        make_worker_data(tmp_path / "data", 3),
        tmp_path,
        lambda name, task, res: sent[name].append((task, res)),
    )
    try:
        run_to_done(workers)
    finally:
        for w in workers:
            w.close()
    return sent
