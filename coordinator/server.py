"""Start the coordinator: grpc.aio server with health checking and reflection, the round loop, and a
graceful shutdown on SIGTERM/SIGINT (health goes NOT_SERVING, in-flight calls get a grace period)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.auth import AuthInterceptor
from coordinator.federation import Federation
from coordinator.ratelimit import RateLimiter
from coordinator.service import CoordinatorService
from coordinator.settings import CoordinatorSettings
from coordinator.store import Store
from coordinator.subfederation import connect
from strata import atomic
from strata.memory import tune_malloc
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc
from strata.storage.db import migrate

log = logging.getLogger("strata.coordinator")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class CoordinatorServer:
    """The server and the runner together; `start()` binds, `run()` drives rounds, `stop()` shuts down."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        tune_malloc()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        migrate(settings.database_url)
        self.store = Store(settings.database_url)
        link = None
        if settings.parent:  # a sub-federation: join the parent first, it decides task, labels and model
            link, settings = connect(settings)
            self.settings = settings
        self.runner = Federation(settings, self.store)
        self.runner.link = link
        self.runner.setup()
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0
        self.health_server: grpc.aio.Server | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def request_stop(self) -> None:
        """Ask a serving coordinator to shut down gracefully (safe from any thread)."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may close between the check and the call
                self._loop.call_soon_threadsafe(self._stop.set)

    async def start(self) -> int:
        # grpc.aio objects belong to the running event loop: build them here, not in __init__
        s = self.settings
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[
                AuthInterceptor(self.runner.sessions.authorise, RateLimiter(s.rate_limit, s.rate_burst))
            ],
            options=CHANNEL_OPTIONS,
        )
        pb_grpc.add_CoordinatorServicer_to_server(CoordinatorService(self.runner), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        if s.tls_cert is not None and s.tls_key is not None:
            client_ca = s.tls_client_ca.read_bytes() if s.tls_client_ca else None
            creds = grpc.ssl_server_credentials(
                [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            self.port = self.server.add_secure_port(s.listen, creds)
            log.info(
                "gRPC over TLS%s", " with client certificates required (mutual TLS)" if client_ca else ""
            )
        else:
            self.port = self.server.add_insecure_port(s.listen)
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.listen}")
        await self.server.start()
        if s.health_listen:  # health only, plaintext: for probes inside the container, never for workers
            self.health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(s.health_listen)
            if self.health_port == 0:
                raise RuntimeError(f"could not bind {s.health_listen} (health_listen)")
            await self.health_server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.settings.metrics_listen:
            self.metrics_port = self.runner.metrics.serve(self.settings.metrics_listen)
        if self.settings.port_file is not None:
            atomic.write_text(self.settings.port_file, f"{self.port}\n")
        log.info("coordinator for federation %s listening on port %d", self.settings.federation, self.port)
        return self.port

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(self.settings.grace_seconds)
        if self.health_server is not None:
            await self.health_server.stop(0)
        self.runner.metrics.close()
        if self.runner.link is not None:
            self.runner.link.close()
        self.store.close()

    async def serve(self) -> None:
        """Run until the federation is done (if exit_when_done) or a signal arrives."""
        loop = self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):  # before start() writes the port file: a signal sent
            with contextlib.suppress(NotImplementedError, RuntimeError):  # once it is there is handled
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        rounds = asyncio.create_task(self.runner.run())
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({rounds, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if rounds in done:
                rounds.result()  # re-raise a failure of the federation
                if not self.settings.exit_when_done:
                    await stopper
            else:
                log.info("signal received: shutting down (grace %.1fs)", self.settings.grace_seconds)
        finally:
            for task in (rounds, stopper):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rounds
            await self.stop()


def run(settings: CoordinatorSettings) -> None:
    server = CoordinatorServer(settings)  # set-up and resume read the database before any event loop runs
    asyncio.run(server.serve())
