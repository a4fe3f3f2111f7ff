"""The dashboard API against seeded coordinator databases, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dashboard_api.app import create_app
from dashboard_api.routes.health import SCHEMA_MISSING
from dashboard_api.server import build_server
from strata.storage.db import make_engine, session_factory
from strata.storage.models import (
    Evaluation,
    Federation,
    FederationState,
    Round,
    RoundState,
    Update,
    UpdateStatus,
    Worker,
)

FED = "sst2-demo"
OTHER = "other"
API = "/api/v1"


@dataclass
class Seed:
    now: dt.datetime
    created_at: dt.datetime
    worker_times: dict[str, tuple[dt.datetime, dt.datetime]] = field(default_factory=dict)
    round_times: dict[int, tuple[dt.datetime, dt.datetime, dt.datetime | None]] = field(default_factory=dict)


def _worker(fed: Federation, name: str, joined_at: dt.datetime, last_seen: dt.datetime, **kw: Any) -> Worker:
    return Worker(
        federation=fed,
        uid=str(uuid.uuid4()),
        name=name,
        token_hash="0" * 64,
        joined_at=joined_at,
        last_seen=last_seen,
        **kw,
    )


def _update(rnd: Round, worker: Worker, status: UpdateStatus, nbytes: int, **kw: Any) -> Update:
    return Update(
        round=rnd,
        worker=worker,
        status=status.value,
        base_version=rnd.base_version,
        num_samples=100,
        num_tensors=12,
        bytes=nbytes,
        raw_bytes=nbytes * 4,
        num_steps=25,
        **kw,
    )


def seed(url: str) -> Seed:
    """A federation with 3 workers and 3 rounds (2 completed, 1 open), plus an unrelated federation."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    t0 = now - dt.timedelta(hours=3)
    s = Seed(now=now, created_at=t0)
    engine = make_engine(url)
    with session_factory(engine)() as session, session.begin():
        fed = Federation(
            name=FED,
            state=FederationState.RUNNING.value,
            task_kind="sequence-classification",
            model_name="tiny-bert",
            num_labels=2,
            total_rounds=5,
            current_round=3,
            model_version=2,
            model_hash="ab" * 32,
            num_parameters=4242,
            config={"lr": 0.001, "layers": ["classifier"]},
            created_at=t0,
            updated_at=now,
        )
        seen = {"w1": now, "w2": now - dt.timedelta(hours=1), "w3": now - dt.timedelta(hours=2)}
        workers = {}
        for i, name in enumerate(["w1", "w2", "w3"]):
            joined = t0 + dt.timedelta(minutes=i)
            workers[name] = _worker(
                fed, name, joined, seen[name], device="cpu", num_samples=1000 + i, num_eval_samples=100 + i
            )
            s.worker_times[name] = (joined, seen[name])
        w1, w2, w3 = workers.values()

        rounds = []
        for number in (1, 2, 3):
            started = t0 + dt.timedelta(minutes=10 * number)
            closed = started + dt.timedelta(minutes=5) if number < 3 else None
            s.round_times[number] = (started, started + dt.timedelta(minutes=30), closed)
            rounds.append(
                Round(
                    federation=fed,
                    number=number,
                    state=(RoundState.COMPLETED if number < 3 else RoundState.OPEN).value,
                    base_version=number - 1,
                    base_hash=f"{number:02d}" * 32,
                    result_version=number if number < 3 else None,
                    result_hash=f"r{number}" * 32 if number < 3 else None,
                    participants=["w1", "w2", "w3"]
                    if number == 1
                    else ["w1", "w2"]
                    if number == 2
                    else ["w1"],
                    min_updates=2,
                    num_updates=2 if number < 3 else 0,
                    num_samples=200 if number < 3 else 0,
                    bytes_up=(3100 if number == 1 else 2400) if number < 3 else 0,
                    bytes_down=8000 * number,
                    raw_bytes_up=12000 if number < 3 else 0,
                    train_loss=[0.9, 0.7, None][number - 1],
                    train_accuracy=[0.6, 0.75, None][number - 1],
                    test_loss=[0.6, 0.5, None][number - 1],
                    test_accuracy=[0.7, 0.8, None][number - 1],
                    update_norm=[1.5, 1.25, None][number - 1],
                    started_at=started,
                    deadline_at=started + dt.timedelta(minutes=30),
                    closed_at=closed,
                    aggregate_seconds=0.5 if number < 3 else None,
                    eval_seconds=2.0 if number < 3 else None,
                    duration_seconds=300.0 if number < 3 else None,
                )
            )
        r1, r2, _r3 = rounds
        received = t0 + dt.timedelta(minutes=12)
        session.add_all(
            [
                _update(r1, w1, UpdateStatus.ACCEPTED, 1000, train_loss=0.8, received_at=received),
                _update(r1, w2, UpdateStatus.ACCEPTED, 1200, train_loss=1.0, received_at=received),
                _update(
                    r1,
                    w3,
                    UpdateStatus.REJECTED,
                    900,
                    reject_reason="stale base version 0 != 1",
                    received_at=received,
                ),
                _update(r2, w1, UpdateStatus.ACCEPTED, 1100, received_at=received),
                _update(r2, w2, UpdateStatus.ACCEPTED, 1300, received_at=received),
                Evaluation(
                    round=r1,
                    worker=w1,
                    model_version=1,
                    split="test",
                    num_samples=50,
                    loss=0.61,
                    accuracy=0.72,
                    created_at=received,
                ),
                Evaluation(
                    round=r1,
                    worker=w2,
                    model_version=1,
                    split="test",
                    num_samples=40,
                    loss=0.59,
                    accuracy=0.68,
                    created_at=received,
                ),
                Evaluation(
                    round=r2,
                    worker=w1,
                    model_version=2,
                    split="validation",
                    num_samples=50,
                    loss=0.5,
                    accuracy=0.8,
                    created_at=received,
                ),
            ]
        )

        # An unrelated federation: same worker name, its own rounds; its newest completed round has no test accuracy.
        other = Federation(name=OTHER, model_name="x", created_at=t0, updated_at=t0)
        ow = _worker(other, "w1", t0, now)
        o1 = Round(
            federation=other,
            number=1,
            state=RoundState.COMPLETED.value,
            base_version=0,
            base_hash="0" * 64,
            participants=["w1"],
            test_accuracy=0.99,
            test_loss=0.01,
            deadline_at=now,
        )
        o2 = Round(
            federation=other,
            number=2,
            state=RoundState.COMPLETED.value,
            base_version=1,
            base_hash="1" * 64,
            participants=["w1"],
            deadline_at=now,
        )
        session.add_all([ow, o1, o2, _update(o1, ow, UpdateStatus.ACCEPTED, 5)])
    engine.dispose()
    return s


