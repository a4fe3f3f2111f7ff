"""A sub-federation's records of the parent rounds it served (docs/methods.md section 5), and the
attention weights a parent records for its key blocks: one short transaction per event."""

from __future__ import annotations

from sqlalchemy import func, select, update

from coordinator.store import Store
from strata.storage.models import (
    Federation,
    ParentRound,
    Round,
    RoundState,
    Update,
    UpdateStatus,
    utcnow,
)


def parent_round(store: Store, federation_id: int, number: int) -> ParentRound | None:
    """The record of parent round `number`, if this federation has started serving it."""
    with store.sessions() as s:
        return s.scalar(
            select(ParentRound).where(
                ParentRound.federation_id == federation_id, ParentRound.parent_round == number
            )
        )


def record_sync(
    store: Store,
    federation_id: int,
    number: int,
    parent_version: int,
    parent_hash: str,
    version: int,
    version_hash: str,
    rounds_before: int,
    task: str,
) -> ParentRound:
    """In one transaction: parent round `number` is being served from `version` (this federation's
    version made from the parent's), and the federation is at that version. A record of the same parent
    round from an earlier start (the parent restarted it from another version) is replaced."""
    with store.sessions.begin() as s:
        old = s.scalar(
            select(ParentRound).where(
                ParentRound.federation_id == federation_id, ParentRound.parent_round == number
            )
        )
        if old is not None:
            s.delete(old)
            s.flush()
        s.execute(  # parent rounds left unfinished (the parent moved on): their delivery is unconfirmed
            update(ParentRound)
            .where(ParentRound.federation_id == federation_id, ParentRound.state == "training")
            .values(state="ended", finished_at=utcnow())
        )
        pr = ParentRound(
            federation_id=federation_id,
            parent_round=number,
            parent_version=parent_version,
            parent_hash=parent_hash,
            start_version=version,
            rounds_before=rounds_before,
            state="training",
            num_samples=0,
            task=task,
        )
        s.add(pr)
        s.execute(
            update(Federation)
            .where(Federation.id == federation_id)
            .values(model_version=version, model_hash=version_hash, updated_at=utcnow())
        )
        s.flush()
        s.expunge(pr)
        return pr


def unfinished(store: Store, federation_id: int) -> ParentRound | None:
    """The latest parent round still being served (a restart cut it off)."""
    with store.sessions() as s:
        return s.scalar(
            select(ParentRound)
            .where(ParentRound.federation_id == federation_id, ParentRound.state == "training")
            .order_by(ParentRound.parent_round.desc())
            .limit(1)
        )


def finish_parent_round(store: Store, row_id: int, state: str, num_samples: int) -> None:
    with store.sessions.begin() as s:
        s.execute(
            update(ParentRound)
            .where(ParentRound.id == row_id)
            .values(state=state, num_samples=num_samples, finished_at=utcnow())
        )


def inner_rounds(store: Store, federation_id: int, after: int) -> list[Round]:
    """This federation's completed rounds numbered above `after` (the inner rounds of a parent round)."""
    with store.sessions() as s:
        return list(
            s.scalars(
                select(Round)
                .where(
                    Round.federation_id == federation_id,
                    Round.number > after,
                    Round.state == RoundState.COMPLETED.value,
                )
                .order_by(Round.number)
            )
        )


def contributed_samples(store: Store, federation_id: int, after: int) -> int:
    """n_c: over the distinct members with an accepted update in the completed rounds numbered above
    `after`, the sum of the largest sample count each reported."""
    with store.sessions() as s:
        per_worker = (
            select(func.max(Update.num_samples).label("n"))
            .join(Round, Update.round_id == Round.id)
            .where(
                Round.federation_id == federation_id,
                Round.number > after,
                Round.state == RoundState.COMPLETED.value,
                Update.status == UpdateStatus.ACCEPTED.value,
            )
            .group_by(Update.worker_id)
            .subquery()
        )
        return int(s.scalar(select(func.coalesce(func.sum(per_worker.c.n), 0))) or 0)
