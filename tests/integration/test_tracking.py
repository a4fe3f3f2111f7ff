"""Experiment tracking of a real federation: the coordinator's and the workers' runs in a local MLflow store
(SQLite, no server) and in TensorBoard event files, read back with the libraries' own readers; a restart
continues the same run, and an unreachable tracking server holds no round up."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from coordinator.store import Store
from tests.helpers import coordinator_settings, make_worker_data, run_federation


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    # by step: a restart writes a new event file and the reader takes the files in name order; the
    # writers in one process within one second differ only by a counter, and "….10" sorts before "….9"
    return {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_federation_is_tracked_in_mlflow_and_tensorboard(tmp_path: Path, tiny_model: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fed.db'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tb = tmp_path / "tb"
    track = dict(mlflow_tracking_uri=uri, mlflow_experiment="exp-1", tensorboard_dir=tb)
    evals = make_worker_data(tmp_path / "eval", 1, per_worker=40)[0] / "train.jsonl"
    settings = coordinator_settings(
        tmp_path, db, tiny_model, federation="tracked", rounds=2, eval_data=evals, track_model=True, **track
    )
    run_federation(settings, tmp_path, extra=track)

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp-1")
    assert exp is not None
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"tracked", "tracked/org-1", "tracked/org-2", "tracked/org-3"}
    coord_run = runs["tracked"]
    assert coord_run.info.status == "FINISHED"
    assert coord_run.data.tags["strata.role"] == "coordinator"
    params = coord_run.data.params
    assert params["task"] == "sequence-classification" and params["policy"] == "full"
    rid = coord_run.info.run_id
    rounds = Store(db).rounds(Store(db).federation_by_name("tracked").id)  # type: ignore[union-attr]
    acc = history(client, rid, "test/accuracy")
    assert acc == [(r.number, r.test_accuracy) for r in rounds]  # what the database holds, per round
    assert [s for s, _ in history(client, rid, "bytes/up")] == [1, 2]
    blocks = [k for k in coord_run.data.metrics if k.startswith("divergence/")]
    assert blocks and all(coord_run.data.metrics[k] >= 0 for k in blocks)
    assert coord_run.data.metrics["applied/head"] == 1.0
    listed = [a.path for a in client.list_artifacts(rid, "export/model")]
    assert "export/model/config.json" in listed and "export/model/model.safetensors" in listed
    exported = json.loads(
        Path(client.download_artifacts(rid, "export/export.json", str(tmp_path))).read_text()
    )
    assert exported["version"] == 2 and exported["federation"] == "tracked"
    assert (tmp_path / "mlartifacts").is_dir()  # beside the SQLite store, not under the working folder

    w = runs["tracked/org-1"]
    assert w.info.status == "FINISHED" and w.data.tags["strata.worker"] == "org-1"
    assert [s for s, _ in history(client, w.info.run_id, "train/loss")] == [1, 2]
    assert history(client, w.info.run_id, "train/samples")[0][1] > 0

    events = scalars(tb / "tracked")
    assert [s for s, _ in events["test/accuracy"]] == [1, 2]  # TensorBoard keeps float32
    assert all(abs(x - y) < 1e-6 for (_, x), (_, y) in zip(events["test/accuracy"], acc, strict=True))
    assert [s for s, _ in events["round/updates"]] == [1, 2]
    assert [s for s, _ in scalars(tb / "tracked" / "org-2")["train/loss"]] == [1, 2]


def test_a_restart_continues_the_run_and_an_outage_holds_no_round_up(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'fed.db'}"
    good = f"sqlite:///{tmp_path / 'mlflow.db'}"
    down = "http://127.0.0.1:9"  # nothing listens: every call fails
    tb = tmp_path / "tb"

    def federation(rounds: int, uri: str) -> None:
        s = coordinator_settings(
            tmp_path,
            db,
            tiny_model,
            federation="again",
            rounds=rounds,
            mlflow_tracking_uri=uri,
            tensorboard_dir=tb,
        )
        run_federation(s, tmp_path)

    federation(1, good)
    state = json.loads((tmp_path / "coord" / "tracking" / "again.json").read_text())
    run_id = state["mlflow"]["run_id"]
    assert state["mlflow"]["logged"] == 1 and state["tensorboard"]["logged"] == 1
    federation(2, down)  # round 2 runs although MLflow cannot be reached; TensorBoard takes it
    state = json.loads((tmp_path / "coord" / "tracking" / "again.json").read_text())
    assert state["mlflow"] == {"run_id": run_id, "logged": 1, "params": True}
    assert state["tensorboard"]["logged"] == 2
    federation(3, good)  # the restart catches MLflow up on round 2, in the same run
    client = MlflowClient(tracking_uri=good)
    runs = client.search_runs([client.get_experiment_by_name("strata").experiment_id])  # type: ignore[union-attr]
    assert [r.info.run_id for r in runs] == [run_id]
    assert [s for s, _ in history(client, run_id, "round/updates")] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [s for s, _ in scalars(tb / "again")["round/updates"]] == [1, 2, 3]
