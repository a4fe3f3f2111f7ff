"""Run the dashboard API with uvicorn: `python -m dashboard_api.server --database-url URL`."""

from __future__ import annotations

import argparse

import uvicorn

from dashboard_api.app import create_app


def build_server(
    database_url: str,
    host: str,
    port: int,
    online_seconds: float,
    log_level: str = "info",
    read_token: str | None = None,
    admin_key: str | None = None,
) -> uvicorn.Server:
    """A uvicorn server for the dashboard app (`.run()` serves until interrupted). It does not migrate (the
    coordinator owns the schema): a missing schema makes /healthz answer 503 until the coordinator has run."""
    app = create_app(database_url, online_seconds=online_seconds, read_token=read_token, admin_key=admin_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    return uvicorn.Server(config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dashboard_api", description="Strata dashboard API (read-only).")
    parser.add_argument("--database-url", required=True, help="the coordinator's database URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--online-seconds", type=float, default=30.0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    build_server(args.database_url, args.host, args.port, args.online_seconds, args.log_level).run()


if __name__ == "__main__":
    main()
