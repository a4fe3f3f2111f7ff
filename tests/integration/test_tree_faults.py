"""Faults across the tiers of a federation of federations, with real coordinator processes killed with
SIGKILL (strata.failpoints) and restarted on the same port, database and data folder:

- a sub-federation killed mid-inner-round resumes and delivers its update to the parent once;
- a sub-federation killed after the parent took its update sends it again and the parent counts it once;
- a parent restarted while it held a sub-federation's update does not make it train that round twice;
- a sub-federation that misses the parent's deadline is dropped from that round like a worker;
- a member whose token the parent revoked is no longer served.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from coordinator import checkpoint
from coordinator.settings import CoordinatorSettings
from coordinator.store import Store
from strata.storage.models import ParentRound
from strata.storage.tokens import hash_token
from tests.helpers import (
    CoordinatorProcess,
    ServedCoordinator,
    coordinator_settings,
    coordinator_values,
    make_worker_data,
    make_workers,
    run_to_done,
    wait_until,
)
from tests.tree_federation import SUB_TOKENS

FAST = dict(task_poll_seconds=1.0, linger_seconds=3.0, torch_threads=1, round_timeout=120)
WORKER = dict(max_backoff=0.5, connect_timeout=120)


def world(tmp_path: Path, db: str, model: Path, **overrides: Any) -> ServedCoordinator:
    values = dict(federation="world", rounds=2, min_workers=1, min_updates=1, worker_tokens=SUB_TOKENS)
    return ServedCoordinator(
        coordinator_settings(tmp_path / "world", db, model, **(values | FAST | overrides))
    )


def sub_values(
    tmp_path: Path, name: str, parent: str, token: str, db: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """A sub-federation of two workers, its own database (a SQLite file unless `db`), two inner rounds
    per parent round."""
    values = dict(
        federation=name,
        model=None,
        labels=None,
        parent=parent,
        parent_token=token,
        inner_rounds=2,
        min_workers=2,
        min_updates=2,
    )
    db = db or f"sqlite:///{tmp_path / f'{name}.db'}"
    return coordinator_values(tmp_path / name, db, Path("unused"), **(values | FAST | overrides))


def serve_sub(values: dict[str, Any]) -> ServedCoordinator:
    """An in-process sub-federation coordinator with these settings."""
    return ServedCoordinator(CoordinatorSettings.load(values))


def run_in_thread(workers: list[Any], errors: list[BaseException]) -> threading.Thread:
    def go() -> None:
        try:
            run_to_done(workers, timeout=400)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test
            errors.append(exc)

    t = threading.Thread(target=go)
    t.start()
    return t


def parent_updates(db: str) -> list[list[str]]:
    """Per parent round, the member names of its accepted updates."""
    store = Store(db)
    try:
        fid = store.get_or_create_federation("world").id
        names = {w.id: w.name for w in store.workers(fid)}
        return [
            sorted(names[u.worker_id] for u in store.updates(r.id) if u.status == "accepted")
            for r in store.rounds(fid)
        ]
    finally:
        store.close()


def sub_record(values: dict[str, Any]) -> tuple[list[tuple[int, str]], list[tuple[int, str, int]]]:
    """A sub-federation's (round, state) rows and (parent round, state, start version) records."""
    store = Store(values["database_url"])
    try:
        fid = store.get_or_create_federation(values["federation"]).id
        rounds = [(r.number, r.state) for r in store.rounds(fid)]
        with store.sessions() as s:
            served = s.scalars(select(ParentRound).where(ParentRound.federation_id == fid))
            return rounds, sorted((p.parent_round, p.state, p.start_version) for p in served)
    finally:
        store.close()


def test_a_sub_federation_killed_mid_inner_round_resumes_and_delivers_once(
    tmp_path: Path, tiny_model: Path
) -> None:
    kill_mid_inner_round(tmp_path, tiny_model, f"sqlite:///{tmp_path / 'world.db'}", None)


