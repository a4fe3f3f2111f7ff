"""32 concurrent workers for 3 rounds over real gRPC: every update arrives, counts once, and each new
version is exactly the sample-weighted mean of that round's 32 deltas."""

from __future__ import annotations

from pathlib import Path

import torch
from sqlalchemy import func, select

from coordinator import checkpoint
from coordinator.store import Store
from strata.member.replica import TrainResult
from strata.serde import RoundTask
from strata.storage.models import Round, Update
from tests.helpers import ServedCoordinator, coordinator_settings, make_worker_data, make_workers, run_to_done

N = 32


def test_32_workers_3_rounds_nothing_lost_nothing_twice(tmp_path: Path, tiny_model: Path) -> None:
    tokens = [f"token-org-{k:02d}-xxxxxxxx" for k in range(N)]
    db = f"sqlite:///{tmp_path / 'many.db'}"
    settings = coordinator_settings(
        tmp_path,
        db,
        tiny_model,
        rounds=3,
        min_workers=N,
        min_updates=N,
        worker_tokens=tokens,
        max_steps=2,
        max_concurrent_uploads=3,  # 32 uploads through 3 decoding slots: the others wait their turn
    )
    coord = ServedCoordinator(settings)
    sent: dict[str, list[tuple[RoundTask, TrainResult]]] = {f"org-{k + 1}": [] for k in range(N)}
    workers = make_workers(
        coord.address,
        make_worker_data(tmp_path / "data", N, per_worker=24),
        tmp_path,
        lambda name, task, res: sent[name].append((task, res)),
        tokens=tokens,
    )
    try:
        run_to_done(workers, timeout=600)
    finally:
        for w in workers:
            w.close()
    coord.wait(120)

    store = Store(db)
    with store.sessions() as s:
        rounds = list(s.scalars(select(Round).order_by(Round.number)))
        assert [(r.number, r.state, r.num_updates) for r in rounds] == [
            (i, "completed", N) for i in (1, 2, 3)
        ]
        per_worker_round = s.execute(
            select(Update.round_id, Update.worker_id, func.count())
            .where(Update.status == "accepted")
            .group_by(Update.round_id, Update.worker_id)
        ).all()
        assert len(per_worker_round) == 3 * N and all(c == 1 for _, _, c in per_worker_round)
    assert all(len(v) == 3 for v in sent.values())  # each worker sent exactly one update per round
    ckpt = settings.data_dir / "checkpoints" / "test"
    for rnd in (1, 2, 3):
        base, new = checkpoint.load(ckpt, rnd - 1), checkpoint.load(ckpt, rnd)
        updates = [next(res for t, res in sent[name] if t.round == rnd) for name in sorted(sent)]
        total = sum(u.num_samples for u in updates)
        for name in base:
            mean = sum(u.delta[name].double() * u.num_samples for u in updates) / total
            torch.testing.assert_close(new[name].double(), base[name].double() + mean, atol=5e-6, rtol=0)