def ts(value: str | None) -> dt.datetime | None:
    """Parse a serialized datetime, insisting that it is timezone-aware UTC."""
    if value is None:
        return None
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.utcoffset() == dt.timedelta(0), value
    return parsed


@pytest.fixture
def seeded(db_url: str) -> Seed:
    return seed(db_url)


@pytest.fixture
def client(db_url: str, seeded: Seed) -> Iterator[TestClient]:
    with TestClient(create_app(db_url, online_seconds=60.0)) as c:
        yield c


def test_healthz_ok(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_list_federations(client: TestClient, seeded: Seed) -> None:
    r = client.get(f"{API}/federations")
    assert r.status_code == 200
    body = r.json()
    assert [f["name"] for f in body] == [OTHER, FED]
    fed = body[1]
    assert set(fed) == {
        "name",
        "state",
        "task_kind",
        "model_name",
        "current_round",
        "total_rounds",
        "model_version",
        "created_at",
        "updated_at",
    }
    assert fed["state"] == "running"
    assert fed["task_kind"] == "sequence-classification"
    assert fed["model_name"] == "tiny-bert"
    assert (fed["current_round"], fed["total_rounds"], fed["model_version"]) == (3, 5, 2)
    assert ts(fed["created_at"]) == seeded.created_at
    assert ts(fed["updated_at"]) == seeded.now


def test_federation_status(client: TestClient, seeded: Seed) -> None:
    r = client.get(f"{API}/federations/{FED}")
    assert r.status_code == 200
    s = r.json()
    assert s["name"] == FED and s["state"] == "running"
    assert s["model_hash"] == "ab" * 32
    assert s["num_parameters"] == 4242 and s["num_labels"] == 2
    assert s["workers_total"] == 3
    assert s["workers_online"] == 1  # w1 seen now; w2 an hour ago, w3 two hours ago
    assert s["last_test_accuracy"] == pytest.approx(0.8)  # round 2, not the open round 3
    assert s["last_test_loss"] == pytest.approx(0.5)
    assert s["config"] == {"lr": 0.001, "layers": ["classifier"]}
    assert s["tree"] == {  # a config without the tree settings (a federation that predates them): defaults
        "parent": None,
        "inner_rounds": 1,
        "local_blocks": "",
        "residual_keep": 0.5,
        "key_aggregation": "attention",
        "attention_temperature": 1.0,
    }
    assert s["error"] is None
    assert ts(s["created_at"]) == seeded.created_at

    other = client.get(f"{API}/federations/{OTHER}").json()
    assert other["workers_total"] == 1 and other["workers_online"] == 1
    # Its newest completed round has no test accuracy: the metrics come from round 1.
    assert other["last_test_accuracy"] == pytest.approx(0.99)
    assert other["last_test_loss"] == pytest.approx(0.01)


def test_online_window(db_url: str, seeded: Seed) -> None:
    with TestClient(create_app(db_url, online_seconds=7200.0 + 600)) as c:
        assert c.get(f"{API}/federations/{FED}").json()["workers_online"] == 3
        assert [w["online"] for w in c.get(f"{API}/federations/{FED}/workers").json()] == [True] * 3
    with TestClient(create_app(db_url, online_seconds=5400.0)) as c:
        assert c.get(f"{API}/federations/{FED}").json()["workers_online"] == 2


def test_unknown_federation_404(client: TestClient) -> None:
    for path in ("", "/rounds", "/rounds/1", "/workers"):
        r = client.get(f"{API}/federations/nope{path}")
        assert r.status_code == 404, path
        assert r.json()["detail"] == "federation 'nope' not found"


def test_rounds_page(client: TestClient, seeded: Seed) -> None:
    r = client.get(f"{API}/federations/{FED}/rounds")
    assert r.status_code == 200
    page = r.json()
    assert (page["total"], page["offset"], page["limit"]) == (3, 0, 50)
    assert [x["number"] for x in page["items"]] == [1, 2, 3]
    r1, r2, r3 = page["items"]
    assert "updates" not in r1 and "evaluations" not in r1
    assert r1["state"] == "completed" and r3["state"] == "open"
    assert (r1["base_version"], r1["result_version"], r1["result_hash"]) == (0, 1, "r1" * 32)
    assert r1["participants"] == ["w1", "w2", "w3"]
    assert (r1["min_updates"], r1["num_updates"], r1["num_samples"]) == (2, 2, 200)
    assert (r1["bytes_up"], r1["bytes_down"], r1["raw_bytes_up"]) == (3100, 8000, 12000)
    assert r1["train_loss"] == pytest.approx(0.9) and r1["train_accuracy"] == pytest.approx(0.6)
    assert r1["test_loss"] == pytest.approx(0.6) and r1["test_accuracy"] == pytest.approx(0.7)
    assert r1["update_norm"] == pytest.approx(1.5)
    assert (r1["aggregate_seconds"], r1["eval_seconds"], r1["duration_seconds"]) == (0.5, 2.0, 300.0)
    assert r1["error"] is None
    started, deadline, closed = seeded.round_times[1]
    assert (ts(r1["started_at"]), ts(r1["deadline_at"]), ts(r1["closed_at"])) == (started, deadline, closed)
    assert r2["test_accuracy"] == pytest.approx(0.8)
    assert r3["participants"] == ["w1"]
    assert r3["result_version"] is None and r3["closed_at"] is None and r3["test_accuracy"] is None


def test_rounds_pagination_and_filter(client: TestClient) -> None:
    url = f"{API}/federations/{FED}/rounds"
    page = client.get(url, params={"offset": 1, "limit": 1}).json()
    assert (page["total"], page["offset"], page["limit"]) == (3, 1, 1)
    assert [x["number"] for x in page["items"]] == [2]
    page = client.get(url, params={"offset": 2, "limit": 500}).json()
    assert page["total"] == 3 and [x["number"] for x in page["items"]] == [3]
    page = client.get(url, params={"offset": 10}).json()
    assert page["total"] == 3 and page["items"] == []

    page = client.get(url, params={"state": "completed"}).json()
    assert page["total"] == 2 and [x["number"] for x in page["items"]] == [1, 2]
    page = client.get(url, params={"state": "completed", "offset": 1}).json()
    assert page["total"] == 2 and [x["number"] for x in page["items"]] == [2]
    page = client.get(url, params={"state": "open"}).json()
    assert page["total"] == 1 and [x["number"] for x in page["items"]] == [3]
    page = client.get(url, params={"state": "failed"}).json()
    assert page["total"] == 0 and page["items"] == []


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"offset": -1}, "offset"),
        ({"limit": "many"}, "limit"),
        ({"state": "bogus"}, "state"),
    ],
)
def test_rounds_validation_422(client: TestClient, params: dict[str, Any], loc: str) -> None:
    r = client.get(f"{API}/federations/{FED}/rounds", params=params)
    assert r.status_code == 422
    errors = r.json()["detail"]
    assert errors[0]["loc"] == ["query", loc]
    assert errors[0]["msg"]


