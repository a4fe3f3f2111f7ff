"""A worker spanning several devices: torchrun starts two processes (gloo on CPU), rank 0 talks to the
coordinator, both train under DistributedDataParallel, and the coordinator gets one update per round."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from coordinator.store import Store
from tests.helpers import (
    TOKENS,
    ServedCoordinator,
    coordinator_settings,
    make_worker_data,
    make_workers,
    run_to_done,
    service_env,
    worker_values,
)


def test_a_torchrun_worker_with_two_processes_sends_one_update_per_round(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'ddp.db'}"
    coord = ServedCoordinator(
        coordinator_settings(tmp_path, db, tiny_model, rounds=2, min_workers=2, min_updates=2)
    )
    data = make_worker_data(tmp_path / "data", 2, per_worker=120)
    plain = make_workers(coord.address, data[:1], tmp_path)
    runner = threading.Thread(target=run_to_done, args=(plain,))
    runner.start()
    values = worker_values(coord.address, TOKENS[1], "org-ddp", data[1], tmp_path) | dict(poll_seconds=1)
    env = service_env("WORKER", values, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "strata.cli", "worker"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    coord.wait(60)
    runner.join(60)
    for w in plain:
        w.close()
    assert "rank 1 of 2" in out and "rank 1: done after 2 round(s)" in out, out[-4000:]
    store = Store(db)
    rounds = store.rounds(1)
    assert [(r.state, r.num_updates) for r in rounds] == [("completed", 2), ("completed", 2)]
    (ddp,) = [w for w in store.workers(1) if w.name == "org-ddp"]
    ups = [u for r in rounds for u in store.updates(r.id) if u.worker_id == ddp.id]
    # one update a round, for all the organisation's examples (each rank trained half of them)
    assert [u.status for u in ups] == ["accepted", "accepted"]
    assert all(u.num_samples == ddp.num_samples for u in ups)
    store.close()
