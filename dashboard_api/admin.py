"""Access control and the administrator's writes.

Reads (every GET under /api/v1) are open unless the dashboard has a read token; then they need
`Authorization: Bearer <read token>` (the admin key reads too). Writes need the admin key, and are off
when none is configured: create a federation, issue, list and revoke worker tokens, pause, resume and
stop a federation. The coordinator picks up tokens and the requested state from the database within
a few seconds (`control_poll_seconds`).
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dashboard_api.schemas import ErrorOut, FederationSummary, UtcDateTime
from strata.storage.models import Federation, FederationState, WorkerToken
from strata.storage.tokens import hash_token

FINISHED = (FederationState.COMPLETED.value, FederationState.FAILED.value, FederationState.STOPPED.value)
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"


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


def write_session(request: Request) -> Iterator[Session]:
    with request.app.state.write_sessions() as session:
        yield session


WriteSession = Annotated[Session, Depends(write_session)]
DENIED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or an unknown one."},
    403: {"model": ErrorOut, "description": "Not the admin key, or writes are disabled."},
}
admin = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)], responses=DENIED, tags=["admin"])


class FederationCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="Unique federation name.")
    total_rounds: int = Field(5, ge=1, le=1_000_000, description="Rounds to run.")
    task_kind: Literal["sequence-classification", "causal-lm"] = Field(
        "sequence-classification", description="What the federation trains."
    )
    model_name: str = Field("", max_length=512, description="The base model (a path or a name), for display.")


class TokenCreate(BaseModel):
    label: str = Field(
        min_length=1, max_length=128, description="Whose token this is, e.g. the organisation."
    )


class TokenOut(BaseModel):
    id: int = Field(description="Token id (to revoke it).")
    label: str = Field(description="Whose token this is.")
    prefix: str = Field(description="The token's first characters, to recognise it.")
    created_at: UtcDateTime = Field(description="When it was issued (UTC).")
    revoked_at: UtcDateTime | None = Field(description="When it was revoked (UTC); null while valid.")


class IssuedToken(TokenOut):
    token: str = Field(description="The token itself: shown once, never stored (only its SHA-256 is).")


class ControlOut(BaseModel):
    name: str = Field(description="Federation name.")
    state: str = Field(description="The federation's state as the coordinator last wrote it.")
    desired_state: str = Field(description="What was asked: running, paused or stopped.")


def _federation(session: Session, name: str) -> Federation:
    fed = session.scalar(select(Federation).where(Federation.name == name))
    if fed is None:
        raise HTTPException(404, f"federation {name!r} not found")
    return fed


FedName = Annotated[str, Path(pattern=NAME_PATTERN, description="Federation name.")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown federation or token."}
}


@admin.post(
    "/federations",
    status_code=201,
    response_model=FederationSummary,
    responses={409: {"model": ErrorOut, "description": "A federation of that name exists."}},
    summary="Create a federation",
)
def create_federation(body: FederationCreate, session: WriteSession) -> FederationSummary:
    """Register a federation (state created); a coordinator started with `--federation NAME` runs it."""
    fed = Federation(
        name=body.name,
        total_rounds=body.total_rounds,
        task_kind=body.task_kind,
        model_name=body.model_name,
        state=FederationState.CREATED.value,
        config={},
    )
    session.add(fed)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(409, f"federation {body.name!r} already exists") from None
    return FederationSummary.model_validate(fed)


@admin.get(
    "/federations/{name}/tokens", response_model=list[TokenOut], responses=NOT_FOUND, summary="List tokens"
)
def list_tokens(name: FedName, session: WriteSession) -> list[TokenOut]:
    """The worker tokens issued for a federation (never the tokens themselves)."""
    fed = _federation(session, name)
    rows = session.scalars(
        select(WorkerToken).where(WorkerToken.federation_id == fed.id).order_by(WorkerToken.id)
    )
    return [TokenOut.model_validate(t, from_attributes=True) for t in rows]


@admin.post(
    "/federations/{name}/tokens",
    status_code=201,
    response_model=IssuedToken,
    responses=NOT_FOUND,
    summary="Issue a worker token",
)
def issue_token(name: FedName, body: TokenCreate, session: WriteSession) -> IssuedToken:
    """A new token an organisation's worker joins with; the response is the only place it appears."""
    fed = _federation(session, name)
    token = "strata_" + secrets.token_urlsafe(24)
    row = WorkerToken(federation_id=fed.id, label=body.label, token_hash=hash_token(token), prefix=token[:12])
    session.add(row)
    session.commit()
    return IssuedToken(**TokenOut.model_validate(row, from_attributes=True).model_dump(), token=token)


@admin.delete(
    "/federations/{name}/tokens/{token_id}",
    response_model=TokenOut,
    responses=NOT_FOUND,
    summary="Revoke a token",
)
def revoke_token(
    name: FedName,
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1, description="Token id.")],
    session: WriteSession,
) -> TokenOut:
    """Revoke a worker token: the coordinator refuses it from its next check on (idempotent)."""
    fed = _federation(session, name)
    row = session.get(WorkerToken, token_id)
    if row is None or row.federation_id != fed.id:
        raise HTTPException(404, f"no token {token_id} in federation {name!r}")
    if row.revoked_at is None:
        row.revoked_at = dt.datetime.now(dt.UTC)
        session.commit()
    return TokenOut.model_validate(row, from_attributes=True)


def _control(session: Session, name: str, desired: str) -> ControlOut:
    fed = _federation(session, name)
    if fed.state in FINISHED:
        verb = {"paused": "pause", "running": "resume", "stopped": "stop"}[desired]
        raise HTTPException(409, f"federation {name!r} has ended ({fed.state}): nothing to {verb}")
    fed.desired_state = desired
    session.commit()
    return ControlOut(name=fed.name, state=fed.state, desired_state=desired)


CONFLICT: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    409: {"model": ErrorOut, "description": "The federation has already ended."},
}


@admin.post("/federations/{name}/pause", response_model=ControlOut, responses=CONFLICT, summary="Pause")
def pause(name: FedName, session: WriteSession) -> ControlOut:
    """Open no new round after the current one until resumed."""
    return _control(session, name, "paused")


@admin.post("/federations/{name}/resume", response_model=ControlOut, responses=CONFLICT, summary="Resume")
def resume(name: FedName, session: WriteSession) -> ControlOut:
    """Open rounds again."""
    return _control(session, name, "running")


@admin.post("/federations/{name}/stop", response_model=ControlOut, responses=CONFLICT, summary="Stop")
def stop(name: FedName, session: WriteSession) -> ControlOut:
    """End the federation after the current round: workers are told it is done, the coordinator exits."""
    return _control(session, name, "stopped")