def test_round_detail(client: TestClient, seeded: Seed) -> None:
    r = client.get(f"{API}/federations/{FED}/rounds/1")
    assert r.status_code == 200
    d = r.json()
    assert d["number"] == 1 and d["state"] == "completed"
    assert d["participants"] == ["w1", "w2", "w3"]
    assert [(u["worker"], u["status"]) for u in d["updates"]] == [
        ("w1", "accepted"),
        ("w2", "accepted"),
        ("w3", "rejected"),
    ]
    u1, _u2, u3 = d["updates"]
    assert u1["reject_reason"] is None
    assert u3["reject_reason"] == "stale base version 0 != 1"
    assert (u1["base_version"], u1["num_samples"], u1["num_tensors"], u1["num_steps"]) == (0, 100, 12, 25)
    assert (u1["bytes"], u1["raw_bytes"]) == (1000, 4000)
    assert u1["train_loss"] == pytest.approx(0.8) and u1["train_accuracy"] is None
    assert u1["update_norm"] is None and u1["train_seconds"] is None and u1["upload_seconds"] is None
    assert ts(u1["received_at"]) == seeded.created_at + dt.timedelta(minutes=12)
    assert [(e["worker"], e["split"], e["model_version"]) for e in d["evaluations"]] == [
        ("w1", "test", 1),
        ("w2", "test", 1),
    ]
    e1 = d["evaluations"][0]
    assert e1["num_samples"] == 50
    assert e1["loss"] == pytest.approx(0.61) and e1["accuracy"] == pytest.approx(0.72)
    assert ts(e1["created_at"]) == seeded.created_at + dt.timedelta(minutes=12)

    d3 = client.get(f"{API}/federations/{FED}/rounds/3").json()
    assert d3["state"] == "open" and d3["updates"] == [] and d3["evaluations"] == []

    # The other federation's round 1 is its own.
    o1 = client.get(f"{API}/federations/{OTHER}/rounds/1").json()
    assert [(u["worker"], u["bytes"]) for u in o1["updates"]] == [("w1", 5)]


