"""Read queries of federations of federations (docs/methods.md section 5): a parent's attention weights
per key block, one round's and the block × member × round matrix, and the parent rounds a sub-federation
served. Each answers with response models, never with table rows."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dashboard_api.queries import FederationRef, _build, _round
from dashboard_api.schemas import Page
from dashboard_api.tree_schemas import KeyBlockWeightsOut, KeyWeightMatrix, KeyWeightOut, ParentRoundOut
from strata.storage.models import KeyWeight, ParentRound, Round, RoundBlock, RoundState, Update, Worker


def _order(session: Session, round_ids: list[int], blocks: set[str]) -> list[str]:
    """`blocks` in model order (their positions in the rounds' block outcomes; unknown ones last, by name)."""
    position = dict(
        session.execute(
            select(RoundBlock.block, func.min(RoundBlock.position))
            .where(RoundBlock.round_id.in_(round_ids), RoundBlock.block.in_(blocks))
            .group_by(RoundBlock.block)
        ).all()
    )
    return sorted(blocks, key=lambda b: (position.get(b, 1 << 31), b))


def round_key_weights(session: Session, fed: FederationRef, number: int) -> list[KeyBlockWeightsOut]:
    rnd = _round(session, fed, number)
    rows = session.execute(
        select(KeyWeight.block, Worker.name, KeyWeight.weight, KeyWeight.cosine, Update.num_samples)
        .join(Update, KeyWeight.update_id == Update.id)
        .join(Worker, Update.worker_id == Worker.id)
        .where(KeyWeight.round_id == rnd.id)
        .order_by(Worker.name)
    ).all()
    members: dict[str, list[KeyWeightOut]] = {}
    for block, name, weight, cosine, samples in rows:
        members.setdefault(block, []).append(
            KeyWeightOut(name=name, weight=weight, cosine=cosine, num_samples=samples)
        )
    return [KeyBlockWeightsOut(block=b, members=members[b]) for b in _order(session, [rnd.id], set(members))]


def key_weight_matrix(
    session: Session, fed: FederationRef, first: int, last: int | None, offset: int, limit: int
) -> KeyWeightMatrix:
    where = [
        Round.federation_id == fed.id,
        Round.state == RoundState.COMPLETED.value,
        Round.number >= first,
        Round.id.in_(select(KeyWeight.round_id)),
    ]
    if last is not None:
        where.append(Round.number <= last)
    total = session.scalar(select(func.count(Round.id)).where(*where)) or 0
    page = list(
        session.execute(
            select(Round.id, Round.number).where(*where).order_by(Round.number).offset(offset).limit(limit)
        ).all()
    )
    column = {rid: j for j, (rid, _) in enumerate(page)}
    rows = session.execute(
        select(KeyWeight.round_id, KeyWeight.block, Worker.name, KeyWeight.weight, KeyWeight.cosine)
        .join(Update, KeyWeight.update_id == Update.id)
        .join(Worker, Update.worker_id == Worker.id)
        .where(KeyWeight.round_id.in_(list(column)))
    ).all()
    blocks = _order(session, list(column), {row.block for row in rows})
    members = sorted({row.name for row in rows})
    bi, mi = {b: i for i, b in enumerate(blocks)}, {m: i for i, m in enumerate(members)}
    n = len(page)
    weights: list[list[list[float | None]]] = [[[None] * n for _ in members] for _ in blocks]
    cosines: list[list[list[float | None]]] = [[[None] * n for _ in members] for _ in blocks]
    for row in rows:
        i, k, j = bi[row.block], mi[row.name], column[row.round_id]
        weights[i][k][j], cosines[i][k][j] = row.weight, row.cosine
    return KeyWeightMatrix(
        blocks=blocks,
        members=members,
        rounds=[number for _, number in page],
        weights=weights,
        cosines=cosines,
        total_rounds=int(total),
        offset=offset,
        limit=limit,
    )


def parent_rounds(session: Session, fed: FederationRef, offset: int, limit: int) -> Page[ParentRoundOut]:
    where = ParentRound.federation_id == fed.id
    total = session.scalar(select(func.count(ParentRound.id)).where(where)) or 0
    served = list(  # one more than the page: the next parent round bounds the last one's inner rounds
        session.scalars(
            select(ParentRound)
            .where(where)
            .order_by(ParentRound.parent_round)
            .offset(offset)
            .limit(limit + 1)
        )
    )
    items = served[:limit]
    bounds = [
        (p.rounds_before, nxt.rounds_before if nxt else None)
        for p, nxt in zip(items, [*served[1:], None], strict=False)
    ]
    own: list[tuple[int, float | None, float | None]] = []
    if items:
        below = min(lo for lo, _ in bounds)
        tops = [hi for _, hi in bounds]
        cond = [
            Round.federation_id == fed.id,
            Round.state == RoundState.COMPLETED.value,
            Round.number > below,
        ]
        if None not in tops:
            cond.append(Round.number <= max(t for t in tops if t is not None))
        own = [
            (int(number), loss, acc)
            for number, loss, acc in session.execute(
                select(Round.number, Round.test_loss, Round.test_accuracy).where(*cond).order_by(Round.number)
            )
        ]
    out = []
    for p, (lo, hi) in zip(items, bounds, strict=True):
        inner = [r for r in own if r[0] > lo and (hi is None or r[0] <= hi)]
        last = inner[-1] if inner else None
        out.append(
            _build(
                ParentRoundOut,
                p,
                inner_rounds=[r[0] for r in inner],
                test_loss=last[1] if last else None,
                test_accuracy=last[2] if last else None,
            )
        )
    return Page[ParentRoundOut](items=out, total=total, offset=offset, limit=limit)
