"""strata/tracking.py on its own: a run in a local MLflow folder store and in TensorBoard event files, read
back with the libraries' readers; a restart continues the run without logging a step twice, and a sink
that fails is offered the step again while the other goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from strata.tracking import MlflowSink, Tracker, TrackingSettings, flatten


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    # by step: each restart writes a new event file, read in name order, and the writers of one process
    # within one second differ only by a counter ("….10" sorts before "….9")
    return sorted((e.step, e.value) for e in acc.Scalars(tag))


def test_flatten_names_nested_settings_with_dots() -> None:
    assert flatten({"rounds": 5, "lora": {"rank": 8, "targets": ["q", "v"]}}) == {
        "rounds": 5,
        "lora.rank": 8,
        "lora.targets": ["q", "v"],
    }


def test_a_file_store_run_survives_a_restart_and_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the folder store behind this
    uri = (tmp_path / "mlruns").as_uri()
    s = TrackingSettings(mlflow_tracking_uri=uri, mlflow_experiment="e", tensorboard_dir=tmp_path / "tb")
    state = tmp_path / "state.json"
    t = Tracker(s, "fed", {"strata.role": "coordinator"}, state)
    assert t.params({"rounds": 5, "policy": "full", "lora.rank": 8})
    assert t.step(1, {"test/accuracy": 0.5, "nan": float("nan")}) and t.step(2, {"test/accuracy": 0.6})
    run_id = t.run_id
    assert run_id is not None and t.logged() == 2

    again = Tracker(s, "fed", {"strata.role": "coordinator"}, state)  # a restart
    assert again.params({"rounds": 7, "policy": "full", "lora.rank": 8})  # taken before: not logged again
    assert again.step(2, {"test/accuracy": 0.99})  # already taken by both sinks: skipped
    real = MlflowSink.metrics

    def down(self: Any, *args: Any) -> None:
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(MlflowSink, "metrics", down)
    assert not again.step(3, {"test/accuracy": 0.7})  # TensorBoard takes it, MLflow does not
    assert again.logged() == 2
    monkeypatch.setattr(MlflowSink, "metrics", real)
    assert again.step(3, {"test/accuracy": 0.7}) and again.logged() == 3
    again.end("FINISHED")

    client = MlflowClient(tracking_uri=uri)
    assert again.run_id == run_id
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "test/accuracy"))
    assert history == [(1, 0.5), (2, 0.6), (3, 0.7)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {
        "rounds": "5",
        "policy": "full",
        "lora.rank": "8",
    }
    assert "nan" not in run.data.metrics  # a non-finite value is left out
    got = scalars(tmp_path / "tb" / "fed", "test/accuracy")
    assert [step for step, _ in got] == [1, 2, 3]
    assert abs(got[1][1] - 0.6) < 1e-6


def test_a_sink_that_cannot_open_is_retried_and_the_other_goes_on(tmp_path: Path) -> None:
    s = TrackingSettings(mlflow_tracking_uri="http://127.0.0.1:9", tensorboard_dir=tmp_path / "tb")
    t = Tracker(s, "w", {}, tmp_path / "state.json")
    assert not t.step(1, {"train/loss": 1.0})
    assert t.state["tensorboard"]["logged"] == 1 and t.state.get("mlflow", {}).get("logged", 0) == 0
    assert scalars(tmp_path / "tb" / "w", "train/loss") == [(1, 1.0)]


def test_a_workers_backlog_survives_a_restart_during_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.tracking import Backlog

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    s = TrackingSettings(mlflow_tracking_uri=uri, mlflow_experiment="e", tensorboard_dir=tmp_path / "tb")
    state, held = tmp_path / "w-tracking.json", tmp_path / "w-tracking-backlog.json"
    real = MlflowSink.metrics

    def down(self: Any, *args: Any) -> None:
        raise ConnectionError("tracking server down")

    t = Tracker(s, "fed/w", {}, state)
    backlog = Backlog(held)
    backlog.add(1, {"train/loss": 1.0}, 1000.0)
    assert backlog.flush(t) and not held.exists()  # taken at once: nothing held back, no file
    monkeypatch.setattr(MlflowSink, "metrics", down)
    backlog.add(2, {"train/loss": 0.8}, 2000.0)
    backlog.add(3, {"train/loss": 0.6}, 3000.0)
    assert not backlog.flush(t) and held.is_file()  # MLflow is down: rounds 2 and 3 wait on disk

    # the worker is killed and restarted while the server is still down, then it comes back
    t2, again = Tracker(s, "fed/w", {}, state), Backlog(held)
    assert [step for step, _, _ in again.items] == [2, 3]
    monkeypatch.setattr(MlflowSink, "metrics", real)
    again.add(4, {"train/loss": 0.5}, 4000.0)
    assert again.flush(t2) and not held.exists() and t2.logged() == 4
    t2.end("FINISHED")

    history = MlflowClient(tracking_uri=uri).get_metric_history(t2.run_id, "train/loss")  # type: ignore[arg-type]
    assert sorted((m.step, m.value, m.timestamp) for m in history) == [
        (1, 1.0, 1_000_000), (2, 0.8, 2_000_000), (3, 0.6, 3_000_000), (4, 0.5, 4_000_000)
    ]  # fmt: skip
    assert [step for step, _ in scalars(tmp_path / "tb" / "fed/w", "train/loss")] == [1, 2, 3, 4]