def test_unknown_round_404(client: TestClient) -> None:
    r = client.get(f"{API}/federations/{FED}/rounds/4")
    assert r.status_code == 404
    assert r.json()["detail"] == f"round 4 of federation '{FED}' not found"
    assert client.get(f"{API}/federations/{OTHER}/rounds/3").status_code == 404
    assert client.get(f"{API}/federations/{FED}/rounds/x").status_code == 422


def test_block_views_without_targeting_records(client: TestClient, seeded: Seed) -> None:
    """Rounds recorded without block outcomes (policy full before S3, or not completed): empty views,
    precise errors for unknown rounds and metrics."""
    assert client.get(f"{API}/federations/{FED}/rounds/1/blocks").json() == []
    assert client.get(f"{API}/federations/{FED}/rounds/1").json()["block_outcomes"] == []
    r = client.get(f"{API}/federations/{FED}/rounds/9/blocks")
    assert r.status_code == 404 and r.json()["detail"] == f"round 9 of federation '{FED}' not found"
    m = client.get(f"{API}/federations/{FED}/blocks").json()
    assert (m["blocks"], m["rounds"], m["values"], m["total_rounds"], m["metric"]) == (
        [],
        [],
        [],
        0,
        "divergence",
    )
    assert client.get(f"{API}/federations/{FED}/blocks", params={"metric": "x"}).status_code == 422
    assert client.get(f"{API}/federations/{FED}/blocks", params={"limit": 0}).status_code == 422
    assert client.get(f"{API}/federations/nope/blocks").status_code == 404
    r1 = client.get(f"{API}/federations/{FED}/rounds").json()["items"][0]
    assert r1["blocks"] is None and r1["probe"] is False
    assert r1["test_perplexity"] == pytest.approx(math.exp(r1["test_loss"]))


