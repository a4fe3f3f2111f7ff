"""The coordinator's writes to its database: one short transaction per event of a federation."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from strata.storage.db import make_engine, session_factory
from strata.storage.models import (
    Evaluation,
    Federation,
    FederationState,
    KeyWeight,
    Round,
    RoundBlock,
    RoundState,
    RoundTensor,
    Update,
    UpdateAlignment,
    UpdateStatus,
    Worker,
    WorkerToken,
    utcnow,
)
from strata.storage.tokens import hash_token


class Store:
    """Typed operations on the coordinator's tables; every method commits or changes nothing."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # federations
    def get_or_create_federation(self, name: str, **fields: Any) -> Federation:
        with self.sessions.begin() as s:
            fed = s.scalar(select(Federation).where(Federation.name == name))
            if fed is None:
                fed = Federation(name=name, **fields)
                s.add(fed)
                s.flush()
            s.expunge(fed)
            return fed

    def update_federation(self, federation_id: int, **fields: Any) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(Federation).where(Federation.id == federation_id).values(updated_at=utcnow(), **fields)
            )

    def federation_by_name(self, name: str) -> Federation | None:
        with self.sessions() as s:
            return s.scalar(select(Federation).where(Federation.name == name))

    def federation(self, federation_id: int) -> Federation:
        with self.sessions() as s:
            fed = s.get(Federation, federation_id)
            assert fed is not None
            return fed

    def control(self, federation_id: int) -> tuple[str | None, set[str]]:
        """What an administrator asked for: the desired state and the hashes of the valid issued tokens."""
        with self.sessions() as s:
            desired = s.scalar(select(Federation.desired_state).where(Federation.id == federation_id))
            hashes = s.scalars(
                select(WorkerToken.token_hash).where(
                    WorkerToken.federation_id == federation_id, WorkerToken.revoked_at.is_(None)
                )
            )
            return desired, set(hashes)

    # workers
    def upsert_worker(self, federation_id: int, name: str, token: str, **fields: Any) -> Worker:
        """Register a worker, or refresh it when the same name rejoins with the same token."""
        with self.sessions.begin() as s:
            w = s.scalar(select(Worker).where(Worker.federation_id == federation_id, Worker.name == name))
            if w is None:
                w = Worker(
                    federation_id=federation_id,
                    name=name,
                    uid=str(uuid.uuid4()),
                    token_hash=hash_token(token),
                    **fields,
                )
                s.add(w)
            else:
                if w.token_hash != hash_token(token):
                    raise PermissionError(f"worker name {name!r} is registered with another token")
                for k, v in fields.items():
                    setattr(w, k, v)
                w.last_seen = utcnow()
            s.flush()
            s.expunge(w)
            return w

    def update_worker(self, worker_id: int, **fields: Any) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(**fields))

    def workers(self, federation_id: int) -> list[Worker]:
        with self.sessions() as s:
            return list(s.scalars(select(Worker).where(Worker.federation_id == federation_id)))

    def touch_workers(self, seen: dict[int, dt.datetime]) -> None:
        if not seen:
            return
        with self.sessions.begin() as s:
            for wid, when in seen.items():
                s.execute(update(Worker).where(Worker.id == wid).values(last_seen=when))

    # rounds
    def open_round(
        self,
        federation_id: int,
        number: int,
        base_version: int,
        base_hash: str,
        participants: list[str],
        min_updates: int,
        deadline_at: dt.datetime,
        blocks: list[str] | None = None,
        probe: bool = False,
        **fields: Any,
    ) -> int:
        with self.sessions.begin() as s:
            r = Round(
                **fields,
                federation_id=federation_id,
                number=number,
                base_version=base_version,
                base_hash=base_hash,
                participants=participants,
                min_updates=min_updates,
                deadline_at=deadline_at,
                state=RoundState.OPEN.value,
                blocks=blocks,
                probe=probe,
            )
            s.add(r)
            s.execute(
                update(Federation)
                .where(Federation.id == federation_id)
                .values(current_round=number, state=FederationState.RUNNING.value, updated_at=utcnow())
            )
            s.flush()
            return r.id

    def close_round(
        self,
        round_id: int,
        state: RoundState,
        federation_fields: dict[str, Any] | None = None,
        block_outcomes: list[dict[str, Any]] | None = None,
        tensor_rows: list[dict[str, Any]] | None = None,
        alignments: list[dict[str, Any]] | None = None,
        key_weights: list[dict[str, Any]] | None = None,
        **fields: Any,
    ) -> None:
        """Close a round and, in the same transaction, record its blocks' outcomes, its per-tensor and
        per-worker divergence, its key blocks' weights, and advance the federation (version, hash)."""
        with self.sessions.begin() as s:
            r = s.get(Round, round_id)
            assert r is not None
            r.state = state.value
            r.closed_at = utcnow()
            for k, v in fields.items():
                setattr(r, k, v)
            for row in block_outcomes or []:
                s.add(RoundBlock(round_id=round_id, **row))
            if tensor_rows:
                s.execute(insert(RoundTensor), [{"round_id": round_id, **row} for row in tensor_rows])
            if alignments:
                s.execute(insert(UpdateAlignment), alignments)
            if key_weights:
                s.execute(insert(KeyWeight), [{"round_id": round_id, **row} for row in key_weights])
            if federation_fields:
                s.execute(
                    update(Federation)
                    .where(Federation.id == r.federation_id)
                    .values(updated_at=utcnow(), **federation_fields)
                )

    def set_round_fields(self, round_id: int, **fields: Any) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Round).where(Round.id == round_id).values(**fields))

    def fail_open_rounds(self, federation_id: int, reason: str) -> int:
        with self.sessions.begin() as s:
            res = s.execute(
                update(Round)
                .where(
                    Round.federation_id == federation_id,
                    Round.state.in_([RoundState.OPEN.value, RoundState.AGGREGATING.value]),
                )
                .values(state=RoundState.FAILED.value, error=reason, closed_at=utcnow())
            )
            return int(getattr(res, "rowcount", 0) or 0)

    def open_round_row(self, federation_id: int) -> Round | None:
        """The federation's latest round still open or aggregating (one a crash or restart left behind)."""
        with self.sessions() as s:
            return s.scalar(
                select(Round)
                .where(
                    Round.federation_id == federation_id,
                    Round.state.in_([RoundState.OPEN.value, RoundState.AGGREGATING.value]),
                )
                .order_by(Round.number.desc())
                .limit(1)
            )

    def last_round_number(self, federation_id: int) -> int:
        with self.sessions() as s:
            return (
                s.scalar(
                    select(Round.number)
                    .where(Round.federation_id == federation_id)
                    .order_by(Round.number.desc())
                    .limit(1)
                )
                or 0
            )

    def completed_rounds(self, federation_id: int) -> int:
        with self.sessions() as s:
            rows = s.scalars(
                select(Round.id).where(
                    Round.federation_id == federation_id, Round.state == RoundState.COMPLETED.value
                )
            )
            return len(list(rows))

    def rounds(self, federation_id: int) -> list[Round]:
        with self.sessions() as s:
            return list(
                s.scalars(select(Round).where(Round.federation_id == federation_id).order_by(Round.number))
            )

    def finished_rounds(self, federation_id: int, after: int) -> list[Round]:
        """Rounds numbered above `after` that completed or failed, up to the first one still open, with
        their block outcomes loaded: what experiment tracking logs next."""
        with self.sessions() as s:
            rows = s.scalars(
                select(Round)
                .options(selectinload(Round.block_outcomes))
                .where(Round.federation_id == federation_id, Round.number > after)
                .order_by(Round.number)
            )
            done = {RoundState.COMPLETED.value, RoundState.FAILED.value}
            out: list[Round] = []
            for r in rows:
                if r.state not in done:
                    break
                out.append(r)
            return out

    def round_row(self, round_id: int) -> Round:
        with self.sessions() as s:
            r = s.get(Round, round_id)
            assert r is not None
            return r

    def private_rounds(self, federation_id: int) -> list[tuple[float, float]]:
        """(q, z) of every private round the federation opened, oldest first: what its ε composes."""
        with self.sessions() as s:
            rows = s.execute(
                select(Round.dp_sampling_rate, Round.dp_noise_multiplier)
                .where(Round.federation_id == federation_id, Round.private.is_(True))
                .order_by(Round.number)
            )
            return [(float(q), float(z)) for q, z in rows if q is not None and z is not None]

    def last_next_clip(self, federation_id: int) -> float | None:
        """The clip adaptive clipping chose at the last round that chose one."""
        with self.sessions() as s:
            return s.scalar(
                select(Round.dp_next_clip)
                .where(Round.federation_id == federation_id, Round.dp_next_clip.is_not(None))
                .order_by(Round.number.desc())
                .limit(1)
            )

    def block_outcomes(self, federation_id: int) -> list[tuple[int, str, bool, float | None]]:
        """(round, block, applied, score) of every completed round, oldest first: what targeting resumes from."""
        with self.sessions() as s:
            rows = s.execute(
                select(Round.number, RoundBlock.block, RoundBlock.applied, RoundBlock.score)
                .join(RoundBlock, RoundBlock.round_id == Round.id)
                .where(Round.federation_id == federation_id, Round.state == RoundState.COMPLETED.value)
                .order_by(Round.number, RoundBlock.position)
            )
            return [(int(n), str(b), bool(a), sc) for n, b, a, sc in rows]

    # updates and evaluations
    def record_update(
        self, round_id: int, worker_id: int, status: UpdateStatus, reason: str | None = None, **fields: Any
    ) -> int:
        with self.sessions.begin() as s:
            u = Update(
                round_id=round_id, worker_id=worker_id, status=status.value, reject_reason=reason, **fields
            )
            s.add(u)
            s.flush()
            return u.id

    def set_update_status(self, update_id: int, status: UpdateStatus, reason: str | None = None) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(Update).where(Update.id == update_id).values(status=status.value, reject_reason=reason)
            )

    def accepted_update(self, federation_id: int, round_number: int, worker_id: int) -> Update | None:
        """The worker's accepted update in that round, if any (a retried upload is then a duplicate)."""
        with self.sessions() as s:
            return s.scalar(
                select(Update)
                .join(Round, Round.id == Update.round_id)
                .where(
                    Round.federation_id == federation_id,
                    Round.number == round_number,
                    Update.worker_id == worker_id,
                    Update.status == UpdateStatus.ACCEPTED.value,
                )
                .limit(1)
            )

    def updates(self, round_id: int) -> list[Update]:
        with self.sessions() as s:
            return list(s.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.id)))

    def record_evaluation(self, round_id: int, worker_id: int, **fields: Any) -> None:
        with self.sessions.begin() as s:
            s.add(Evaluation(round_id=round_id, worker_id=worker_id, **fields))
