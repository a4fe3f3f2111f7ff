"""The dashboard's read queries: each answers with response models from schemas.py, never with table rows."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Engine, case, func, inspect, select, text
from sqlalchemy.orm import Session

from dashboard_api.divergence_schemas import (
    AlignmentOut,
    BlockMatrix,
    BlockMetric,
    RoundDivergenceOut,
    TensorDivergenceOut,
    WorkerDivergenceOut,
)
from dashboard_api.errors import NotFound
from dashboard_api.schemas import (
    BlockOutcomeOut,
    EvaluationOut,
    FederationStatus,
    FederationSummary,
    Page,
    PrivacyOut,
    RejectionOut,
    ReportedOut,
    RoundDetail,
    RoundOut,
    TokenOut,
    UpdateOut,
    WorkerOut,
    as_utc,
)
from dashboard_api.tree_config import tree
from strata.storage.models import (
    Evaluation,
    Federation,
    Round,
    RoundBlock,
    RoundState,
    RoundTensor,
    Update,
    UpdateAlignment,
    UpdateStatus,
    Worker,
    WorkerToken,
)

M = TypeVar("M", bound=BaseModel)
MAX_REJECTIONS = 20  # per worker, newest first
REPORTED_SPLIT = "federation-test"  # what a member federation reports upward (coordinator/subfederation.py)


@dataclass(frozen=True)
class FederationRef:
    """A federation that exists: its row id and its name."""

    id: int
    name: str


def _build(model: type[M], obj: object, **extra: Any) -> M:
    """`model` from the attributes of an ORM row that share its field names, plus `extra` fields."""
    data = {key: getattr(obj, key) for key in model.model_fields if key not in extra}
    return model.model_validate({**data, **extra})


def schema_present(engine: Engine) -> bool:
    """Whether the database holds the coordinator's schema; raises SQLAlchemyError when it does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        return inspect(conn).has_table(Federation.__tablename__)


def federation(session: Session, name: str) -> FederationRef:
    """The federation named `name`; NotFound when there is none. Its row stays in `session` for later queries."""
    row = session.scalar(select(Federation).where(Federation.name == name))
    if row is None:
        raise NotFound(f"federation {name!r} not found")
    return FederationRef(id=row.id, name=row.name)


def _row(session: Session, fed: FederationRef) -> Federation:
    return session.get_one(Federation, fed.id)  # no query: federation() left the row in the session


def federations(session: Session) -> list[FederationSummary]:
    rows = session.scalars(select(Federation).order_by(Federation.name))
    return [FederationSummary.model_validate(row) for row in rows]


def federation_status(session: Session, fed: FederationRef, online_since: dt.datetime) -> FederationStatus:
    total, online = session.execute(
        select(
            func.count(Worker.id),
            func.coalesce(func.sum(case((Worker.last_seen >= online_since, 1), else_=0)), 0),
        ).where(Worker.federation_id == fed.id)
    ).one()
    last = session.execute(
        select(Round.test_accuracy, Round.test_loss)
        .where(
            Round.federation_id == fed.id,
            Round.state == RoundState.COMPLETED.value,
            Round.test_accuracy.is_not(None),
        )
        .order_by(Round.number.desc())
        .limit(1)
    ).one_or_none()
    row = _row(session, fed)
    return _build(
        FederationStatus,
        row,
        workers_total=int(total),
        workers_online=int(online),
        last_test_accuracy=last.test_accuracy if last else None,
        last_test_loss=last.test_loss if last else None,
        config=row.config or {},
        tree=tree(row.config or {}, row.parent_dashboard_url),
        privacy=privacy(session, fed, row.config or {}),
    )


def privacy(session: Session, fed: FederationRef, config: dict[str, Any]) -> PrivacyOut:
    """The DP settings recorded with the federation and the ε its newest private round reached."""
    on = bool(config.get("dp"))
    spent = session.scalar(
        select(Round.dp_epsilon)
        .where(Round.federation_id == fed.id, Round.dp_epsilon.is_not(None))
        .order_by(Round.number.desc())
        .limit(1)
    )

    def num(key: str) -> float | None:
        value = config.get(key)
        return float(value) if on and isinstance(value, int | float) else None

    return PrivacyOut(
        enabled=on,
        target_epsilon=num("dp_target_epsilon"),
        delta=num("dp_delta"),
        epsilon=spent,
        noise_multiplier=num("dp_noise_multiplier"),
        sampling_rate=num("dp_sampling_rate"),
        adaptive_clip=on and bool(config.get("dp_adaptive_clip")),
    )


