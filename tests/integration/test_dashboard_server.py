"""The dashboard API's schema, its read-only engine, its health answers and its HTTP server."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dashboard_api.app import create_app
from dashboard_api.routes.health import SCHEMA_MISSING
from dashboard_api.server import build_server
from tests.dashboard_seed import API, FED, Seed


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
