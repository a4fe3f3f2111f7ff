"""Schema migrations and the store on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from coordinator.store import Store
from strata.storage.db import make_engine, migrate
from strata.storage.models import Base, RoundState, UpdateStatus
from strata.storage.tokens import hash_token


def test_migrations_build_exactly_the_models_schema(empty_db_url: str) -> None:
    migrate(empty_db_url)
    migrate(empty_db_url)  # idempotent: a restart migrates again
    engine = make_engine(empty_db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"
    assert {"federations", "workers", "rounds", "updates", "evaluations", "alembic_version"} <= tables


def test_store_records_a_round_and_its_updates(db_url: str) -> None:
    store = Store(db_url)
    fed = store.get_or_create_federation("f", total_rounds=2)
    assert store.get_or_create_federation("f").id == fed.id
    w = store.upsert_worker(fed.id, "org-1", "secret-token-1", num_samples=10)
    assert w.token_hash == hash_token("secret-token-1") and "secret-token-1" not in w.token_hash
    with pytest.raises(PermissionError):
        store.upsert_worker(fed.id, "org-1", "another-token", num_samples=10)
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    rid = store.open_round(fed.id, 1, 0, "h0", ["org-1"], 1, deadline)
    store.record_update(rid, w.id, UpdateStatus.REJECTED, "bad frame", base_version=0, num_samples=10)
    store.record_update(rid, w.id, UpdateStatus.ACCEPTED, base_version=0, num_samples=10, bytes=123)
    store.close_round(
        rid,
        RoundState.COMPLETED,
        federation_fields=dict(model_version=1, model_hash="h1"),
        result_version=1,
        num_updates=1,
    )
    (r,) = store.rounds(fed.id)
    assert (r.state, r.result_version, r.participants) == ("completed", 1, ["org-1"])
    assert [u.status for u in store.updates(rid)] == ["rejected", "accepted"]
    f = store.federation(fed.id)
    assert (f.model_version, f.model_hash, f.current_round, f.state) == (1, "h1", 1, "running")
    assert store.fail_open_rounds(fed.id, "x") == 0
    rid2 = store.open_round(fed.id, 2, 1, "h1", ["org-1"], 1, deadline)
    assert store.fail_open_rounds(fed.id, "restart") == 1
    assert store.rounds(fed.id)[1].state == "failed" and store.last_round_number(fed.id) == 2 and rid2
    store.close()
