"""`strata probe`: the health checks of the deployment (docker-compose `healthcheck`), exit 0 when healthy.

    strata probe grpc 127.0.0.1:50052        # grpc.health.v1 answers SERVING (the coordinator)
    strata probe http http://127.0.0.1:8080/healthz   # HTTP 200 (the dashboard API)

It imports neither torch nor the services, so a health check costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "probe",
        help="health check of a coordinator (gRPC) or dashboard API (HTTP): exit 0 if healthy",
        description="Exit 0 if the service answers healthy, 1 (with the reason on stderr) if not.",
    )
    p.add_argument("kind", choices=["grpc", "http"], help="grpc: grpc.health.v1 Check; http: GET, expect 200")
    p.add_argument("target", help="host:port for grpc, a URL for http")
    p.add_argument("--service", default="", help="grpc: the service to ask about (default: the server)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.kind == "grpc":
            check_grpc(args.target, args.service, args.timeout)
        else:
            check_http(args.target, args.timeout)
    except ProbeFailed as exc:
        print(f"strata probe: {args.target}: {exc}", file=sys.stderr)
        return 1
    return 0


class ProbeFailed(Exception):
    pass


def check_grpc(address: str, service: str = "", timeout: float = 5.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as err:
            raise ProbeFailed(f"{err.code().name}: {err.details()}") from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise ProbeFailed(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def check_http(url: str, timeout: float = 5.0) -> None:
    if not url.startswith(("http://", "https://")):
        raise ProbeFailed("give an http:// or https:// URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - scheme checked above
            if reply.status != 200:
                raise ProbeFailed(f"HTTP {reply.status}")
    except urllib.error.HTTPError as err:
        raise ProbeFailed(f"HTTP {err.code}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ProbeFailed(str(getattr(err, "reason", err))) from None