def test_workers(client: TestClient, seeded: Seed) -> None:
    r = client.get(f"{API}/federations/{FED}/workers")
    assert r.status_code == 200
    workers = {w["name"]: w for w in r.json()}
    assert list(workers) == ["w1", "w2", "w3"]
    w1, w2, w3 = workers.values()
    assert [w["online"] for w in (w1, w2, w3)] == [True, False, False]
    assert (w1["device"], w1["num_samples"], w1["num_eval_samples"]) == ("cpu", 1000, 100)
    assert (w3["num_samples"], w3["num_eval_samples"]) == (1002, 102)
    assert [w["rounds_joined"] for w in (w1, w2, w3)] == [3, 2, 1]
    assert [w["updates_accepted"] for w in (w1, w2, w3)] == [2, 2, 0]
    assert [w["updates_rejected"] for w in (w1, w2, w3)] == [0, 0, 1]
    assert [w["bytes_up"] for w in (w1, w2, w3)] == [2100, 2500, 900]
    assert w1["rejections"] == [] and len(w3["rejections"]) == 1
    for w in (w1, w2, w3):  # plain workers: no member counts, nothing reported upward
        assert (w["kind"], w["members"], w["inner_rounds"], w["reported"]) == ("worker", None, None, None)
    (refused,) = w3["rejections"]
    assert (refused["round"], refused["status"], refused["reject_reason"]) == (
        1,
        "rejected",
        "stale base version 0 != 1",
    )
    for name, w in workers.items():
        assert (ts(w["joined_at"]), ts(w["last_seen"])) == seeded.worker_times[name]

    other = client.get(f"{API}/federations/{OTHER}/workers").json()
    assert [(w["name"], w["rounds_joined"], w["updates_accepted"], w["bytes_up"]) for w in other] == [
        ("w1", 2, 1, 5)
    ]


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Strata dashboard API"
    assert set(spec["paths"]) == {
        "/healthz",
        f"{API}/federations",
        f"{API}/federations/{{name}}",
        f"{API}/federations/{{name}}/rounds",
        f"{API}/federations/{{name}}/rounds/{{number}}",
        f"{API}/federations/{{name}}/workers",
        f"{API}/federations/{{name}}/rounds/{{number}}/blocks",
        f"{API}/federations/{{name}}/rounds/{{number}}/divergence",
        f"{API}/federations/{{name}}/blocks",
        f"{API}/federations/{{name}}/alignment",
        f"{API}/federations/{{name}}/rounds/{{number}}/key-weights",
        f"{API}/federations/{{name}}/key-weights",
        f"{API}/federations/{{name}}/parent-rounds",
        f"{API}/federations/{{name}}/tokens",
        f"{API}/federations/{{name}}/tokens/{{token_id}}",
        f"{API}/federations/{{name}}/pause",
        f"{API}/federations/{{name}}/resume",
        f"{API}/federations/{{name}}/stop",
    }
    schemas = spec["components"]["schemas"]
    models = ("FederationStatus", "RoundDetail", "UpdateOut", "EvaluationOut", "WorkerOut", "Health")
    models += ("BlockOutcomeOut", "BlockMatrix", "RoundDivergenceOut", "TensorDivergenceOut", "AlignmentOut")
    models += (
        "TreeOut",
        "ReportedOut",
        "KeyWeightOut",
        "KeyBlockWeightsOut",
        "KeyWeightMatrix",
        "ParentRoundOut",
    )
    for model in models:
        for prop, info in schemas[model]["properties"].items():
            assert info.get("description"), f"{model}.{prop} has no description"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_app_never_writes(client: TestClient) -> None:
    engine = client.app.state.read_engine  # type: ignore[attr-defined]
    with engine.connect() as conn, pytest.raises(DBAPIError):
        conn.execute(text("DELETE FROM workers"))
    assert client.get(f"{API}/federations/{FED}").json()["workers_total"] == 3


def test_healthz_503_without_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with TestClient(create_app(url)) as c:
        r = c.get("/healthz")
        assert r.status_code == 503
        assert r.json() == {"detail": SCHEMA_MISSING}
        r = c.get(f"{API}/federations")
        assert r.status_code == 503
        assert "schema missing" in r.json()["detail"]


def test_healthz_503_unreachable() -> None:
    with TestClient(create_app("postgresql://nobody@127.0.0.1:1/none")) as c:
        r = c.get("/healthz")
        assert r.status_code == 503
        assert r.json()["detail"].startswith("database unreachable: ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_serves_over_http(db_url: str, seeded: Seed) -> None:
    port = _free_port()
    server = build_server(db_url, "127.0.0.1", port, online_seconds=60.0, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/federations/{FED}", timeout=10)
        assert r.status_code == 200 and r.json()["workers_online"] == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
