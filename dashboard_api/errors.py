"""The errors the API answers with: what queries and writes raise, their handlers, and their OpenAPI entries."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import Request
from fastapi.responses import JSONResponse

from dashboard_api.schemas import ErrorOut

log = logging.getLogger(__name__)

Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": ErrorOut, "description": "Unknown federation or round."}}
UNAVAILABLE: Responses = {
    503: {"model": ErrorOut, "description": "The database is unreachable or has no schema."}
}


class ApiError(Exception):
    """A request the database cannot answer as asked: `status_code`, and the message as the `detail`."""

    status_code: ClassVar[int]


class NotFound(ApiError):
    """An unknown federation, round or token."""

    status_code = 404


class Conflict(ApiError):
    """A federation name already taken, or a change to a federation that has ended."""

    status_code = 409


async def api_error(_request: Request, exc: Exception) -> JSONResponse:
    """The answer to an ApiError, the same as an HTTPException's."""
    assert isinstance(exc, ApiError)
    return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})


def db_reason(exc: BaseException) -> str:
    """The first line of a database error, with the driver's exception type."""
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {first[0]}" if first else type(cause).__name__


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        status_code=503,
        content={"detail": f"database unavailable or schema missing (see /healthz): {db_reason(exc)}"},
    )
