"""The worker's gRPC client: token metadata, reconnection with exponential backoff and jitter."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc

from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger("strata.worker")
T = TypeVar("T")
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    # a coordinator shutting down (or restarting) cancels the calls in flight: try again like UNAVAILABLE
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),
]


def backoff_delays(base: float = 0.25, cap: float = 10.0, seed: int | None = None) -> Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(cap, base·2^n)) for attempt n."""
    rng = random.Random(seed)
    n = 0
    while True:
        yield rng.uniform(0, min(cap, base * 2**n))
        n += 1


class CoordinatorClient:
    def __init__(
        self,
        address: str,
        token: str,
        connect_timeout: float = 120.0,
        max_backoff: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        """`credentials` makes the channel TLS (mutual TLS when they carry a client certificate);
        `server_name` checks the coordinator's certificate against that name instead of the address's host."""
        self.address = address
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            options: list[tuple[str, int | str]] = [*CHANNEL_OPTIONS]
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.secure_channel(address, credentials, options=options)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        #: checked between retries: True gives up at once (a simulated worker whose federation has ended)
        self.abandon: Callable[[], bool] = lambda: False

    def close(self) -> None:
        self.channel.close()

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run fn, retrying transient failures with backoff until connect_timeout has passed."""
        give_up = time.monotonic() + self.connect_timeout
        delays = backoff_delays(cap=self.max_backoff)
        while True:
            try:
                return fn()
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                if code not in RETRYABLE or time.monotonic() >= give_up or self.abandon():
                    raise
                wait = min(next(delays), max(0.0, give_up - time.monotonic()))
                log.info(
                    "%s: coordinator %s unavailable (%s); retrying in %.1fs", what, self.address, code, wait
                )
                time.sleep(wait)

    def join(self, req: pb.JoinRequest) -> pb.JoinReply:
        return self.call(lambda: self.stub.Join(req, metadata=self.metadata, timeout=30), "join")

    def get_task(self, worker_id: str, wait_seconds: int) -> pb.Task:
        req = pb.TaskRequest(worker_id=worker_id, wait_seconds=wait_seconds)
        return self.call(
            lambda: self.stub.GetTask(req, metadata=self.metadata, timeout=wait_seconds + 30), "task"
        )

    def pull(self, req: pb.PullRequest) -> Iterator[pb.ModelChunk]:
        return self.stub.PullModel(req, metadata=self.metadata, timeout=3600)

    def pull_base(self, req: pb.BaseRequest) -> Iterator[pb.BaseChunk]:
        return self.stub.PullBase(req, metadata=self.metadata, timeout=3600)

    def push(self, chunks: Iterable[pb.UpdateChunk], timeout: float) -> pb.PushReply:
        return self.stub.PushUpdate(iter(chunks), metadata=self.metadata, timeout=timeout)

    def report(self, req: pb.MetricsReport) -> None:
        self.call(lambda: self.stub.ReportMetrics(req, metadata=self.metadata, timeout=30), "report")
