"""`strata dashboard`: serve the REST API (reads, and writes with the admin key) on the coordinator's database."""

from __future__ import annotations

import argparse

from dashboard_api.settings import DashboardSettings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    DashboardSettings.add_command(
        sub,
        "dashboard",
        help="serve federation status and metrics over REST",
        description="Serve the dashboard REST API (OpenAPI at /docs) on the coordinator's database.",
        run=serve,
    )


def serve(s: DashboardSettings) -> int:
    from dashboard_api.server import build_server

    build_server(
        s.database_url,
        s.host,
        s.port,
        s.online_seconds,
        s.log_level,
        s.read_token.get_secret_value() if s.read_token else None,
        s.admin_key.get_secret_value() if s.admin_key else None,
    ).run()
    return 0
