"""What `strata simulate --backend ray` puts on its progress queue."""

from __future__ import annotations

import pickle
import subprocess
import sys

from worker.simulate_ray import reporter
from worker.simulation import Trained


class _Queue:
    def __init__(self) -> None:
        self.items: list[object] = []

    def put(self, item: object) -> None:
        self.items.append(item)


def test_progress_reaches_the_queue_as_builtins_that_unpickle_without_importing_torch() -> None:
    queue = _Queue()
    reporter(queue)(Trained(1, "sim-0003", 2, 0.75, 1.5))
    assert queue.items == [(1, "sim-0003", 2, 0.75, 1.5)]
    assert Trained(*queue.items[0]) == Trained(1, "sim-0003", 2, 0.75, 1.5)  # (what the driver rebuilds)
    # the queue's actor is a bare Ray worker process: unpickling must not import the worker or torch
    probe = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print(sorted({'torch', 'worker'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], input=pickle.dumps(queue.items[0]), capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "[]"
