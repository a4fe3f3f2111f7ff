"""GET a round's layer-wise divergence and the block × round matrix of a federation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from dashboard_api import queries
from dashboard_api.alignment import AlignmentMatrix, alignment_matrix
from dashboard_api.deps import (
    MAX_INT,
    FederationDep,
    FirstRound,
    LastRound,
    RoundNumber,
    SessionDep,
    check_range,
)
from dashboard_api.divergence_schemas import BlockMatrix, BlockMetric, RoundDivergenceOut
from dashboard_api.errors import NOT_FOUND, UNAVAILABLE
from dashboard_api.routes import API
from dashboard_api.schemas import ErrorOut

router = APIRouter(prefix=API, responses=UNAVAILABLE)


@router.get(
    "/federations/{name}/rounds/{number}/divergence",
    response_model=RoundDivergenceOut,
    responses=NOT_FOUND,
    summary="A round's layer-wise divergence",
    tags=["divergence"],
)
def get_round_divergence(
    federation: FederationDep,
    session: SessionDep,
    number: RoundNumber,
    tensors: Annotated[bool, Query(description="Also list every tensor (per round and per worker).")] = False,
) -> RoundDivergenceOut:
    """How far the round's updates drifted apart, per block (and per tensor), with each worker's update
    norm and cosine to the mean update. Empty lists for a round that did not complete."""
    return queries.round_divergence(session, federation, number, tensors)


@router.get(
    "/federations/{name}/blocks",
    response_model=BlockMatrix,
    responses={**NOT_FOUND, 422: {"model": ErrorOut, "description": "Unknown metric or bad paging."}},
    summary="Block × round matrix",
    tags=["blocks"],
)
def get_block_matrix(
    federation: FederationDep,
    session: SessionDep,
    metric: Annotated[BlockMetric, Query(description="The value to show per cell.")] = "divergence",
    first: FirstRound = 1,
    last: LastRound = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Completed rounds of the range to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Largest number of rounds (columns).")] = 200,
) -> BlockMatrix:
    """Which blocks each completed round trained and applied, and a metric per block and round (the layer-wise
    divergence by default): rows are the model's blocks in model order, columns the rounds of the range."""
    check_range(first, last)
    return queries.block_matrix(session, federation, metric, first, last, offset, limit)


@router.get(
    "/federations/{name}/alignment",
    response_model=AlignmentMatrix,
    responses={**NOT_FOUND, 422: {"model": ErrorOut, "description": "Bad range or paging."}},
    summary="Worker × round alignment",
    tags=["divergence"],
)
def get_alignment(
    federation: FederationDep,
    session: SessionDep,
    first: FirstRound = 1,
    last: LastRound = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Measured rounds of the range to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Largest number of rounds (columns).")] = 200,
) -> AlignmentMatrix:
    """Each worker's whole update against the round's mean, per completed round with measured divergence:
    its norm ‖Δ_k‖ and cosine to the mean update (combined exactly from the per-block alignments)."""
    check_range(first, last)
    return alignment_matrix(session, federation, first, last, offset, limit)
