"""A real federation: coordinator on 127.0.0.1:0, three workers over gRPC, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from coordinator import checkpoint
from coordinator.store import Store
from dashboard_api.app import create_app
from strata.member.replica import TrainResult
from strata.serde import RoundTask
from strata.storage.models import Federation, Round, Update
from strata.version import model_hash
from tests.helpers import (
    ServedCoordinator,
    coordinator_settings,
    make_worker_data,
    make_workers,
    run_to_done,
    wait_until,
)


def run_workers(
    address: str, data_dirs: list[Path], tmp_path: Path
) -> dict[str, list[tuple[RoundTask, TrainResult]]]:
    """Run one in-process Worker per data folder until DONE; return what each one sent, per round."""
    sent: dict[str, list[tuple[RoundTask, TrainResult]]] = {f"org-{k + 1}": [] for k in range(len(data_dirs))}
    workers = make_workers(
        address, data_dirs, tmp_path, lambda name, task, res: sent[name].append((task, res))
    )
    try:
        run_to_done(workers)
    finally:
        for w in workers:
            w.close()
    return sent


def test_two_rounds_apply_exactly_the_weighted_mean_of_the_deltas(
    tmp_path: Path, db_url: str, tiny_model: Path
) -> None:
    settings = coordinator_settings(tmp_path, db_url, tiny_model, rounds=2)
    coord = ServedCoordinator(settings)
    sent = run_workers(coord.address, make_worker_data(tmp_path / "data", 3), tmp_path)
    coord.wait()

    ckpt = settings.data_dir / "checkpoints" / "test"
    versions = [checkpoint.load(ckpt, v) for v in range(3)]
    for rnd in (1, 2):
        base, new = versions[rnd - 1], versions[rnd]
        updates = [next(res for task, res in sent[name] if task.round == rnd) for name in sorted(sent)]
        total = sum(u.num_samples for u in updates)
        for name in base:
            mean = sum(u.delta[name].double() * u.num_samples for u in updates) / total
            expected = base[name].double() + mean
            torch.testing.assert_close(new[name].double(), expected, atol=2e-6, rtol=0)
        assert any(not torch.equal(base[n], new[n]) for n in base), "the model did not move"

    store = Store(db_url)
    with store.sessions() as s:
        fed = s.scalar(select(Federation).where(Federation.name == "test"))
        assert fed is not None
        assert (fed.state, fed.model_version, fed.current_round) == ("completed", 2, 2)
        assert fed.model_hash == model_hash(versions[2])
        rounds = list(s.scalars(select(Round).where(Round.federation_id == fed.id).order_by(Round.number)))
        assert [(r.number, r.state, r.base_version, r.result_version, r.num_updates) for r in rounds] == [
            (1, "completed", 0, 1, 3),
            (2, "completed", 1, 2, 3),
        ]
        assert rounds[1].base_hash == model_hash(versions[1])
        for r in rounds:
            ups = list(s.scalars(select(Update).where(Update.round_id == r.id)))
            assert sorted(u.status for u in ups) == ["accepted"] * 3
            by_worker = {u.worker.name: u for u in ups}
            for name, items in sent.items():
                res = next(res for task, res in items if task.round == r.number)
                assert by_worker[name].num_samples == res.num_samples
                assert by_worker[name].num_steps == res.num_steps
            assert r.num_samples == sum(u.num_samples for u in ups)
            assert r.bytes_up == sum(u.bytes for u in ups) > 0
            assert r.bytes_down > 0
            assert len(r.evaluations) == 3  # every worker evaluated the version it pulled
    store.close()

    api = TestClient(create_app(db_url))
    status = api.get("/api/v1/federations/test").json()
    assert (status["state"], status["current_round"], status["model_version"], status["workers_total"]) == (
        "completed",
        2,
        2,
        3,
    )
    page = api.get("/api/v1/federations/test/rounds").json()
    assert [r["state"] for r in page["items"]] == ["completed", "completed"]
    for r in page["items"]:  # bytes per round and the saving against fp32, both ways
        assert r["up_ratio"] == pytest.approx(r["raw_bytes_up"] / r["bytes_up"]) and r["up_ratio"] > 1
        assert r["down_ratio"] == pytest.approx(r["raw_bytes_down"] / r["bytes_down"])
    detail = api.get("/api/v1/federations/test/rounds/2").json()
    assert sorted(u["worker"] for u in detail["updates"]) == ["org-1", "org-2", "org-3"]
    workers = api.get("/api/v1/federations/test/workers").json()
    assert all(w["updates_accepted"] == 2 for w in workers)


@pytest.mark.parametrize("eval_data", [True])
def test_coordinator_evaluates_each_version_on_its_held_out_set(
    tmp_path: Path, tiny_model: Path, eval_data: bool
) -> None:
    from strata import synthetic
    from strata.data import write_examples

    _, test = synthetic.generate_splits(10, 40, seed=5)
    write_examples(tmp_path / "test.jsonl", test)
    db = f"sqlite:///{tmp_path / 'e.db'}"
    settings = coordinator_settings(
        tmp_path, db, tiny_model, rounds=1, min_workers=2, min_updates=2, eval_data=tmp_path / "test.jsonl"
    )
    coord = ServedCoordinator(settings)
    run_workers(coord.address, make_worker_data(tmp_path / "data", 2), tmp_path)
    coord.wait()
    store = Store(db)
    (r,) = store.rounds(1)
    assert r.test_accuracy is not None and 0.0 <= r.test_accuracy <= 1.0
    assert r.test_loss is not None and r.test_loss > 0
    store.close()


def test_a_restarted_coordinator_resumes_from_its_last_version(tmp_path: Path, tiny_model: Path) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    data = make_worker_data(tmp_path / "data", 2)
    first = coordinator_settings(tmp_path, db, tiny_model, rounds=1, min_workers=2, min_updates=2)
    coord = ServedCoordinator(first)
    run_workers(coord.address, data, tmp_path)
    coord.wait()
    v1 = checkpoint.load(first.data_dir / "checkpoints" / "test", 1)

    again = coordinator_settings(tmp_path, db, tiny_model, rounds=2, min_workers=2, min_updates=2)
    coord = ServedCoordinator(again)
    assert coord.server.runner.gm.version == 1
    assert coord.server.runner.gm.hash == model_hash(v1)
    run_workers(coord.address, data, tmp_path)
    coord.wait()
    store = Store(db)
    assert [(r.number, r.base_version, r.result_version) for r in store.rounds(1)] == [(1, 0, 1), (2, 1, 2)]
    assert store.federation(1).model_version == 2
    store.close()


def test_workers_carry_on_when_the_coordinator_is_restarted_mid_federation(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    settings = coordinator_settings(tmp_path, db, tiny_model, rounds=3, min_workers=2, min_updates=2)
    coord = ServedCoordinator(settings)
    port = coord.server.port
    store = Store(db)
    sent: dict[str, list[tuple[RoundTask, TrainResult]]] = {}
    workers = threading.Thread(
        target=lambda: sent.update(run_workers(coord.address, make_worker_data(tmp_path / "d", 2), tmp_path))
    )
    workers.start()
    wait_until(lambda: any(r.state == "completed" for r in store.rounds(1)), timeout=120)
    coord.stop()  # like SIGTERM: the open round (if any) is left behind
    again = coordinator_settings(
        tmp_path, db, tiny_model, rounds=3, min_workers=2, min_updates=2, listen=f"127.0.0.1:{port}"
    )
    coord = ServedCoordinator(again)
    coord.wait(180)
    workers.join(60)
    assert not workers.is_alive()
    rounds = store.rounds(1)
    completed = [r for r in rounds if r.state == "completed"]
    assert [r.result_version for r in completed] == [1, 2, 3]
    assert all(r.state in ("completed", "failed") for r in rounds)
    assert store.federation(1).state == "completed"
    assert all(len(items) >= 3 for items in sent.values())  # each worker trained in every completed round
    store.close()
