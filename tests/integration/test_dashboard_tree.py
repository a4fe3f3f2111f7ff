"""The dashboard API on a real two-level federation (tests/tree_federation.py), on SQLite and PostgreSQL:
member federations in the parent's workers listing, the tree settings, the attention weights of key
blocks per round and over rounds, and the parent rounds a sub-federation served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dashboard_api.app import create_app
from strata.storage.db import make_engine, migrate, session_factory
from strata.storage.models import Federation, KeyWeight, ParentRound, Round, Update, Worker
from tests.conftest import POSTGRES_URL, _drop_postgres_database, _fresh_postgres_database
from tests.tree_federation import BETA, SUBS, TAU, Tree, build_tree, dashboard_page

API = "/api/v1"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def tree(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[Tree]:
    """The finished tree, once per backend for the whole module (it takes ~15 s): the `db_url` fixture's
    databases, at module scope."""
    tmp = tmp_path_factory.mktemp(f"tree-{request.param}")
    if request.param == "sqlite":
        url, name = f"sqlite:///{tmp / 'world.db'}", None
    elif not POSTGRES_URL:
        pytest.skip("STRATA_TEST_POSTGRES_URL is not set")
    else:
        url, name = _fresh_postgres_database()
    try:
        migrate(url)
        yield build_tree(tmp, url, tiny_model)
    finally:
        if name is not None:
            _drop_postgres_database(name)


@pytest.fixture(scope="module")
def parent(tree: Tree) -> Iterator[TestClient]:
    with TestClient(create_app(tree.parent_url)) as client:
        yield client


@pytest.fixture(scope="module")
def subs(tree: Tree) -> Iterator[dict[str, TestClient]]:
    clients = {name: TestClient(create_app(url)) for name, url in tree.sub_urls.items()}
    for c in clients.values():
        c.__enter__()
    try:
        yield clients
    finally:
        for c in clients.values():
            c.__exit__(None, None, None)


def rows(url: str, statement: Any) -> list[Any]:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return list(s.execute(statement).all())
    finally:
        engine.dispose()


def fed_id(url: str, name: str) -> int:
    ((fid,),) = rows(url, select(Federation.id).where(Federation.name == name))
    return int(fid)


def own_rounds(url: str, name: str) -> dict[int, tuple[float, float]]:
    """A sub-federation's completed rounds: number -> (test loss, test accuracy) of its own model."""
    return {
        n: (loss, acc)
        for n, loss, acc in rows(
            url,
            select(Round.number, Round.test_loss, Round.test_accuracy).where(
                Round.federation_id == fed_id(url, name), Round.state == "completed"
            ),
        )
    }


def test_member_federations_are_listed_with_their_size_and_reported_metric(
    tree: Tree, parent: TestClient, subs: dict[str, TestClient]
) -> None:
    r = parent.get(f"{API}/federations/world/workers")
    assert r.status_code == 200
    members = {w["name"]: w for w in r.json()}
    assert sorted(members) == list(SUBS)
    for name, w in members.items():
        assert (w["kind"], w["members"], w["inner_rounds"], w["device"]) == ("federation", 2, 1, "federation")
        assert w["rounds_joined"] == 2 and w["updates_accepted"] == 2
        assert w["dashboard_url"] == dashboard_page(name)  # the address it joined with
        reported = w["reported"]
        assert reported is not None and reported["num_samples"] == 40  # its held-out examples
        # the metric is the sub-federation's own: its model after the inner round that served that parent round
        url = tree.sub_urls[name]
        ((before,),) = rows(
            url,
            select(ParentRound.rounds_before).where(
                ParentRound.federation_id == fed_id(url, name), ParentRound.parent_round == reported["round"]
            ),
        )
        mine = own_rounds(url, name)
        assert (reported["loss"], reported["accuracy"]) == pytest.approx(mine[before + 1], abs=1e-12)
        assert reported["round"] == 2  # the last parent round: the sub-federation's latest round
        own = subs[name].get(f"{API}/federations/{name}").json()
        assert own["last_test_accuracy"] == pytest.approx(reported["accuracy"], abs=1e-12)
        assert own["last_test_loss"] == pytest.approx(reported["loss"], abs=1e-12)
        # its own workers are plain workers, with nothing reported upward
        plain = subs[name].get(f"{API}/federations/{name}/workers").json()
        assert sorted(
            (p["name"], p["kind"], p["members"], p["inner_rounds"], p["reported"]) for p in plain
        ) == [
            ("org-1", "worker", None, None, None),
            ("org-2", "worker", None, None, None),
        ]
        assert all(p["dashboard_url"] is None for p in plain)


