"""The routes' dependencies and parameters as Annotated aliases: sessions, the named federation, access checks."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request
from sqlalchemy.orm import Session

from dashboard_api import queries
from dashboard_api.queries import FederationRef

MAX_INT = 2**31 - 1  # ids, round numbers and offsets are 32-bit columns: beyond, a precise 422, not a 500
RoundNumber = Annotated[int, Path(ge=1, le=MAX_INT, description="Round number.")]
FirstRound = Annotated[int, Query(ge=1, le=MAX_INT, description="First round number of the range.")]
LastRound = Annotated[
    int | None, Query(ge=1, le=MAX_INT, description="Last round number of the range (default: the newest).")
]


def check_range(first: int, last: int | None) -> None:
    """A range of rounds whose last comes before its first: a precise 422."""
    if last is not None and last < first:
        raise HTTPException(status_code=422, detail=f"empty range: last ({last}) is before first ({first})")


def get_session(request: Request) -> Iterator[Session]:
    """A session on the read-only engine for one request."""
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_write_session(request: Request) -> Iterator[Session]:
    """A session that may write, for the admin routes (writes.py commits)."""
    with request.app.state.write_sessions() as session:
        yield session


WriteSessionDep = Annotated[Session, Depends(get_write_session)]


def get_online_since(request: Request) -> dt.datetime:
    """Workers whose last_seen is at or after this instant count as online."""
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=request.app.state.online_seconds)


OnlineSinceDep = Annotated[dt.datetime, Depends(get_online_since)]


def get_federation(
    name: Annotated[str, Path(description="Federation name.")], session: SessionDep
) -> FederationRef:
    """The federation the path names (404 before any query parameter is checked)."""
    return queries.federation(session, name)


FederationDep = Annotated[FederationRef, Depends(get_federation)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _same(a: str, b: str | None) -> bool:
    return b is not None and hmac.compare_digest(a.encode(), b.encode())


def require_read(request: Request) -> None:
    """Reads need the read token (or the admin key) when the dashboard has one."""
    read, admin = request.app.state.read_token, request.app.state.admin_key
    if read is None:
        return
    token = _bearer(request)
    if token is None:
        raise HTTPException(
            401,
            "this dashboard needs a read token: Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
    if not (_same(token, read) or _same(token, admin)):
        raise HTTPException(401, "unknown token", {"WWW-Authenticate": "Bearer"})


def require_admin(request: Request) -> None:
    """Writes need the admin key, and are refused when the dashboard has none."""
    admin = request.app.state.admin_key
    if admin is None:
        raise HTTPException(403, "writes are disabled: start the dashboard with an admin key (--admin-key)")
    token = _bearer(request)
    if token is None:
        raise HTTPException(
            401, "this needs the admin key: Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
        )
    if not _same(token, admin):
        raise HTTPException(403, "this token may not change anything: writes need the admin key")
