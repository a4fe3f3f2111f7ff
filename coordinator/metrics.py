"""The coordinator's Prometheus metrics, on their own registry and HTTP port (`--metrics-listen`).

Label values are bounded: the federation name, a round state, an update status and the gRPC status code
of a refusal (never the free-text reason, which lives in the database and the REST API).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("strata.coordinator")

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class CoordinatorMetrics:
    def __init__(self, federation: str) -> None:
        self.registry = CollectorRegistry()
        r, fed = self.registry, federation
        self.rounds = Counter(
            "strata_rounds", "Rounds closed, by final state", ["federation", "state"], registry=r
        )
        self.updates = Counter(
            "strata_updates",
            "Updates received, by status (accepted, rejected, late) and, for a refusal, its gRPC status code",
            ["federation", "status", "code"],
            registry=r,
        )
        self.bytes_in = Counter(
            "strata_bytes_received", "Update payload bytes received from workers", ["federation"], registry=r
        )
        self.bytes_out = Counter(
            "strata_bytes_sent", "Model payload and asset bytes sent to workers", ["federation"], registry=r
        )
        self.round_seconds = Histogram(
            "strata_round_duration_seconds",
            "Seconds from a round's opening to its close",
            ["federation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.aggregate_seconds = Histogram(
            "strata_aggregation_duration_seconds",
            "Seconds spent aggregating, scoring, measuring divergence and checkpointing a round",
            ["federation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.workers = Gauge(
            "strata_workers_connected", "Workers heard from within worker_timeout", ["federation"], registry=r
        )
        self.version = Gauge("strata_model_version", "The global model version", ["federation"], registry=r)
        self.fed = fed
        self._server: WSGIServer | None = None

    def watch_workers(self, online: Callable[[], int]) -> None:
        """Read the connected workers at scrape time."""
        self.workers.labels(self.fed).set_function(online)

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port (port 0 picks one); returns the bound port."""
        host, _, port = listen.rpartition(":")
        self._server, _ = start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)
        bound = int(self._server.server_port)
        log.info("Prometheus metrics on http://%s:%d/metrics", host or "0.0.0.0", bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