def rounds(
    session: Session, fed: FederationRef, offset: int, limit: int, state: RoundState | None
) -> Page[RoundOut]:
    where = [Round.federation_id == fed.id]
    if state is not None:
        where.append(Round.state == state.value)
    total = session.scalar(select(func.count(Round.id)).where(*where)) or 0
    rows = session.scalars(select(Round).where(*where).order_by(Round.number).offset(offset).limit(limit))
    return Page[RoundOut](
        items=[RoundOut.model_validate(row) for row in rows], total=total, offset=offset, limit=limit
    )


def _round(session: Session, fed: FederationRef, number: int) -> Round:
    rnd = session.scalar(select(Round).where(Round.federation_id == fed.id, Round.number == number))
    if rnd is None:
        raise NotFound(f"round {number} of federation {fed.name!r} not found")
    return rnd


def _outcomes(session: Session, round_id: int) -> list[BlockOutcomeOut]:
    rows = session.scalars(
        select(RoundBlock).where(RoundBlock.round_id == round_id).order_by(RoundBlock.position)
    )
    return [BlockOutcomeOut.model_validate(row) for row in rows]


def round_detail(session: Session, fed: FederationRef, number: int) -> RoundDetail:
    rnd = _round(session, fed, number)
    updates = session.execute(
        select(Update, Worker.name)
        .join(Worker, Update.worker_id == Worker.id)
        .where(Update.round_id == rnd.id)
        .order_by(Update.id)
    ).all()
    evaluations = session.execute(
        select(Evaluation, Worker.name)
        .join(Worker, Evaluation.worker_id == Worker.id)
        .where(Evaluation.round_id == rnd.id)
        .order_by(Evaluation.id)
    ).all()
    return _build(
        RoundDetail,
        rnd,
        block_outcomes=_outcomes(session, rnd.id),
        updates=[_build(UpdateOut, row, worker=name) for row, name in updates],
        evaluations=[_build(EvaluationOut, row, worker=name) for row, name in evaluations],
    )


def round_blocks(session: Session, fed: FederationRef, number: int) -> list[BlockOutcomeOut]:
    return _outcomes(session, _round(session, fed, number).id)


def round_divergence(session: Session, fed: FederationRef, number: int, tensors: bool) -> RoundDivergenceOut:
    rnd = _round(session, fed, number)
    per_tensor = []
    if tensors:
        per_tensor = [
            TensorDivergenceOut.model_validate(row)
            for row in session.scalars(
                select(RoundTensor).where(RoundTensor.round_id == rnd.id).order_by(RoundTensor.tensor)
            )
        ]
    position = {
        o.block: o.position for o in session.scalars(select(RoundBlock).where(RoundBlock.round_id == rnd.id))
    }
    scopes = ["block", "tensor"] if tensors else ["block"]
    rows = session.execute(
        select(UpdateAlignment, Worker.name, Update.num_samples)
        .join(Update, UpdateAlignment.update_id == Update.id)
        .join(Worker, Update.worker_id == Worker.id)
        .where(Update.round_id == rnd.id, UpdateAlignment.scope.in_(scopes))
        .order_by(Worker.name, UpdateAlignment.name)
    ).all()
    workers: dict[str, WorkerDivergenceOut] = {}
    for a, name, samples in rows:
        w = workers.setdefault(
            name, WorkerDivergenceOut(worker=name, num_samples=samples, blocks=[], tensors=[])
        )
        (w.blocks if a.scope == "block" else w.tensors).append(AlignmentOut.model_validate(a))
    for w in workers.values():
        w.blocks.sort(key=lambda x: position.get(x.name, 0))
    return RoundDivergenceOut(
        round=rnd.number,
        num_updates=rnd.num_updates,
        noise_floor=rnd.noise_floor,
        blocks=_outcomes(session, rnd.id),
        tensors=per_tensor,
        workers=list(workers.values()),
    )


