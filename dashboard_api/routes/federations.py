"""GET /api/v1/federations and /api/v1/federations/{name}: the federations and their status."""

from __future__ import annotations

from fastapi import APIRouter

from dashboard_api import queries
from dashboard_api.deps import FederationDep, OnlineSinceDep, SessionDep
from dashboard_api.errors import NOT_FOUND, UNAVAILABLE
from dashboard_api.routes import API
from dashboard_api.schemas import FederationStatus, FederationSummary

router = APIRouter(prefix=API, responses=UNAVAILABLE)


@router.get(
    "/federations", response_model=list[FederationSummary], summary="List federations", tags=["federations"]
)
def list_federations(session: SessionDep) -> list[FederationSummary]:
    """Every federation, by name."""
    return queries.federations(session)


@router.get(
    "/federations/{name}",
    response_model=FederationStatus,
    responses=NOT_FOUND,
    summary="Federation status",
    tags=["federations"],
)
def get_federation_status(
    federation: FederationDep, session: SessionDep, online_since: OnlineSinceDep
) -> FederationStatus:
    """Status of one federation: model, progress, worker counts and the newest test metrics."""
    return queries.federation_status(session, federation, online_since)
