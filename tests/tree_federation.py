"""A finished real two-level federation for the dashboard's tests: a parent "world" with key blocks top:1,
attention τ = 2 and β = 0.5, and two sub-federations "sub-a" and "sub-b" of two workers each, one inner round
per parent round, two parent rounds (the set-up of tests/integration/test_tree.py's key-block test). The
sub-federations evaluate on held-out data, so they report a "federation-test" metric upward, and each joins with
the address of its own dashboard (dashboard_page), as the parent does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strata import synthetic
from strata.data import write_examples
from tests.helpers import ServedCoordinator, coordinator_settings, make_worker_data, make_workers, run_to_done

SUB_TOKENS = ["token-sub-a-11111111", "token-sub-b-22222222"]
SUBS = ("sub-a", "sub-b")
TAU, BETA = 2.0, 0.5


def dashboard_page(name: str) -> str:
    """The dashboard_url a federation of the tree runs with: members send theirs up, the parent its own down."""
    return f"https://dash.{name}.example/?federation={name}"


@dataclass(frozen=True)
class Tree:
    parent_url: str  # the database of the parent federation "world"
    sub_urls: dict[str, str]  # each sub-federation's database (on PostgreSQL: the parent's)


def sub_db(db_url: str, tmp_path: Path, name: str) -> str:
    """A sub-federation keeps its own database: its own SQLite file, or the same PostgreSQL database under
    its own federation name."""
    return f"sqlite:///{tmp_path / f'{name}.db'}" if db_url.startswith("sqlite") else db_url


def build_tree(
    tmp_path: Path,
    db_url: str,
    tiny_model: Path,
    parent_extra: dict[str, Any] | None = None,
    sub_extra: dict[str, Any] | None = None,
) -> Tree:
    """Run the tree to the end on `db_url` (migrated; the parent's database) and return the databases;
    `parent_extra` and `sub_extra` override the parent's and the sub-federations' settings."""
    parent_s = coordinator_settings(
        tmp_path / "world",
        db_url,
        tiny_model,
        **dict(
            federation="world",
            rounds=2,
            min_workers=2,
            min_updates=2,
            worker_tokens=SUB_TOKENS,
            local_blocks="top:1",
            key_aggregation="attention",
            attention_temperature=TAU,
            residual_keep=BETA,
            dashboard_url=dashboard_page("world"),
        )
        | (parent_extra or {}),
    )
    parent = ServedCoordinator(parent_s)
    subs, workers, urls = [], [], {}
    for k, name in enumerate(SUBS):
        held_out = tmp_path / f"eval-{name}.jsonl"
        write_examples(held_out, synthetic.generate_splits(10, 40, seed=30 + k)[1])
        urls[name] = sub_db(db_url, tmp_path, name)
        s = coordinator_settings(
            tmp_path / name,
            urls[name],
            tiny_model,
            **dict(
                federation=name,
                model=None,
                labels=None,
                parent=parent.address,
                parent_token=SUB_TOKENS[k],
                inner_rounds=1,
                min_workers=2,
                min_updates=2,
                eval_data=held_out,
                dashboard_url=dashboard_page(name),
            )
            | (sub_extra or {}),
        )
        subs.append(ServedCoordinator(s))
        data = make_worker_data(tmp_path / f"data-{name}", 2, seed=10 + 7 * k)
        workers += make_workers(subs[-1].address, data, tmp_path / f"workers-{name}")
    try:
        run_to_done(workers)
    finally:
        for w in workers:
            w.close()
    for c in subs:
        c.wait()
    parent.wait()
    return Tree(parent_url=db_url, sub_urls=urls)
