"""Prometheus metrics: the coordinator's (rounds, updates by status and code, bytes, durations, workers,
version) scraped over HTTP while it serves, and the dashboard API's request counters."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dashboard_api.app import create_app
from strata import synthetic
from strata.member.upload import update_chunks
from strata.modeling import global_tensors, load_model
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import task_from_proto
from tests.helpers import TOKENS, ServedCoordinator, coordinator_settings, wait_until
from tests.integration.test_bad_input import Client, result


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


def test_coordinator_metrics_over_http(tmp_path: Path, tiny_model: Path) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    settings = coordinator_settings(
        tmp_path,
        db,
        tiny_model,
        rounds=1,
        min_workers=1,
        min_updates=1,
        metrics_listen="127.0.0.1:0",
        exit_when_done=False,
    )
    coord = ServedCoordinator(settings)
    try:
        port = coord.server.metrics_port
        assert port > 0
        c = Client(coord.address, TOKENS[0], "org-a")
        task = task_from_proto(c.task())
        model, _ = load_model(tiny_model, synthetic.LABELS)
        zero = {n: torch.zeros_like(t) for n, t in global_tensors(model).items()}
        bad = dict(zero)
        first = sorted(bad)[0]
        bad[first] = torch.full_like(bad[first], float("nan"))
        with pytest.raises(grpc.RpcError):
            c.push(update_chunks(c.id, task, result(bad)))
        pulled = list(c.stub.PullModel(pb.PullRequest(worker_id=c.id, include_assets=True), metadata=c.md))
        sent_bytes = sum(len(ch.data) for ch in pulled if ch.WhichOneof("part") == "data")
        reply = c.push(update_chunks(c.id, task, result({n: t + 0.01 for n, t in zero.items()})))
        assert reply.accepted

        def scrape() -> dict:
            return samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)

        wait_until(
            lambda: (
                ("strata_rounds_total", frozenset({("federation", "test"), ("state", "completed")}))
                in scrape()
            ),
            30,
        )
        m = scrape()
        fed = {"federation": "test"}
        assert value(m, "strata_rounds_total", state="completed", **fed) == 1
        assert value(m, "strata_updates_total", status="accepted", code="OK", **fed) == 1
        assert value(m, "strata_updates_total", status="rejected", code="INVALID_ARGUMENT", **fed) == 1
        assert value(m, "strata_bytes_received_total", **fed) == reply.received_bytes
        assert value(m, "strata_bytes_sent_total", **fed) == sent_bytes > 0
        assert value(m, "strata_round_duration_seconds_count", **fed) == 1
        assert value(m, "strata_aggregation_duration_seconds_count", **fed) == 1
        assert value(m, "strata_workers_connected", **fed) == 1
        assert value(m, "strata_model_version", **fed) == 1
    finally:
        coord.stop()


def test_api_metrics(db_url: str) -> None:
    with TestClient(create_app(db_url)) as api:
        api.get("/api/v1/federations")
        api.get("/api/v1/federations/nope")
        api.get("/api/v1/federations/nope")
        api.get("/no/such/route")
        m = samples(api.get("/metrics").text)
    assert value(m, "strata_api_requests_total", route="/api/v1/federations", method="GET", status="200") == 1
    assert (
        value(m, "strata_api_requests_total", route="/api/v1/federations/{name}", method="GET", status="404")
        == 2
    )
    assert value(m, "strata_api_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(m, "strata_api_request_duration_seconds_count", route="/api/v1/federations/{name}") == 2
