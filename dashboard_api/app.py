"""The dashboard's FastAPI app: read-only REST views of federations, rounds and workers."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path as PathLib
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy import Engine, case, event, func, inspect, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dashboard_api import admin, metrics
from dashboard_api.schemas import (
    AlignmentOut,
    BlockMatrix,
    BlockMetric,
    BlockOutcomeOut,
    ErrorOut,
    EvaluationOut,
    FederationStatus,
    FederationSummary,
    Health,
    Page,
    RejectionOut,
    RoundDetail,
    RoundDivergenceOut,
    RoundOut,
    TensorDivergenceOut,
    UpdateOut,
    WorkerDivergenceOut,
    WorkerOut,
    as_utc,
)
from strata import __version__
from strata.storage.db import make_engine
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
)

log = logging.getLogger(__name__)

STATIC = PathLib(__file__).resolve().parent / "static"
SCHEMA_MISSING = "database schema missing: run the coordinator or `strata migrate` first"
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown federation or round."}
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "The database is unreachable or has no schema."}
}

M = TypeVar("M", bound=BaseModel)
MAX_REJECTIONS = 20  # per worker, newest first
MAX_INT = 2**31 - 1  # round numbers and offsets are 32-bit columns: beyond, a precise 422, not a 500
RoundNumber = Annotated[int, Path(ge=1, le=MAX_INT, description="Round number.")]


# ---------------------------------------------------------------- dependencies


def get_session(request: Request) -> Iterator[Session]:
    """A session for one request; it never commits (the dashboard only reads)."""
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_online_since(request: Request) -> dt.datetime:
    """Workers whose last_seen is at or after this instant count as online."""
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=request.app.state.online_seconds)


OnlineSinceDep = Annotated[dt.datetime, Depends(get_online_since)]


def get_federation(
    name: Annotated[str, Path(description="Federation name.")], session: SessionDep
) -> Federation:
    federation = session.scalar(select(Federation).where(Federation.name == name))
    if federation is None:
        raise HTTPException(status_code=404, detail=f"federation {name!r} not found")
    return federation


FederationDep = Annotated[Federation, Depends(get_federation)]


# ---------------------------------------------------------------- helpers


def _build(model: type[M], obj: object, **extra: Any) -> M:
    """`model` from the attributes of an ORM row that share its field names, plus `extra` fields."""
    data = {key: getattr(obj, key) for key in model.model_fields if key not in extra}
    return model.model_validate({**data, **extra})


def _db_reason(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {first[0]}" if first else type(cause).__name__


# ---------------------------------------------------------------- routes

router = APIRouter()
api = APIRouter(prefix="/api/v1", responses=UNAVAILABLE)


@router.get(
    "/healthz",
    response_model=Health,
    responses=UNAVAILABLE,
    summary="Liveness and database check",
    tags=["health"],
)
def healthz(request: Request) -> Health:
    """`ok` when the database answers `SELECT 1` and holds the coordinator's schema; 503 otherwise."""
    engine: Engine = request.app.state.read_engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            has_schema = inspect(conn).has_table(Federation.__tablename__)
    except SQLAlchemyError as exc:
        raise HTTPException(status_code=503, detail=f"database unreachable: {_db_reason(exc)}") from exc
    if not has_schema:
        raise HTTPException(status_code=503, detail=SCHEMA_MISSING)
    return Health(status="ok")


@api.get(
    "/federations", response_model=list[FederationSummary], summary="List federations", tags=["federations"]
)
def list_federations(session: SessionDep) -> list[FederationSummary]:
    """Every federation, by name."""
    rows = session.scalars(select(Federation).order_by(Federation.name))
    return [FederationSummary.model_validate(row) for row in rows]


