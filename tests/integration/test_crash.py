"""kill -9 the coordinator process at each point where a crash could hurt, restart it, and check that the
federation finishes with nothing lost and nothing applied twice, the workers carrying on by themselves.

The federations run the stateful server optimizer fedadam, so every version must also carry the
optimizer state (m, v) of the versions before it, restored after the restart: each version must be
exactly what an uninterrupted run computes from the same updates (docs/methods.md section 7).

The coordinator runs as a real `strata coordinator` process. A failpoint (strata.failpoints) makes it
SIGKILL itself at one exact instant of round 2 of 3; a second process on the same port, database and
data folder takes over. Three in-process workers train throughout and record every update they send.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator import checkpoint
from coordinator.store import Store
from strata import optimizers, tensorfile
from strata.member.replica import TrainResult
from strata.optimizers import ServerOptimizer
from strata.serde import RoundTask
from strata.storage.db import migrate
from tests.helpers import (
    TOKENS,
    ServedCoordinator,
    coordinator_settings,
    coordinator_values,
    make_worker_data,
    make_workers,
    run_to_done,
    service_env,
    wait_until,
    worker_values,
)

ROUNDS = 3
SERVER_LR = 0.05

# (failpoint, what the kill interrupts); every one of them fires in round 2
POINTS = [
    ("coordinator.push.receiving@5", "mid-upload: the first piece of round 2's second update is in"),
    ("coordinator.push.spooled@5", "an update is on disk, not yet recorded as accepted"),
    ("coordinator.push.recorded@5", "an update is recorded as accepted, its reply not yet sent"),
    ("coordinator.aggregate.applying@2", "mid-aggregation: the global model is half updated"),
    ("coordinator.checkpoint.writing@3", "mid-checkpoint: version 2's file is half written"),
    ("coordinator.checkpoint.written@3", "version 2's checkpoint is written, not yet renamed into place"),
    ("coordinator.round.closing@2", "version 2 is checkpointed, the database does not know it yet"),
    ("coordinator.round.closed@2", "round 2 is recorded; the spool is not yet pruned"),
]


def coordinator_env(
    tmp_path: Path, db: str, model: Path, listen: str, failpoint: str | None, optimizer: str
) -> dict[str, str]:
    values = coordinator_values(
        tmp_path,
        db,
        model,
        listen=listen,
        port_file=tmp_path / "port",
        rounds=ROUNDS,
        round_timeout=120,
        linger_seconds=3.0,
        task_poll_seconds=1.0,
        torch_threads=1,
        server_optimizer=optimizer,
        server_lr=SERVER_LR if optimizer != "fedavg" else 1.0,
    )
    return service_env("COORDINATOR", values, **({"STRATA_FAILPOINTS": failpoint} if failpoint else {}))


def start_coordinator(tmp_path: Path, env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    (tmp_path / "port").unlink(missing_ok=True)
    log = open(tmp_path / log_name, "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "strata.cli", "coordinator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_for_port(tmp_path: Path, proc: subprocess.Popen[bytes]) -> int:
    wait_until(lambda: (tmp_path / "port").is_file() or proc.poll() is not None, timeout=120)
    assert proc.poll() is None, (tmp_path / "coordinator-1.log").read_text()
    return int((tmp_path / "port").read_text())


def accepted(store: Store) -> dict[int, set[tuple[int, str]]]:
    """round number -> {(update id, worker name)} of the accepted updates."""
    out: dict[int, set[tuple[int, str]]] = {}
    names = {w.id: w.name for w in store.workers(1)}
    for r in store.rounds(1):
        out[r.number] = {(u.id, names[u.worker_id]) for u in store.updates(r.id) if u.status == "accepted"}
    return out


@pytest.mark.parametrize("failpoint", [p for p, _ in POINTS], ids=[p.split("@")[0][12:] for p, _ in POINTS])
def test_kill_9_then_restart_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, tiny_model: Path, failpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = f"sqlite:///{tmp_path / 'crash.db'}"
    migrate(db)
    crash_and_restart(tmp_path, db, tiny_model, failpoint, caplog, "fedadam")


def test_kill_9_mid_aggregation_with_plain_fedavg(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = f"sqlite:///{tmp_path / 'crash.db'}"
    migrate(db)
    crash_and_restart(tmp_path, db, tiny_model, "coordinator.aggregate.applying@2", caplog, "fedavg")


@pytest.mark.postgres
@pytest.mark.parametrize("failpoint", ["coordinator.round.closing@2"])
def test_kill_9_then_restart_on_postgresql(
    tmp_path: Path, db_url: str, tiny_model: Path, failpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the SQLite runs are above")
    crash_and_restart(tmp_path, db_url, tiny_model, failpoint, caplog, "fedadam")


def crash_and_restart(
    tmp_path: Path,
    db: str,
    tiny_model: Path,
    failpoint: str,
    caplog: pytest.LogCaptureFixture,
    optimizer: str,
) -> None:
    caplog.set_level(logging.INFO, logger="strata.worker")
    first = start_coordinator(
        tmp_path,
        coordinator_env(tmp_path, db, tiny_model, "127.0.0.1:0", failpoint, optimizer),
        "coordinator-1.log",
    )
    port = wait_for_port(tmp_path, first)

    sent: dict[str, list[tuple[RoundTask, TrainResult]]] = {f"org-{k}": [] for k in (1, 2, 3)}
    workers = make_workers(
        f"127.0.0.1:{port}",
        make_worker_data(tmp_path / "data", 3),
        tmp_path,
        lambda name, task, res: sent[name].append((task, res)),
        extra=dict(max_backoff=0.5, connect_timeout=120),
    )
    errors: list[BaseException] = []
    runner = threading.Thread(target=lambda: _run(workers, errors))
    runner.start()
    second = None
    try:
        assert first.wait(180) == -signal.SIGKILL, (tmp_path / "coordinator-1.log").read_text()[-3000:]
        store = Store(db)
        before = accepted(store)  # what the database held at the instant of the kill
        second = start_coordinator(
            tmp_path,
            coordinator_env(tmp_path, db, tiny_model, f"127.0.0.1:{port}", None, optimizer),
            "coordinator-2.log",
        )
        assert second.wait(240) == 0, (tmp_path / "coordinator-2.log").read_text()[-3000:]
        runner.join(60)
        assert not runner.is_alive() and not errors, errors
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        runner.join(5)
        for w in workers:
            w.close()

    log2 = (tmp_path / "coordinator-2.log").read_text()
    if "round.closed" not in failpoint:  # the restart reopened round 2 with what it had accepted
        assert f"round 2 reopened after a restart with the {len(before[2])} update(s)" in log2, log2[-3000:]
    if "push.recorded" in failpoint:  # (push.spooled may fire while the first row is still being written)
        assert before[2], "the kill came before any update of round 2 was recorded"
    if "push.recorded" in failpoint:  # the worker whose reply was lost sent it again: counted once
        assert "the coordinator already had this update; counted once" in caplog.text
    rounds = store.rounds(1)
    # every round completed exactly once, each on the version the one before produced
    assert [(r.number, r.state, r.base_version, r.result_version) for r in rounds] == [
        (n, "completed", n - 1, n) for n in range(1, ROUNDS + 1)
    ], log2[-3000:]
    assert store.federation(1).state == "completed" and store.federation(1).model_version == ROUNDS
    after = accepted(store)
    for number, ups in before.items():  # the updates the open round held survived the crash intact
        assert ups <= after[number]
    for number, ups in after.items():  # every worker counted once per round
        assert sorted(name for _, name in ups) == ["org-1", "org-2", "org-3"], (number, ups)
    # each worker trained once per round; each version is exactly the server optimizer's step on the
    # weighted mean of what was sent, with the optimizer state of every round before it
    for name, items in sent.items():
        assert sorted(task.round for task, _ in items) == list(range(1, ROUNDS + 1)), name
    ckpt = tmp_path / "coord" / "checkpoints" / "test"
    versions = [checkpoint.load(ckpt, v) for v in range(ROUNDS + 1)]
    opt = ServerOptimizer(optimizer, lr=SERVER_LR if optimizer != "fedavg" else 1.0)
    state: dict[str, dict[str, torch.Tensor]] = {}
    for rnd in range(1, ROUNDS + 1):
        updates = [next(res for task, res in sent[name] if task.round == rnd) for name in sorted(sent)]
        total = sum(u.num_samples for u in updates)
        base, new = versions[rnd - 1], versions[rnd]
        for tensor in base:
            mean = sum(u.delta[tensor].double() * u.num_samples for u in updates) / total
            step, state[tensor] = optimizers.step(opt, mean.float(), state.get(tensor))
            torch.testing.assert_close(
                new[tensor].double(), base[tensor].double() + step.double(), atol=1e-5, rtol=0
            )
    if optimizer != "fedavg":  # the last version's state is on disk, the older ones pruned
        saved = optimizers.unflatten_state(tensorfile.load(checkpoint.optimizer_path(ckpt, ROUNDS)))
        for tensor, parts in state.items():
            torch.testing.assert_close(saved[tensor]["m"], parts["m"], atol=1e-5, rtol=1e-4)
        assert [p.name for p in ckpt.glob("optimizer-v*")] == [checkpoint.optimizer_path(ckpt, ROUNDS).name]
    # nothing half-written is left behind
    leftovers = [p for p in (tmp_path / "coord").rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert not leftovers
    store.close()


def _run(workers: list[Any], errors: list[BaseException]) -> None:
    try:
        run_to_done(workers, timeout=400)
    except BaseException as exc:  # noqa: BLE001 - surfaced to the test
        errors.append(exc)


def test_a_worker_killed_mid_upload_is_discarded_whole_and_rejoins_when_restarted(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    settings = coordinator_settings(tmp_path, db, tiny_model, rounds=2, min_workers=3, min_updates=3)
    coord = ServedCoordinator(settings)
    data = make_worker_data(tmp_path / "data", 3)
    values = worker_values(coord.address, TOKENS[2], "org-3", data[2], tmp_path)
    env = service_env("WORKER", values | dict(poll_seconds=1, max_backoff=0.5))
    cmd = [sys.executable, "-m", "strata.cli", "worker"]
    workers = make_workers(coord.address, data[:2], tmp_path)
    errors: list[BaseException] = []
    runner = threading.Thread(target=lambda: _run(workers, errors))
    runner.start()
    with open(tmp_path / "worker-1.log", "wb") as log1:
        killed = subprocess.run(
            cmd,
            env=env | {"STRATA_FAILPOINTS": "worker.push.streaming"},
            stdout=log1,
            stderr=subprocess.STDOUT,
            timeout=180,
        )
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "worker-1.log").read_text()[-3000:]
    with open(tmp_path / "worker-2.log", "wb") as log2:
        again = subprocess.run(cmd, env=env, stdout=log2, stderr=subprocess.STDOUT, timeout=240)
    assert again.returncode == 0, (tmp_path / "worker-2.log").read_text()[-3000:]
    coord.wait(120)
    runner.join(60)
    for w in workers:
        w.close()
    assert not errors, errors
    store = Store(db)
    rounds = store.rounds(1)
    assert [(r.number, r.state, r.num_updates) for r in rounds] == [(1, "completed", 3), (2, "completed", 3)]
    names = {w.id: w.name for w in store.workers(1)}
    first = [(names[u.worker_id], u.status, u.reject_reason or "") for u in store.updates(rounds[0].id)]
    cut = [u for u in first if u[1] != "accepted"]
    assert len(cut) == 1 and cut[0][0] == "org-3" and "stream ended" in cut[0][2], first
    assert sorted(n for n, status, _ in first if status == "accepted") == ["org-1", "org-2", "org-3"]
    assert not [p for p in (tmp_path / "coord").rglob("*.partial")]
    store.close()
