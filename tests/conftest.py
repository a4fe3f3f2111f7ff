"""Shared fixtures: fresh migrated databases on SQLite and PostgreSQL, tiny models, free ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

# pytest-xdist's two workers (and the coordinators, workers and benchmarks the tests start as processes)
# share the machine's cores: one OpenMP thread each, or torch's default of one per core oversubscribes
# them and its spinning threads made CPU-bound tests several times slower (a setting a test gives, such
# as --torch-threads, still wins: it calls torch.set_num_threads itself)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from strata.storage.db import migrate, normalize_url  # noqa: E402

# the dashboard tests' seeded database and client (fixtures `seeded`, `client`)
pytest_plugins = ["tests.dashboard_seed"]

POSTGRES_URL = os.environ.get("STRATA_TEST_POSTGRES_URL", "")


def _fresh_postgres_database() -> tuple[str, str]:
    """Create an empty database on the test server; return (its URL, its name)."""
    admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = f"strata_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base = normalize_url(POSTGRES_URL).rsplit("/", 1)[0]
    return f"{base}/{name}", name


def _drop_postgres_database(name: str) -> None:
    admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A URL of an empty database (no tables), on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'strata.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("STRATA_TEST_POSTGRES_URL is not set")
    url, name = _fresh_postgres_database()
    try:
        yield url
    finally:
        _drop_postgres_database(name)


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A URL of a fresh database migrated to the newest schema, on each backend."""
    migrate(empty_db_url)
    return empty_db_url


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A one-layer BERT classifier built from a config, with a tokenizer trained on generated text."""
    from tests.helpers import make_model

    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def three_layer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-layer BERT classifier: enough blocks for targeted layers to train a subset."""
    from strata import synthetic
    from strata.modeling import make_tiny_model_dir

    train, _ = synthetic.generate_splits(400, 10, seed=1)
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("model3"),
        [e.text for e in train],
        synthetic.LABELS,
        hidden_size=32,
        num_layers=3,
        num_heads=2,
        vocab_size=600,
        max_len=32,
    )


@pytest.fixture(scope="session")
def federation_db(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> str:
    """The SQLite database of a finished real federation "demo": 3 workers, 4 rounds, policy agreement with
    k = 1, so it holds targeted blocks, scores and layer-wise divergence."""
    from tests.helpers import coordinator_settings, make_worker_data, run_federation

    tmp = tmp_path_factory.mktemp("federation-db")
    db = f"sqlite:///{tmp / 'demo.db'}"
    settings = coordinator_settings(
        tmp,
        db,
        tiny_model,
        federation="demo",
        rounds=4,
        policy="agreement",
        blocks=1,
        probe_every=0,
        eval_data=make_worker_data(tmp / "eval", 1, per_worker=80)[0] / "train.jsonl",
    )
    run_federation(settings, tmp)
    return db