@pytest.mark.postgres
def test_a_sub_federation_killed_mid_inner_round_on_postgresql(
    tmp_path: Path, tiny_model: Path, db_url: str
) -> None:
    """Both tiers on PostgreSQL: the parent and the sub-federation as two federations of one database."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the SQLite run is above")
    kill_mid_inner_round(tmp_path, tiny_model, db_url, db_url)


def kill_mid_inner_round(tmp_path: Path, tiny_model: Path, db: str, sub_db: str | None) -> None:
    parent = world(tmp_path, db, tiny_model)
    values = sub_values(tmp_path, "sub-a", parent.address, SUB_TOKENS[0], db=sub_db)
    sub = CoordinatorProcess(values, tmp_path / "logs", "sub-a")
    sub.start("coordinator.push.recorded@3")  # the first update of parent round 1's second inner round
    sent: dict[str, list[int]] = {"org-1": [], "org-2": []}
    workers = make_workers(
        sub.address,
        make_worker_data(tmp_path / "data", 2),
        tmp_path / "workers",
        lambda name, task, res: sent[name].append(task.round),
        extra=WORKER,
    )
    errors: list[BaseException] = []
    runner = run_in_thread(workers, errors)
    try:
        assert sub.wait(180) == -signal.SIGKILL, sub.text()
        sub.start()
        assert sub.wait(240) == 0, sub.text()
        parent.wait()
        runner.join(60)
        assert not errors, errors
    finally:
        sub.kill()
        runner.join(5)
        for w in workers:
            w.close()
    assert "round 2 reopened after a restart" in sub.log.read_text()
    assert parent_updates(db) == [["sub-a"], ["sub-a"]]  # one update per parent round, counted once
    rounds, served = sub_record(values)
    assert rounds == [(n, "completed") for n in (1, 2, 3, 4)]
    assert served == [(1, "delivered", 1), (2, "delivered", 4)]
    for name, trained in sent.items():  # no inner round trained twice
        assert sorted(trained) == [1, 2, 3, 4], name
    pck, sck = (
        tmp_path / "world" / "coord" / "checkpoints" / "world",
        tmp_path / "sub-a" / "coord" / "checkpoints" / "sub-a",
    )
    got, want = checkpoint.load(pck, 1), checkpoint.load(sck, 3)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=2e-6)


def test_a_sub_federation_killed_after_delivering_sends_it_again_and_is_counted_once(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The parent waits for a second member (a plain worker held back until the sub-federation has
    restarted), so round 1 is still open when the restarted sub-federation delivers again."""
    db = f"sqlite:///{tmp_path / 'world.db'}"
    parent = world(
        tmp_path,
        db,
        tiny_model,
        rounds=1,
        min_workers=2,
        min_updates=2,
        worker_tokens=[*SUB_TOKENS, "token-plain-33333333"],
    )
    values = sub_values(tmp_path, "sub-a", parent.address, SUB_TOKENS[0], inner_rounds=1)
    sub = CoordinatorProcess(values, tmp_path / "logs", "sub-a")
    sub.start("coordinator.parent.delivered@1")
    gate = threading.Event()
    plain = make_workers(
        parent.address,
        make_worker_data(tmp_path / "plain-data", 1, seed=5),
        tmp_path / "plain",
        lambda name, task, res: gate.wait(120),
        extra=WORKER,
        tokens=["token-plain-33333333"],
    )
    workers = make_workers(
        sub.address, make_worker_data(tmp_path / "data", 2), tmp_path / "workers", extra=WORKER
    )
    errors: list[BaseException] = []
    runners = [run_in_thread(workers, errors), run_in_thread(plain, errors)]
    try:
        assert sub.wait(180) == -signal.SIGKILL, sub.text()
        sub.start()
        wait_until(lambda: "counted once" in sub.log.read_text(), timeout=120)
        gate.set()
        assert sub.wait(240) == 0, sub.text()
        parent.wait()
        for t in runners:
            t.join(60)
        assert not errors, errors
    finally:
        gate.set()
        sub.kill()
        for w in workers + plain:
            w.close()
    assert parent_updates(db) == [["org-1", "sub-a"]]
    rounds, served = sub_record(values)
    assert rounds == [(1, "completed")]  # the restart sent the update again without training again
    assert served == [(1, "delivered", 1)]


