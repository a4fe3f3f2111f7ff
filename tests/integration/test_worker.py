"""The worker: reconnection with backoff, local data checks, and the update stream it sends."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from strata.data import Example, write_examples, write_labels
from strata.member.client import backoff_delays
from tests.helpers import TOKENS, ServedCoordinator, coordinator_settings, make_worker_data
from worker.errors import WorkerError
from worker.local_data import LocalData, check_labels, load_local_data
from worker.runner import Worker
from worker.settings import WorkerSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    delays = backoff_delays(base=0.5, cap=4.0, seed=1)
    first = [next(delays) for _ in range(12)]
    assert all(0 <= d <= 4.0 for d in first)
    assert first[0] <= 0.5 and max(first[5:]) > 0.5  # later attempts may wait longer


def test_a_worker_started_before_its_coordinator_connects_when_it_comes_up(
    tmp_path: Path, tiny_model: Path
) -> None:
    port = _free_port()
    (data,) = make_worker_data(tmp_path / "data", 1)
    settings = WorkerSettings.load(
        dict(
            coordinator=f"127.0.0.1:{port}",
            token=TOKENS[0],
            name="early",
            data=data,
            cache_dir=tmp_path / "cache",
            device="cpu",
            progress=False,
            poll_seconds=2,
            connect_timeout=60,
            max_backoff=1.0,
        )
    )
    done: list[int] = []
    worker = Worker(settings)
    t = threading.Thread(target=lambda: done.append(worker.run()))
    t.start()
    time.sleep(1.5)  # the worker is retrying against a closed port meanwhile
    coord = ServedCoordinator(
        coordinator_settings(
            tmp_path,
            f"sqlite:///{tmp_path / 'w.db'}",
            tiny_model,
            listen=f"127.0.0.1:{port}",
            rounds=1,
            min_workers=1,
            min_updates=1,
        )
    )
    coord.wait(120)
    t.join(60)
    worker.close()
    assert done == [1]


def test_local_data_folder_and_label_checks(tmp_path: Path) -> None:
    d = tmp_path / "org"
    write_examples(d / "train.jsonl", [Example("good", 0), Example("bad", 1)] * 5)
    write_labels(d, ["neg", "pos"])
    data, labels = load_local_data(WorkerSettings.load(dict(data=d, eval_fraction=0.2)))
    assert labels == ["neg", "pos"] and len(data.train) == 8 and len(data.eval) == 2
    check_labels(data, labels, ["neg", "pos"])
    with pytest.raises(WorkerError, match="differ"):
        check_labels(data, labels, ["pos", "neg"])
    with pytest.raises(WorkerError, match="out of range"):
        check_labels(LocalData([Example("x", 3)], []), None, ["a", "b"])
    with pytest.raises(WorkerError, match="data"):
        load_local_data(WorkerSettings.load({}))


def test_update_stream_is_header_frames_end(tmp_path: Path) -> None:
    import torch

    from strata.member.replica import TrainResult
    from strata.member.upload import update_chunks
    from strata.serde import RoundTask, TrainingConfig

    delta = {"a": torch.randn(3000, 200), "b": torch.zeros(4)}
    task = RoundTask(1, 0, "h", 0.0, TrainingConfig(), "fp32", 1)
    parts = [c.WhichOneof("part") for c in update_chunks("w", task, TrainResult(delta, 5, 1, 0.1, 0.9, 0.2))]
    assert parts[0] == "header" and parts[-1] == "end"
    assert (
        parts.count("tensor") == 2 and parts.count("data") >= 3
    )  # 2.4 MB of noise needs several ≤1 MiB pieces
