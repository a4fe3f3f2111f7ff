"""`strata coordinator`: run the coordinator of one federation."""

from __future__ import annotations

import argparse
import sys

from coordinator.settings import CoordinatorSettings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "coordinator",
        help="run the gRPC coordinator of a federation",
        description="Run the gRPC coordinator: schedules rounds, receives updates, aggregates.",
    )
    CoordinatorSettings.add_arguments(p)
    p.set_defaults(func=main)
    m = sub.add_parser(
        "migrate",
        help="create or upgrade the coordinator's database schema",
        description="Apply the Alembic migrations to a database (idempotent; a deployment's one-shot step).",
    )
    m.add_argument("--database-url", default=None, help="database URL (env STRATA_COORDINATOR_DATABASE_URL)")
    m.add_argument(
        "--config", metavar="FILE", help="TOML config file; reads database_url from its [coordinator] table"
    )
    m.set_defaults(func=migrate_main)


def main(args: argparse.Namespace) -> int:
    settings = CoordinatorSettings.from_args(args)
    from coordinator.server import run

    try:
        run(settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"strata coordinator: {exc}", file=sys.stderr)
        return 1
    return 0


def migrate_main(args: argparse.Namespace) -> int:
    settings = CoordinatorSettings.load({"database_url": args.database_url}, args.config)
    from coordinator.storage.db import migrate

    migrate(settings.database_url)
    print(f"database schema at {settings.database_url.split('@')[-1]} is up to date")
    return 0