def test_a_parent_restart_does_not_make_a_sub_federation_train_its_round_twice(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'world.db'}"
    pvalues = coordinator_values(
        tmp_path / "world",
        db,
        tiny_model,
        **(dict(federation="world", rounds=2, min_workers=1, min_updates=1, worker_tokens=SUB_TOKENS) | FAST),
    )
    parent = CoordinatorProcess(pvalues, tmp_path / "logs", "world")
    parent.start("coordinator.push.spooled@1")  # the sub-federation's first update is on disk, not recorded
    values = sub_values(tmp_path, "sub-a", parent.address, SUB_TOKENS[0])
    sub = serve_sub(values)
    sent: dict[str, list[int]] = {"org-1": [], "org-2": []}
    workers = make_workers(
        sub.address,
        make_worker_data(tmp_path / "data", 2),
        tmp_path / "workers",
        lambda name, task, res: sent[name].append(task.round),
        extra=WORKER,
    )
    errors: list[BaseException] = []
    runner = run_in_thread(workers, errors)
    try:
        assert parent.wait(180) == -signal.SIGKILL, parent.text()
        parent.start()
        assert parent.wait(240) == 0, parent.text()
        sub.wait(120)
        runner.join(60)
        assert not errors, errors
    finally:
        parent.kill()
        runner.join(5)
        for w in workers:
            w.close()
    assert parent_updates(db) == [["sub-a"], ["sub-a"]]
    rounds, served = sub_record(values)
    assert rounds == [(n, "completed") for n in (1, 2, 3, 4)]  # 2 inner rounds per parent round, no more
    assert [(r, state) for r, state, _ in served] == [(1, "delivered"), (2, "delivered")]
    for name, trained in sent.items():
        assert sorted(trained) == [1, 2, 3, 4], name


def test_a_sub_federation_that_misses_the_parent_deadline_is_dropped_from_that_round(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'world.db'}"
    parent = world(tmp_path, db, tiny_model, rounds=1, min_workers=2, min_updates=1, round_timeout=15)
    subs = []
    for k, name in enumerate(("sub-a", "sub-b")):  # sub-b waits for a third worker that never comes
        v = sub_values(tmp_path, name, parent.address, SUB_TOKENS[k], inner_rounds=1, min_workers=2 + k)
        subs.append((v, serve_sub(v)))
    workers = []
    for k, (_, c) in enumerate(subs):
        workers += make_workers(
            c.address, make_worker_data(tmp_path / f"data-{k}", 2, seed=k), tmp_path / f"w{k}", extra=WORKER
        )
    errors: list[BaseException] = []
    runner = run_in_thread(workers, errors)
    try:
        parent.wait(120)
        for _, c in subs:
            c.wait(60)
    finally:
        for _, c in subs:
            c.stop()
        runner.join(30)
        for w in workers:
            w.close()
    assert parent_updates(db) == [["sub-a"]]
    assert sub_record(subs[0][0])[1] == [(1, "delivered", 1)]
    rounds, served = sub_record(subs[1][0])
    assert rounds == [] and served == [(1, "missed", 1)]


def test_a_member_whose_token_the_parent_revoked_is_no_longer_served(
    tmp_path: Path, tiny_model: Path
) -> None:
    from dashboard_api import writes
    from strata.storage.db import session_factory

    db = f"sqlite:///{tmp_path / 'world.db'}"
    # rounds enough that the revocation lands before the federation could end by itself
    parent = world(tmp_path, db, tiny_model, rounds=30, worker_tokens=[], control_poll_seconds=0.5)
    store = Store(db)
    with session_factory(store.engine)() as s:
        issued = writes.issue_token(s, "world", "sub-a")
    issued_hash = hash_token(issued.token)  # the parent reads issued tokens every control_poll_seconds
    wait_until(lambda: issued_hash in parent.server.runner.sessions.issued, timeout=30)
    values = sub_values(tmp_path, "sub-a", parent.address, issued.token, inner_rounds=1)
    sub = serve_sub(values)
    workers = make_workers(  # they give up soon after their coordinator ends
        sub.address,
        make_worker_data(tmp_path / "data", 2),
        tmp_path / "w",
        extra=WORKER | {"connect_timeout": 3},
    )
    errors: list[BaseException] = []
    runner = run_in_thread(workers, errors)
    try:
        wait_until(lambda: parent_updates(db)[:1] == [["sub-a"]], timeout=120)
        with session_factory(store.engine)() as s:
            writes.revoke_token(s, "world", issued.id)
        with pytest.raises(Exception, match="refused this federation"):
            sub.wait(120)
    finally:
        sub.stop()
        parent.stop()
        runner.join(30)
        for w in workers:
            w.close()
        store.close()
    inner = Store(values["database_url"])
    try:
        fed = inner.get_or_create_federation("sub-a")
        assert fed.state == "failed" and "UNAUTHENTICATED" in (fed.error or "")
    finally:
        inner.close()
    assert all(names in ([], ["sub-a"]) for names in parent_updates(db))
