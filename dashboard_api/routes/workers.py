"""GET /api/v1/federations/{name}/workers: a federation's workers, their updates and latest refusals."""

from __future__ import annotations

from fastapi import APIRouter

from dashboard_api import queries
from dashboard_api.deps import FederationDep, OnlineSinceDep, SessionDep
from dashboard_api.errors import NOT_FOUND, UNAVAILABLE
from dashboard_api.routes import API
from dashboard_api.schemas import WorkerOut

router = APIRouter(prefix=API, responses=UNAVAILABLE)


@router.get(
    "/federations/{name}/workers",
    response_model=list[WorkerOut],
    responses=NOT_FOUND,
    summary="List workers",
    tags=["workers"],
)
def list_workers(
    federation: FederationDep, session: SessionDep, online_since: OnlineSinceDep
) -> list[WorkerOut]:
    """The federation's workers, in joining order, with their update counts, upload volume and their latest
    refused updates (rejected or late) with the reasons."""
    return queries.workers(session, federation, online_since)
