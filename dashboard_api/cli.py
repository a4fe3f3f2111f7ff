"""`strata dashboard`: serve the read-only REST API over the coordinator's database."""

from __future__ import annotations

import argparse

from dashboard_api.settings import DashboardSettings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "dashboard",
        help="serve federation status and metrics over REST",
        description="Serve the dashboard REST API (OpenAPI at /docs) on the coordinator's database.",
    )
    DashboardSettings.add_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    s = DashboardSettings.from_args(args)
    from dashboard_api.server import serve

    serve(s.database_url, s.host, s.port, s.online_seconds, s.log_level)
    return 0