def test_the_tree_settings_of_parent_and_sub_federations(
    parent: TestClient, subs: dict[str, TestClient]
) -> None:
    world = parent.get(f"{API}/federations/world").json()
    assert world["tree"] == {
        "parent": None,
        "parent_dashboard_url": None,
        "inner_rounds": 1,
        "local_blocks": "top:1",
        "residual_keep": BETA,
        "key_aggregation": "attention",
        "attention_temperature": TAU,
    }
    for name, client in subs.items():
        t = client.get(f"{API}/federations/{name}").json()["tree"]
        host, _, port = t["parent"].rpartition(":")
        assert host == "127.0.0.1" and port.isdigit()
        assert (t["inner_rounds"], t["local_blocks"]) == (1, "")
        assert t["parent_dashboard_url"] == dashboard_page("world")  # as the parent's JoinReply gave it


def test_key_weights_of_a_round(tree: Tree, parent: TestClient, subs: dict[str, TestClient]) -> None:
    r = parent.get(f"{API}/federations/world/rounds/1/key-weights")
    assert r.status_code == 200
    blocks = r.json()
    wid = fed_id(tree.parent_url, "world")
    stored = {
        (block, name): (weight, cosine)
        for block, name, weight, cosine in rows(
            tree.parent_url,
            select(KeyWeight.block, Worker.name, KeyWeight.weight, KeyWeight.cosine)
            .join(Update, KeyWeight.update_id == Update.id)
            .join(Worker, Update.worker_id == Worker.id)
            .join(Round, KeyWeight.round_id == Round.id)
            .where(Round.federation_id == wid, Round.number == 1),
        )
    }
    got = {(b["block"], m["name"]): (m["weight"], m["cosine"]) for b in blocks for m in b["members"]}
    assert got == stored and len(got) == 2 * len(blocks)
    names = [b["block"] for b in blocks]
    assert names[-1] == "head" and len(names) == 2  # top:1: the highest layer and the head, in model order
    samples = dict(
        rows(
            tree.parent_url,
            select(Worker.name, Update.num_samples)
            .join(Update, Update.worker_id == Worker.id)
            .join(Round, Update.round_id == Round.id)
            .where(Round.federation_id == wid, Round.number == 1),
        )
    )
    for b in blocks:
        assert [m["name"] for m in b["members"]] == list(SUBS)
        assert sum(m["weight"] for m in b["members"]) == pytest.approx(1.0, abs=1e-9)
        assert all(-1.0 <= m["cosine"] <= 1.0 for m in b["members"])
        assert {m["name"]: m["num_samples"] for m in b["members"]} == samples
    assert parent.get(f"{API}/federations/world/rounds/3/key-weights").status_code == 404
    assert parent.get(f"{API}/federations/nope/rounds/1/key-weights").status_code == 404
    assert parent.get(f"{API}/federations/world/rounds/0/key-weights").status_code == 422
    # a round without key blocks: the sub-federations' own rounds
    for name, client in subs.items():
        r = client.get(f"{API}/federations/{name}/rounds/1/key-weights")
        assert r.status_code == 200 and r.json() == []


def test_key_weights_over_rounds(parent: TestClient, subs: dict[str, TestClient]) -> None:
    m = parent.get(f"{API}/federations/world/key-weights").json()
    assert m["rounds"] == [1, 2] and m["members"] == list(SUBS) and m["total_rounds"] == 2
    for j, number in enumerate(m["rounds"]):
        per_round = parent.get(f"{API}/federations/world/rounds/{number}/key-weights").json()
        assert m["blocks"] == [b["block"] for b in per_round]
        for i, b in enumerate(per_round):
            for k, member in enumerate(b["members"]):
                assert m["members"][k] == member["name"]
                assert (m["weights"][i][k][j], m["cosines"][i][k][j]) == (member["weight"], member["cosine"])
            assert sum(m["weights"][i][k][j] for k in range(2)) == pytest.approx(1.0, abs=1e-9)
    page = parent.get(f"{API}/federations/world/key-weights?offset=1&limit=1").json()
    assert (page["rounds"], page["total_rounds"]) == ([2], 2)
    assert page["weights"] == [[row[1:] for row in block] for block in m["weights"]]
    assert parent.get(f"{API}/federations/world/key-weights?first=2").json()["rounds"] == [2]
    assert parent.get(f"{API}/federations/world/key-weights?last=1").json()["rounds"] == [1]
    assert parent.get(f"{API}/federations/world/key-weights?first=2&last=1").status_code == 422
    assert parent.get(f"{API}/federations/nope/key-weights").status_code == 404
    for name, client in subs.items():
        empty = client.get(f"{API}/federations/{name}/key-weights").json()
        assert (empty["blocks"], empty["members"], empty["rounds"], empty["weights"]) == ([], [], [], [])