@api.get(
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
    total, online = session.execute(
        select(
            func.count(Worker.id),
            func.coalesce(func.sum(case((Worker.last_seen >= online_since, 1), else_=0)), 0),
        ).where(Worker.federation_id == federation.id)
    ).one()
    last = session.execute(
        select(Round.test_accuracy, Round.test_loss)
        .where(
            Round.federation_id == federation.id,
            Round.state == RoundState.COMPLETED.value,
            Round.test_accuracy.is_not(None),
        )
        .order_by(Round.number.desc())
        .limit(1)
    ).one_or_none()
    return _build(
        FederationStatus,
        federation,
        workers_total=int(total),
        workers_online=int(online),
        last_test_accuracy=last.test_accuracy if last else None,
        last_test_loss=last.test_loss if last else None,
        config=federation.config or {},
    )


@api.get(
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
    where = [Round.federation_id == federation.id]
    if state is not None:
        where.append(Round.state == state.value)
    total = session.scalar(select(func.count(Round.id)).where(*where)) or 0
    rows = session.scalars(select(Round).where(*where).order_by(Round.number).offset(offset).limit(limit))
    return Page[RoundOut](
        items=[RoundOut.model_validate(row) for row in rows], total=total, offset=offset, limit=limit
    )


@api.get(
    "/federations/{name}/rounds/{number}",
    response_model=RoundDetail,
    responses=NOT_FOUND,
    summary="Round detail",
    tags=["rounds"],
)
def get_round(
    federation: FederationDep,
    session: SessionDep,
    number: RoundNumber,
) -> RoundDetail:
    """One round with its metrics, its blocks' outcomes, every update received and the workers'
    evaluations."""
    rnd = _round_or_404(federation, session, number)
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


def _round_or_404(federation: Federation, session: Session, number: int) -> Round:
    rnd = session.scalar(select(Round).where(Round.federation_id == federation.id, Round.number == number))
    if rnd is None:
        raise HTTPException(
            status_code=404, detail=f"round {number} of federation {federation.name!r} not found"
        )
    return rnd


def _outcomes(session: Session, round_id: int) -> list[BlockOutcomeOut]:
    rows = session.scalars(
        select(RoundBlock).where(RoundBlock.round_id == round_id).order_by(RoundBlock.position)
    )
    return [BlockOutcomeOut.model_validate(row) for row in rows]


@api.get(
    "/federations/{name}/rounds/{number}/blocks",
    response_model=list[BlockOutcomeOut],
    responses=NOT_FOUND,
    summary="A round's blocks",
    tags=["blocks"],
)
def get_round_blocks(
    federation: FederationDep,
    session: SessionDep,
    number: RoundNumber,
) -> list[BlockOutcomeOut]:
    """Every block of the model in one round, in model order: trained, applied, the policy's score and
    the measurements behind it. Empty for a round that did not complete."""
    return _outcomes(session, _round_or_404(federation, session, number).id)


@api.get(
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
    rnd = _round_or_404(federation, session, number)
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


@api.get(
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
    first: Annotated[int, Query(ge=1, le=MAX_INT, description="First round number of the range.")] = 1,
    last: Annotated[
        int | None,
        Query(ge=1, le=MAX_INT, description="Last round number of the range (default: the newest)."),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Completed rounds of the range to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Largest number of rounds (columns).")] = 200,
) -> BlockMatrix:
    """Which blocks each completed round trained and applied, and a metric per block and round (the layer-wise
    divergence by default): rows are the model's blocks in model order, columns the rounds of the range."""
    if last is not None and last < first:
        raise HTTPException(status_code=422, detail=f"empty range: last ({last}) is before first ({first})")
    where = [
        Round.federation_id == federation.id,
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
    config = federation.config or {}
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


@api.get(
    "/federations/{name}/workers",
    response_model=list[WorkerOut],
    responses=NOT_FOUND,
    summary="List workers",
    tags=["workers"],
)
def list_workers(
    federation: FederationDep, session: SessionDep, online_since: OnlineSinceDep
) -> list[WorkerOut]:
    """The federation's workers, in joining order, with their update counts, upload volume and their latest
    refused updates (rejected or late) with the reasons."""

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
        .where(Round.federation_id == federation.id)
        .group_by(Update.worker_id)
        .subquery()
    )
    rows = session.execute(
        select(Worker, per_worker.c.accepted, per_worker.c.rejected, per_worker.c.bytes_up)
        .outerjoin(per_worker, per_worker.c.worker_id == Worker.id)
        .where(Worker.federation_id == federation.id)
        .order_by(Worker.id)
    ).all()
    refused: dict[int, list[RejectionOut]] = {}
    for upd, number in session.execute(
        select(Update, Round.number)
        .join(Round, Update.round_id == Round.id)
        .where(Round.federation_id == federation.id, Update.status != UpdateStatus.ACCEPTED.value)
        .order_by(Update.id.desc())
    ):
        kept = refused.setdefault(upd.worker_id, [])
        if len(kept) < MAX_REJECTIONS:
            kept.append(_build(RejectionOut, upd, round=number))
    joined: Counter[str] = Counter()
    for participants in session.scalars(
        select(Round.participants).where(Round.federation_id == federation.id)
    ):
        joined.update({str(name) for name in participants or ()})
    return [
        _build(
            WorkerOut,
            worker,
            online=as_utc(worker.last_seen) >= online_since,
            rounds_joined=joined[worker.name],
            updates_accepted=int(accepted or 0),
            updates_rejected=int(rejected or 0),
            bytes_up=int(bytes_up or 0),
            rejections=refused.get(worker.id, []),
        )
        for worker, accepted, rejected, bytes_up in rows
    ]


# ---------------------------------------------------------------- app


def _read_only(engine: Engine) -> Engine:
    """The engine for every query: its connections refuse writes (query_only on SQLite, read-only on PostgreSQL)."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _query_only(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only=ON")
            cur.close()

        return engine
    if engine.dialect.name == "postgresql":
        return engine.execution_options(postgresql_readonly=True)
    return engine


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        status_code=503,
        content={"detail": f"database unavailable or schema missing (see /healthz): {_db_reason(exc)}"},
    )


def create_app(
    database_url: str,
    online_seconds: float = 30.0,
    read_token: str | None = None,
    admin_key: str | None = None,
) -> FastAPI:
    """The dashboard API on the coordinator's database at `database_url`.

    A worker counts as online when its last_seen is within `online_seconds` of now. Reads go through a
    read-only engine and need `read_token` when one is set; writes (admin.py) need `admin_key`.
    """
    engine = make_engine(database_url)
    write_engine = make_engine(database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.dispose()
            write_engine.dispose()

    app = FastAPI(
        title="Strata dashboard API",
        version=__version__,
        description="Federation status, round metrics, targeted blocks and layer-wise divergence of a Strata "
        "coordinator; reads may need a read token, writes (federations, worker tokens, pause, resume, stop) the "
        "admin key.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.read_engine = _read_only(engine)
    app.state.sessions = sessionmaker(app.state.read_engine, autoflush=False, expire_on_commit=False)
    app.state.online_seconds = float(online_seconds)
    app.state.write_sessions = sessionmaker(write_engine, autoflush=False, expire_on_commit=False)
    app.state.read_token = read_token or None
    app.state.admin_key = admin_key or None
    app.add_exception_handler(DBAPIError, _database_error)
    app.include_router(router)
    app.include_router(api, dependencies=[Depends(admin.require_read)])
    app.include_router(admin.admin)
    app.state.metrics = metrics.install(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The federation page (static HTML and JS reading this API; nothing to build)."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app
