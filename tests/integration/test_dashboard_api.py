"""The dashboard API against seeded coordinator databases, on SQLite and PostgreSQL: federations, rounds,
blocks and workers. Its schema, health and server: tests/integration/test_dashboard_server.py."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dashboard_api.app import create_app
from tests.dashboard_seed import API, FED, OTHER, Seed, ts


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
        "parent_dashboard_url": None,
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
