"""GET /api/v1/federations/{name}/rounds[/{number}[/blocks]]: a federation's rounds, one round, its blocks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from dashboard_api import queries
from dashboard_api.deps import MAX_INT, FederationDep, RoundNumber, SessionDep
from dashboard_api.errors import NOT_FOUND, UNAVAILABLE
from dashboard_api.routes import API
from dashboard_api.schemas import BlockOutcomeOut, Page, RoundDetail, RoundOut
from strata.storage.models import RoundState

router = APIRouter(prefix=API, responses=UNAVAILABLE)


@router.get(
    "/federations/{name}/rounds",
    response_model=Page[RoundOut],
    responses=NOT_FOUND,
    summary="List rounds",
    tags=["rounds"],
)
def list_rounds(
    federation: FederationDep,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Number of rounds to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500, description="Largest number of rounds to return.")] = 50,
    state: Annotated[RoundState | None, Query(description="Only rounds in this state.")] = None,
) -> Page[RoundOut]:
    """One page of the federation's rounds, by number ascending."""
    return queries.rounds(session, federation, offset, limit, state)


@router.get(
    "/federations/{name}/rounds/{number}",
    response_model=RoundDetail,
    responses=NOT_FOUND,
    summary="Round detail",
    tags=["rounds"],
)
def get_round(federation: FederationDep, session: SessionDep, number: RoundNumber) -> RoundDetail:
    """One round with its metrics, its blocks' outcomes, every update received and the workers'
    evaluations."""
    return queries.round_detail(session, federation, number)


@router.get(
    "/federations/{name}/rounds/{number}/blocks",
    response_model=list[BlockOutcomeOut],
    responses=NOT_FOUND,
    summary="A round's blocks",
    tags=["blocks"],
)
def get_round_blocks(
    federation: FederationDep, session: SessionDep, number: RoundNumber
) -> list[BlockOutcomeOut]:
    """Every block of the model in one round, in model order: trained, applied, the policy's score and
    the measurements behind it. Empty for a round that did not complete."""
    return queries.round_blocks(session, federation, number)
