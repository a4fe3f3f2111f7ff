"""Each worker's whole update against the round's mean, per round: ‖Δ_k‖ and cos(Δ_k, Δ̄), combined exactly
from the per-block alignments the coordinator records (docs/methods.md section 1) and the per-tensor norms
of the mean update. Served as the worker × round matrix of GET /federations/{name}/alignment."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dashboard_api.queries import FederationRef
from dashboard_api.schemas import _Out
from strata.storage.models import Round, RoundState, RoundTensor, Update, UpdateAlignment, Worker


class AlignmentMatrix(_Out):
    workers: list[str] = Field(
        description="Rows: the workers with an update in a round of the page, by name."
    )
    rounds: list[int] = Field(description="Columns: completed rounds with measured alignment, ascending.")
    cosine: list[list[float | None]] = Field(
        description="cosine[worker][round]: cos(Δ_k, Δ̄) of the worker's whole update with the round's mean "
        "(1: it moved with the federation); null without an update in that round."
    )
    norm: list[list[float | None]] = Field(description="norm[worker][round]: ‖Δ_k‖ of its whole update.")
    mean_norm: list[float | None] = Field(description="mean_norm[round]: ‖Δ̄‖ of the round's mean update.")
    total_rounds: int = Field(description="Rounds with measured alignment, over all pages.")
    offset: int = Field(description="Index of the first round of this page.")
    limit: int = Field(description="Largest number of rounds a page holds.")


def whole_update(
    blocks: Iterable[tuple[str, float, float | None]], mean_sq: Mapping[str, float]
) -> tuple[float, float | None]:
    """(‖Δ_k‖, cos(Δ_k, Δ̄)) of a whole update from its blocks' (name, ‖Δ_kb‖, cos_b) and each block's
    ‖Δ̄_b‖²: ⟨Δ_k, Δ̄⟩ = Σ_b ‖Δ_kb‖·‖Δ̄_b‖·cos_b, the norms add in squares. The cosine is null when either
    update is zero."""
    sq = dot = 0.0
    for name, norm, cos in blocks:
        sq += norm * norm
        if cos is not None:
            dot += norm * math.sqrt(mean_sq.get(name, 0.0)) * cos
    total = sum(mean_sq.values())
    if sq <= 0 or total <= 0:
        return math.sqrt(sq), None
    return math.sqrt(sq), max(-1.0, min(1.0, dot / math.sqrt(sq * total)))


def alignment_matrix(
    session: Session, fed: FederationRef, first: int, last: int | None, offset: int, limit: int
) -> AlignmentMatrix:
    where = [Round.federation_id == fed.id, Round.state == RoundState.COMPLETED.value, Round.number >= first]
    if last is not None:
        where.append(Round.number <= last)
    measured = Round.id.in_(select(RoundTensor.round_id))
    total = session.scalar(select(func.count(Round.id)).where(*where, measured)) or 0
    page = session.execute(
        select(Round.id, Round.number)
        .where(*where, measured)
        .order_by(Round.number)
        .offset(offset)
        .limit(limit)
    ).all()
    column = {rid: j for j, (rid, _) in enumerate(page)}
    mean_sq: dict[int, dict[str, float]] = {rid: {} for rid in column}
    for rid, block, norm in session.execute(
        select(RoundTensor.round_id, RoundTensor.block, RoundTensor.update_norm).where(
            RoundTensor.round_id.in_(list(column))
        )
    ):
        mean_sq[rid][block] = mean_sq[rid].get(block, 0.0) + norm * norm
    parts: dict[tuple[str, int], list[tuple[str, float, float | None]]] = {}
    for rid, name, block, norm, cos in session.execute(
        select(
            Update.round_id, Worker.name, UpdateAlignment.name, UpdateAlignment.norm, UpdateAlignment.cosine
        )
        .join(Update, UpdateAlignment.update_id == Update.id)
        .join(Worker, Update.worker_id == Worker.id)
        .where(Update.round_id.in_(list(column)), UpdateAlignment.scope == "block")
    ):
        parts.setdefault((name, rid), []).append((block, norm, cos))
    workers = sorted({name for name, _ in parts})
    row = {name: i for i, name in enumerate(workers)}
    n = len(page)
    cosine: list[list[float | None]] = [[None] * n for _ in workers]
    norm_m: list[list[float | None]] = [[None] * n for _ in workers]
    for (name, rid), blocks in parts.items():
        norm_m[row[name]][column[rid]], cosine[row[name]][column[rid]] = whole_update(blocks, mean_sq[rid])
    return AlignmentMatrix(
        workers=workers,
        rounds=[number for _, number in page],
        cosine=cosine,
        norm=norm_m,
        mean_norm=[math.sqrt(sum(mean_sq[rid].values())) for rid, _ in page],
        total_rounds=int(total),
        offset=offset,
        limit=limit,
    )
