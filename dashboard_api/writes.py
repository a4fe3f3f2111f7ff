"""Every write the dashboard makes: create a federation, issue and revoke worker tokens, pause, resume, stop."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dashboard_api.errors import Conflict, NotFound
from dashboard_api.queries import federation
from dashboard_api.schemas import ControlOut, FederationCreate, FederationSummary, IssuedToken, TokenOut
from strata.storage.models import Federation, FederationState, WorkerToken
from strata.storage.tokens import hash_token

FINISHED = (FederationState.COMPLETED.value, FederationState.FAILED.value, FederationState.STOPPED.value)
DesiredState = Literal["paused", "running", "stopped"]
VERB: dict[DesiredState, str] = {"paused": "pause", "running": "resume", "stopped": "stop"}


def create_federation(session: Session, body: FederationCreate) -> FederationSummary:
    """A new federation in state created; Conflict when the name is taken."""
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
        raise Conflict(f"federation {body.name!r} already exists") from None
    return FederationSummary.model_validate(fed)


def issue_token(session: Session, name: str, label: str) -> IssuedToken:
    """A new worker token for federation `name`: only its hash and first characters are stored."""
    fed = federation(session, name)
    token = "strata_" + secrets.token_urlsafe(24)
    row = WorkerToken(federation_id=fed.id, label=label, token_hash=hash_token(token), prefix=token[:12])
    session.add(row)
    session.commit()
    return IssuedToken(**TokenOut.model_validate(row).model_dump(), token=token)


def revoke_token(session: Session, name: str, token_id: int) -> TokenOut:
    """Mark a token of federation `name` revoked, once (revoking it again changes nothing)."""
    fed = federation(session, name)
    row = session.get(WorkerToken, token_id)
    if row is None or row.federation_id != fed.id:
        raise NotFound(f"no token {token_id} in federation {name!r}")
    if row.revoked_at is None:
        row.revoked_at = dt.datetime.now(dt.UTC)
        session.commit()
    return TokenOut.model_validate(row)


def request_state(session: Session, name: str, desired: DesiredState) -> ControlOut:
    """Ask the coordinator to pause, resume or stop federation `name`; Conflict when it has ended."""
    fed = session.get_one(Federation, federation(session, name).id)
    if fed.state in FINISHED:
        raise Conflict(f"federation {name!r} has ended ({fed.state}): nothing to {VERB[desired]}")
    fed.desired_state = desired
    session.commit()
    return ControlOut(name=fed.name, state=fed.state, desired_state=desired)
