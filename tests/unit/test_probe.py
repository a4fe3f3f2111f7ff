"""`strata probe` (the deployment's health checks) and the failpoint specification."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from strata import failpoints
from strata.cli import main


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_http_probe_passes_on_200_and_fails_otherwise(capsys: pytest.CaptureFixture[str]) -> None:
    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert main(["probe", "http", f"{base}/healthz"]) == 0
        assert main(["probe", "http", f"{base}/other"]) == 1
        assert "HTTP 503" in capsys.readouterr().err
        assert main(["probe", "http", "ftp://example.org/"]) == 1
        assert "http:// or https://" in capsys.readouterr().err
    finally:
        server.shutdown()


def test_grpc_probe_fails_with_the_reason_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "grpc", f"127.0.0.1:{closed_port()}", "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_failpoint_specification() -> None:
    assert failpoints.parse("a.b@2, c.d") == {"a.b": 2, "c.d": 1}
    assert failpoints.parse("") == {}
    for bad in ("a.b@x", "a.b@0"):
        with pytest.raises(ValueError, match="STRATA_FAILPOINTS"):
            failpoints.parse(bad)
