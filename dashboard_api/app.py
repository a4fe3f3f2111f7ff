"""The dashboard's FastAPI app: engines, settings on app.state, error handlers, routers, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

from dashboard_api import metrics
from dashboard_api.deps import require_read
from dashboard_api.errors import ApiError, api_error, database_error
from dashboard_api.routes import admin, divergence, federations, health, page, rounds, tree, workers
from strata import __version__
from strata.storage.db import make_engine


def _read_only(engine: Engine) -> Engine:
    """The engine for every query: its connections refuse writes (query_only on SQLite, read-only on PostgreSQL)."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _query_only(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only=ON")
            cur.close()

        return engine
    if engine.dialect.name == "postgresql":
        return engine.execution_options(postgresql_readonly=True)
    return engine


def create_app(
    database_url: str,
    online_seconds: float = 30.0,
    read_token: str | None = None,
    admin_key: str | None = None,
) -> FastAPI:
    """The dashboard API on the coordinator's database at `database_url`.

    A worker counts as online when its last_seen is within `online_seconds` of now. Reads go through a
    read-only engine and need `read_token` when one is set; writes (writes.py) need `admin_key`.
    """
    engine = make_engine(database_url)
    write_engine = make_engine(database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.dispose()
            write_engine.dispose()

    app = FastAPI(
        title="Strata dashboard API",
        version=__version__,
        description="Federation status, round metrics, targeted blocks and layer-wise divergence of a Strata "
        "coordinator; reads may need a read token, writes (federations, worker tokens, pause, resume, stop) the "
        "admin key.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.read_engine = _read_only(engine)
    app.state.sessions = sessionmaker(app.state.read_engine, autoflush=False, expire_on_commit=False)
    app.state.online_seconds = float(online_seconds)
    app.state.write_sessions = sessionmaker(write_engine, autoflush=False, expire_on_commit=False)
    app.state.read_token = read_token or None
    app.state.admin_key = admin_key or None
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(ApiError, api_error)
    app.include_router(health.router)
    for reads in (federations, rounds, divergence, workers, tree):
        app.include_router(reads.router, dependencies=[Depends(require_read)])
    app.include_router(admin.router)
    metrics.install(app)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    app.include_router(page.router)
    return app
