"""A coordinator database seeded with two federations, their workers, rounds, updates and evaluations, and
the dashboard client over it, for tests/integration/test_dashboard_api.py and test_dashboard_server.py."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dashboard_api.app import create_app
from strata.storage.db import make_engine, session_factory
from strata.storage.models import (
    Evaluation,
    Federation,
    FederationState,
    Round,
    RoundState,
    Update,
    UpdateStatus,
    Worker,
)

FED = "sst2-demo"
OTHER = "other"
API = "/api/v1"


@dataclass
class Seed:
    now: dt.datetime
    created_at: dt.datetime
    worker_times: dict[str, tuple[dt.datetime, dt.datetime]] = field(default_factory=dict)
    round_times: dict[int, tuple[dt.datetime, dt.datetime, dt.datetime | None]] = field(default_factory=dict)


def _worker(fed: Federation, name: str, joined_at: dt.datetime, last_seen: dt.datetime, **kw: Any) -> Worker:
    return Worker(
        federation=fed,
        uid=str(uuid.uuid4()),
        name=name,
        token_hash="0" * 64,
        joined_at=joined_at,
        last_seen=last_seen,
        **kw,
    )


def _update(rnd: Round, worker: Worker, status: UpdateStatus, nbytes: int, **kw: Any) -> Update:
    return Update(
        round=rnd,
        worker=worker,
        status=status.value,
        base_version=rnd.base_version,
        num_samples=100,
        num_tensors=12,
        bytes=nbytes,
        raw_bytes=nbytes * 4,
        num_steps=25,
        **kw,
    )


def seed(url: str) -> Seed:
    """A federation with 3 workers and 3 rounds (2 completed, 1 open), plus an unrelated federation."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    t0 = now - dt.timedelta(hours=3)
    s = Seed(now=now, created_at=t0)
    engine = make_engine(url)
    with session_factory(engine)() as session, session.begin():
        fed = Federation(
            name=FED,
            state=FederationState.RUNNING.value,
            task_kind="sequence-classification",
            model_name="tiny-bert",
            num_labels=2,
            total_rounds=5,
            current_round=3,
            model_version=2,
            model_hash="ab" * 32,
            num_parameters=4242,
            config={"lr": 0.001, "layers": ["classifier"]},
            created_at=t0,
            updated_at=now,
        )
        seen = {"w1": now, "w2": now - dt.timedelta(hours=1), "w3": now - dt.timedelta(hours=2)}
        workers = {}
        for i, name in enumerate(["w1", "w2", "w3"]):
            joined = t0 + dt.timedelta(minutes=i)
            workers[name] = _worker(
                fed, name, joined, seen[name], device="cpu", num_samples=1000 + i, num_eval_samples=100 + i
            )
            s.worker_times[name] = (joined, seen[name])
        w1, w2, w3 = workers.values()

        rounds = []
        for number in (1, 2, 3):
            started = t0 + dt.timedelta(minutes=10 * number)
            closed = started + dt.timedelta(minutes=5) if number < 3 else None
            s.round_times[number] = (started, started + dt.timedelta(minutes=30), closed)
            rounds.append(
                Round(
                    federation=fed,
                    number=number,
                    state=(RoundState.COMPLETED if number < 3 else RoundState.OPEN).value,
                    base_version=number - 1,
                    base_hash=f"{number:02d}" * 32,
                    result_version=number if number < 3 else None,
                    result_hash=f"r{number}" * 32 if number < 3 else None,
                    participants=["w1", "w2", "w3"]
                    if number == 1
                    else ["w1", "w2"]
                    if number == 2
                    else ["w1"],
                    min_updates=2,
                    num_updates=2 if number < 3 else 0,
                    num_samples=200 if number < 3 else 0,
                    bytes_up=(3100 if number == 1 else 2400) if number < 3 else 0,
                    bytes_down=8000 * number,
                    raw_bytes_up=12000 if number < 3 else 0,
                    train_loss=[0.9, 0.7, None][number - 1],
                    train_accuracy=[0.6, 0.75, None][number - 1],
                    test_loss=[0.6, 0.5, None][number - 1],
                    test_accuracy=[0.7, 0.8, None][number - 1],
                    update_norm=[1.5, 1.25, None][number - 1],
                    started_at=started,
                    deadline_at=started + dt.timedelta(minutes=30),
                    closed_at=closed,
                    aggregate_seconds=0.5 if number < 3 else None,
                    eval_seconds=2.0 if number < 3 else None,
                    duration_seconds=300.0 if number < 3 else None,
                )
            )
        r1, r2, _r3 = rounds
        received = t0 + dt.timedelta(minutes=12)
        session.add_all(
            [
                _update(r1, w1, UpdateStatus.ACCEPTED, 1000, train_loss=0.8, received_at=received),
                _update(r1, w2, UpdateStatus.ACCEPTED, 1200, train_loss=1.0, received_at=received),
                _update(
                    r1,
                    w3,
                    UpdateStatus.REJECTED,
                    900,
                    reject_reason="stale base version 0 != 1",
                    received_at=received,
                ),
                _update(r2, w1, UpdateStatus.ACCEPTED, 1100, received_at=received),
                _update(r2, w2, UpdateStatus.ACCEPTED, 1300, received_at=received),
                Evaluation(
                    round=r1,
                    worker=w1,
                    model_version=1,
                    split="test",
                    num_samples=50,
                    loss=0.61,
                    accuracy=0.72,
                    created_at=received,
                ),
                Evaluation(
                    round=r1,
                    worker=w2,
                    model_version=1,
                    split="test",
                    num_samples=40,
                    loss=0.59,
                    accuracy=0.68,
                    created_at=received,
                ),
                Evaluation(
                    round=r2,
                    worker=w1,
                    model_version=2,
                    split="validation",
                    num_samples=50,
                    loss=0.5,
                    accuracy=0.8,
                    created_at=received,
                ),
            ]
        )

        # An unrelated federation: same worker name, its own rounds; its newest completed round has no test accuracy.
        other = Federation(name=OTHER, model_name="x", created_at=t0, updated_at=t0)
        ow = _worker(other, "w1", t0, now)
        o1 = Round(
            federation=other,
            number=1,
            state=RoundState.COMPLETED.value,
            base_version=0,
            base_hash="0" * 64,
            participants=["w1"],
            test_accuracy=0.99,
            test_loss=0.01,
            deadline_at=now,
        )
        o2 = Round(
            federation=other,
            number=2,
            state=RoundState.COMPLETED.value,
            base_version=1,
            base_hash="1" * 64,
            participants=["w1"],
            deadline_at=now,
        )
        session.add_all([ow, o1, o2, _update(o1, ow, UpdateStatus.ACCEPTED, 5)])
    engine.dispose()
    return s


def ts(value: str | None) -> dt.datetime | None:
    """Parse a serialized datetime, insisting that it is timezone-aware UTC."""
    if value is None:
        return None
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.utcoffset() == dt.timedelta(0), value
    return parsed


@pytest.fixture
def seeded(db_url: str) -> Seed:
    return seed(db_url)


@pytest.fixture
def client(db_url: str, seeded: Seed) -> Iterator[TestClient]:
    with TestClient(create_app(db_url, online_seconds=60.0)) as c:
        yield c