def test_the_parent_rounds_a_sub_federation_served(
    tree: Tree, parent: TestClient, subs: dict[str, TestClient]
) -> None:
    wid = fed_id(tree.parent_url, "world")
    for name, client in subs.items():
        r = client.get(f"{API}/federations/{name}/parent-rounds")
        assert r.status_code == 200
        page = r.json()
        assert (page["total"], page["offset"], page["limit"]) == (2, 0, 50)
        items = page["items"]
        assert [(p["parent_round"], p["state"]) for p in items] == [(1, "delivered"), (2, "delivered")]
        assert [p["parent_version"] for p in items] == [0, 1]
        assert [p["start_version"] for p in items] == [1, 3]  # v0 joined, v1 synchronised, v2 inner, v3 ...
        assert [p["inner_rounds"] for p in items] == [[1], [2]]
        sent = dict(
            rows(
                tree.parent_url,
                select(Round.number, Update.num_samples)
                .join(Update, Update.round_id == Round.id)
                .join(Worker, Update.worker_id == Worker.id)
                .where(Round.federation_id == wid, Worker.name == name),
            )
        )
        assert [p["num_samples"] for p in items] == [sent[1], sent[2]]
        mine = own_rounds(tree.sub_urls[name], name)
        for p in items:
            assert (p["test_loss"], p["test_accuracy"]) == mine[p["inner_rounds"][-1]]
            assert p["finished_at"] is not None and p["finished_at"] >= p["started_at"]
        second = client.get(f"{API}/federations/{name}/parent-rounds?offset=1&limit=1").json()
        assert second["total"] == 2 and second["items"] == items[1:]
        first = client.get(f"{API}/federations/{name}/parent-rounds?limit=1").json()
        assert first["items"] == items[:1]  # bounded by the next parent round, beyond the page
    top = parent.get(f"{API}/federations/world/parent-rounds").json()
    assert (top["items"], top["total"]) == ([], 0)
    assert parent.get(f"{API}/federations/nope/parent-rounds").status_code == 404
    assert parent.get(f"{API}/federations/world/parent-rounds?limit=0").status_code == 422


def test_the_tree_operations_conform_to_their_schema(parent: TestClient) -> None:
    """Schemathesis (as tests/integration/test_api_schema.py) over the operations that show the tree, on its
    non-empty answers: the federation, its members, the key weights and the parent rounds."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", parent.app)
    wanted = ("/key-weights", "/parent-rounds", "/workers")
    operations = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if op.method.lower() == "get"
        and (op.path.endswith(wanted) or op.path == f"{API}/federations/{{name}}")
    ]
    assert len(operations) == 5
    names = {f["name"] for f in parent.get(f"{API}/federations").json()}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.path_parameters["name"] = ("world", "world", "sub-a", "nope")[
                len(case.path_parameters["name"]) % 4
            ]
            if "number" in case.path_parameters and len(str(case.path_parameters["number"])) % 2:
                case.path_parameters["number"] = 1  # mostly a round with key weights
            query = case.query or {}
            first, last = query.get("first", 1), query.get("last")
            if isinstance(last, int | float) and isinstance(first, int | float) and last < first:
                known = (
                    case.path_parameters["name"] in names
                )  # sub-a is in the parent's database on PostgreSQL
                assert case.call().status_code == (422 if known else 404)
                return
            case.call_and_validate()

        check()


def test_tree_settings_default_when_missing_or_malformed() -> None:
    from dashboard_api.tree_config import TREE_DEFAULTS, tree

    shown = TREE_DEFAULTS | {"parent_dashboard_url": None}
    assert tree({}).model_dump() == shown
    odd = {"parent": "", "inner_rounds": "many", "local_blocks": ["head"], "residual_keep": None}
    assert tree(odd | {"attention_temperature": 3}).model_dump() == shown | {"attention_temperature": 3.0}
    page = "https://dash.world.example/"
    assert tree({"parent": "10.0.0.1:50051", "inner_rounds": 4}, page).model_dump() == shown | {
        "parent": "10.0.0.1:50051",
        "inner_rounds": 4,
        "parent_dashboard_url": page,
    }
