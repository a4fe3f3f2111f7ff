"""`strata coordinator` (run a federation's coordinator) and `strata migrate` (create the schema)."""

from __future__ import annotations

import argparse
import sys

from coordinator.settings import CoordinatorSettings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    CoordinatorSettings.add_command(
        sub,
        "coordinator",
        help="run the gRPC coordinator of a federation",
        description="Run the gRPC coordinator: schedules rounds, receives updates, aggregates.",
        run=serve,
    )
    m = sub.add_parser(
        "migrate",
        help="create or upgrade the coordinator's database schema",
        description="Apply the Alembic migrations to a database (idempotent; a deployment's one-shot step).",
    )
    m.add_argument("--database-url", default=None, help="database URL (env STRATA_COORDINATOR_DATABASE_URL)")
    m.add_argument(
        "--config", metavar="FILE", help="TOML config file; reads database_url from its [coordinator] table"
    )
    m.set_defaults(func=migrate)


def serve(settings: CoordinatorSettings) -> int:
    from coordinator.server import run

    try:
        run(settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"strata coordinator: {exc}", file=sys.stderr)
        return 1
    return 0


def migrate(args: argparse.Namespace) -> int:
    settings = CoordinatorSettings.load({"database_url": args.database_url}, args.config)
    from strata.storage.db import migrate

    migrate(settings.database_url)
    print(f"database schema at {settings.database_url.split('@')[-1]} is up to date")
    return 0
