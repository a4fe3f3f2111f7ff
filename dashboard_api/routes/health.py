"""GET /healthz: liveness and the database check."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy.exc import SQLAlchemyError

from dashboard_api import queries
from dashboard_api.errors import UNAVAILABLE, db_reason
from dashboard_api.schemas import Health

SCHEMA_MISSING = "database schema missing: run the coordinator or `strata migrate` first"

router = APIRouter()


@router.get(
    "/healthz",
    response_model=Health,
    responses=UNAVAILABLE,
    summary="Liveness and database check",
    tags=["health"],
)
def healthz(request: Request) -> Health:
    """`ok` when the database answers `SELECT 1` and holds the coordinator's schema; 503 otherwise."""
    try:
        present = queries.schema_present(request.app.state.read_engine)
    except SQLAlchemyError as exc:
        raise HTTPException(status_code=503, detail=f"database unreachable: {db_reason(exc)}") from exc
    if not present:
        raise HTTPException(status_code=503, detail=SCHEMA_MISSING)
    return Health(status="ok")
