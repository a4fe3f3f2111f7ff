"""`strata coordinator`: run the coordinator of one federation."""

from __future__ import annotations

import argparse
import sys

from coordinator.settings import CoordinatorSettings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("coordinator", help="run the gRPC coordinator of a federation",
                       description="Run the gRPC coordinator: schedules rounds, receives updates, aggregates.")
    CoordinatorSettings.add_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    settings = CoordinatorSettings.from_args(args)
    from coordinator.server import run

    try:
        run(settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"strata coordinator: {exc}", file=sys.stderr)
        return 1
    return 0
