"""The admin key's routes under /api/v1: create a federation, list, issue and revoke tokens, pause, resume, stop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from dashboard_api import queries, writes
from dashboard_api.deps import MAX_INT, SessionDep, WriteSessionDep, require_admin
from dashboard_api.errors import Responses
from dashboard_api.routes import API
from dashboard_api.schemas import (
    NAME_PATTERN,
    ControlOut,
    ErrorOut,
    FederationCreate,
    FederationSummary,
    IssuedToken,
    TokenCreate,
    TokenOut,
)

FedName = Annotated[str, Path(pattern=NAME_PATTERN, description="Federation name.")]
DENIED: Responses = {
    401: {"model": ErrorOut, "description": "No token, or an unknown one."},
    403: {"model": ErrorOut, "description": "Not the admin key, or writes are disabled."},
}
NOT_FOUND: Responses = {404: {"model": ErrorOut, "description": "Unknown federation or token."}}
CONFLICT: Responses = {
    **NOT_FOUND,
    409: {"model": ErrorOut, "description": "The federation has already ended."},
}

router = APIRouter(prefix=API, dependencies=[Depends(require_admin)], responses=DENIED, tags=["admin"])


@router.post(
    "/federations",
    status_code=201,
    response_model=FederationSummary,
    responses={409: {"model": ErrorOut, "description": "A federation of that name exists."}},
    summary="Create a federation",
)
def create_federation(body: FederationCreate, session: WriteSessionDep) -> FederationSummary:
    """Register a federation (state created); a coordinator started with `--federation NAME` runs it."""
    return writes.create_federation(session, body)


@router.get(
    "/federations/{name}/tokens", response_model=list[TokenOut], responses=NOT_FOUND, summary="List tokens"
)
def list_tokens(name: FedName, session: SessionDep) -> list[TokenOut]:
    """The worker tokens issued for a federation (never the tokens themselves)."""
    return queries.tokens(session, name)


@router.post(
    "/federations/{name}/tokens",
    status_code=201,
    response_model=IssuedToken,
    responses=NOT_FOUND,
    summary="Issue a worker token",
)
def issue_token(name: FedName, body: TokenCreate, session: WriteSessionDep) -> IssuedToken:
    """A new token an organisation's worker joins with; the response is the only place it appears."""
    return writes.issue_token(session, name, body.label)


@router.delete(
    "/federations/{name}/tokens/{token_id}",
    response_model=TokenOut,
    responses=NOT_FOUND,
    summary="Revoke a token",
)
def revoke_token(
    name: FedName,
    token_id: Annotated[int, Path(ge=1, le=MAX_INT, description="Token id.")],
    session: WriteSessionDep,
) -> TokenOut:
    """Revoke a worker token: the coordinator refuses it from its next check on (idempotent)."""
    return writes.revoke_token(session, name, token_id)


@router.post("/federations/{name}/pause", response_model=ControlOut, responses=CONFLICT, summary="Pause")
def pause(name: FedName, session: WriteSessionDep) -> ControlOut:
    """Open no new round after the current one until resumed."""
    return writes.request_state(session, name, "paused")


@router.post("/federations/{name}/resume", response_model=ControlOut, responses=CONFLICT, summary="Resume")
def resume(name: FedName, session: WriteSessionDep) -> ControlOut:
    """Open rounds again."""
    return writes.request_state(session, name, "running")


@router.post("/federations/{name}/stop", response_model=ControlOut, responses=CONFLICT, summary="Stop")
def stop(name: FedName, session: WriteSessionDep) -> ControlOut:
    """End the federation after the current round: workers are told it is done, the coordinator exits."""
    return writes.request_state(session, name, "stopped")
