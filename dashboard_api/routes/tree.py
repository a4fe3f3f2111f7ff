"""GET a parent's attention weights of key blocks (one round's, and over rounds) and the parent rounds a
sub-federation served: federations of federations (docs/methods.md section 5)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from dashboard_api import tree_queries
from dashboard_api.deps import (
    MAX_INT,
    FederationDep,
    FirstRound,
    LastRound,
    RoundNumber,
    SessionDep,
    check_range,
)
from dashboard_api.errors import NOT_FOUND, UNAVAILABLE
from dashboard_api.routes import API
from dashboard_api.schemas import ErrorOut, Page
from dashboard_api.tree_schemas import KeyBlockWeightsOut, KeyWeightMatrix, ParentRoundOut

router = APIRouter(prefix=API, responses=UNAVAILABLE, tags=["tree"])


@router.get(
    "/federations/{name}/rounds/{number}/key-weights",
    response_model=list[KeyBlockWeightsOut],
    responses=NOT_FOUND,
    summary="A round's key-block weights",
)
def get_round_key_weights(
    federation: FederationDep, session: SessionDep, number: RoundNumber
) -> list[KeyBlockWeightsOut]:
    """Per key block (model order), each member's attention weight α and cosine to the round's mean update,
    as the parent combined them. Empty for a round without key blocks (or one that did not complete)."""
    return tree_queries.round_key_weights(session, federation, number)


@router.get(
    "/federations/{name}/key-weights",
    response_model=KeyWeightMatrix,
    responses={**NOT_FOUND, 422: {"model": ErrorOut, "description": "Bad range or paging."}},
    summary="Key-block weights over rounds",
)
def get_key_weight_matrix(
    federation: FederationDep,
    session: SessionDep,
    first: FirstRound = 1,
    last: LastRound = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Rounds with key weights to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Largest number of rounds (columns).")] = 200,
) -> KeyWeightMatrix:
    """Each member's attention weight α (and cosine) per key block over the completed rounds of a range that
    have key weights: weights[block][member][round]."""
    check_range(first, last)
    return tree_queries.key_weight_matrix(session, federation, first, last, offset, limit)


@router.get(
    "/federations/{name}/parent-rounds",
    response_model=Page[ParentRoundOut],
    responses=NOT_FOUND,
    summary="Parent rounds served",
)
def list_parent_rounds(
    federation: FederationDep,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Number of parent rounds to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500, description="Largest number of parent rounds to return.")] = 50,
) -> Page[ParentRoundOut]:
    """The parent federation's rounds this (sub-)federation served, by parent round ascending: the parent's
    version, its own version made from it, its inner rounds and their last test metric, and whether its update
    went up. Empty for a federation without a parent."""
    return tree_queries.parent_rounds(session, federation, offset, limit)
