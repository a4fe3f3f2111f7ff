"""`strata worker`: run one organisation's worker."""

from __future__ import annotations

import argparse
import sys

import grpc

from worker.settings import WorkerSettings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    WorkerSettings.add_command(
        sub,
        "worker",
        help="run a worker that trains on local data",
        description="Join a federation, train on local data each round, send weight deltas.",
        run=serve,
    )


def serve(settings: WorkerSettings) -> int:
    from strata.data import DataError
    from strata.errors import MemberError
    from worker.runner import run

    try:
        run(settings)
    except (MemberError, DataError) as exc:
        print(f"strata worker: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"strata worker: coordinator answered {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0