def block_matrix(
    session: Session,
    fed: FederationRef,
    metric: BlockMetric,
    first: int,
    last: int | None,
    offset: int,
    limit: int,
) -> BlockMatrix:
    where = [
        Round.federation_id == fed.id,
        Round.state == RoundState.COMPLETED.value,
        Round.number >= first,
    ]
    if last is not None:
        where.append(Round.number <= last)
    with_blocks = select(Round.id).where(*where, Round.id.in_(select(RoundBlock.round_id)))
    total = session.scalar(select(func.count()).select_from(with_blocks.subquery())) or 0
    page = list(
        session.execute(
            select(Round.id, Round.number, Round.noise_floor)
            .where(*where, Round.id.in_(select(RoundBlock.round_id)))
            .order_by(Round.number)
            .offset(offset)
            .limit(limit)
        ).all()
    )
    column = {rid: j for j, (rid, _, _) in enumerate(page)}
    rows = session.scalars(
        select(RoundBlock).where(RoundBlock.round_id.in_(list(column))).order_by(RoundBlock.position)
    ).all()
    blocks: list[str] = []
    for row in rows:
        if row.block not in blocks:
            blocks.append(row.block)
    index = {b: i for i, b in enumerate(blocks)}
    n = len(page)
    trained = [[False] * n for _ in blocks]
    applied = [[False] * n for _ in blocks]
    values: list[list[float | None]] = [[None] * n for _ in blocks]
    for row in rows:
        i, j = index[row.block], column[row.round_id]
        trained[i][j], applied[i][j] = row.trained, row.applied
        values[i][j] = getattr(row, metric)
    config = _row(session, fed).config or {}
    return BlockMatrix(
        policy=str(config.get("policy", "full")),
        schedule=str(config.get("schedule", "pre-selected")),
        metric=metric,
        blocks=blocks,
        rounds=[number for _, number, _ in page],
        noise_floor=[floor for _, _, floor in page],
        trained=trained,
        applied=applied,
        values=values,
        total_rounds=int(total),
        offset=offset,
        limit=limit,
    )


def workers(session: Session, fed: FederationRef, online_since: dt.datetime) -> list[WorkerOut]:
    def count(status: UpdateStatus) -> Any:
        return func.coalesce(func.sum(case((Update.status == status.value, 1), else_=0)), 0)

    per_worker = (
        select(
            Update.worker_id.label("worker_id"),
            count(UpdateStatus.ACCEPTED).label("accepted"),
            count(UpdateStatus.REJECTED).label("rejected"),
            func.coalesce(func.sum(Update.bytes), 0).label("bytes_up"),
        )
        .join(Round, Update.round_id == Round.id)
        .where(Round.federation_id == fed.id)
        .group_by(Update.worker_id)
        .subquery()
    )
    rows = session.execute(
        select(Worker, per_worker.c.accepted, per_worker.c.rejected, per_worker.c.bytes_up)
        .outerjoin(per_worker, per_worker.c.worker_id == Worker.id)
        .where(Worker.federation_id == fed.id)
        .order_by(Worker.id)
    ).all()
    refused: dict[int, list[RejectionOut]] = {}
    for upd, number in session.execute(
        select(Update, Round.number)
        .join(Round, Update.round_id == Round.id)
        .where(Round.federation_id == fed.id, Update.status != UpdateStatus.ACCEPTED.value)
        .order_by(Update.id.desc())
    ):
        kept = refused.setdefault(upd.worker_id, [])
        if len(kept) < MAX_REJECTIONS:
            kept.append(_build(RejectionOut, upd, round=number))
    latest = (
        select(func.max(Evaluation.id))
        .join(Round, Evaluation.round_id == Round.id)
        .where(Round.federation_id == fed.id, Evaluation.split == REPORTED_SPLIT)
        .group_by(Evaluation.worker_id)
    )
    reported = {
        ev.worker_id: _build(ReportedOut, ev, round=number)
        for ev, number in session.execute(
            select(Evaluation, Round.number)
            .join(Round, Evaluation.round_id == Round.id)
            .where(Evaluation.id.in_(latest))
        )
    }
    joined: Counter[str] = Counter()
    for participants in session.scalars(select(Round.participants).where(Round.federation_id == fed.id)):
        joined.update({str(name) for name in participants or ()})
    return [
        _build(
            WorkerOut,
            worker,
            kind="worker" if worker.members is None else "federation",
            reported=reported.get(worker.id),
            online=as_utc(worker.last_seen) >= online_since,
            rounds_joined=joined[worker.name],
            updates_accepted=int(accepted or 0),
            updates_rejected=int(rejected or 0),
            bytes_up=int(bytes_up or 0),
            rejections=refused.get(worker.id, []),
        )
        for worker, accepted, rejected, bytes_up in rows
    ]


def tokens(session: Session, name: str) -> list[TokenOut]:
    fed = federation(session, name)
    rows = session.scalars(
        select(WorkerToken).where(WorkerToken.federation_id == fed.id).order_by(WorkerToken.id)
    )
    return [TokenOut.model_validate(t) for t in rows]
