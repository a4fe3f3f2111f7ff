"""Access control and the administrator's writes: read token and admin key on the API, tokens issued and
revoked through it reaching a running coordinator, pause, resume and stop, and the `strata admin` CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient

from coordinator.store import Store
from dashboard_api.app import create_app
from strata import synthetic
from strata.member.upload import update_chunks
from strata.modeling import global_tensors, load_model
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import task_from_proto
from strata.storage.db import migrate
from tests.helpers import ServedCoordinator, coordinator_settings, served_dashboard, wait_until
from tests.integration.test_bad_input import Client, result

READ, ADMIN = "read-token-abcdefgh", "admin-key-abcdefgh"
API = "/api/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_reads_need_the_read_token_and_writes_the_admin_key(db_url: str) -> None:
    migrate(db_url)
    Store(db_url).get_or_create_federation("f1")
    with TestClient(create_app(db_url, read_token=READ, admin_key=ADMIN)) as api:
        assert api.get("/healthz").status_code == 200  # liveness stays open
        assert api.get("/").status_code == 200  # the page itself; its data calls carry the token
        r = api.get(f"{API}/federations")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert api.get(f"{API}/federations", headers=bearer("wrong-token")).status_code == 401
        assert api.get(f"{API}/federations", headers=bearer(READ)).status_code == 200
        assert api.get(f"{API}/federations", headers=bearer(ADMIN)).status_code == 200
        body = {"name": "f2", "total_rounds": 3}
        assert api.post(f"{API}/federations", json=body).status_code == 401
        denied = api.post(f"{API}/federations", json=body, headers=bearer(READ))
        assert denied.status_code == 403 and "admin key" in denied.json()["detail"]
        made = api.post(f"{API}/federations", json=body, headers=bearer(ADMIN))
        assert made.status_code == 201 and made.json()["state"] == "created"
        again = api.post(f"{API}/federations", json=body, headers=bearer(ADMIN))
        assert again.status_code == 409 and "already exists" in again.json()["detail"]
        bad = api.post(f"{API}/federations", json={"name": "no spaces"}, headers=bearer(ADMIN))
        assert bad.status_code == 422
        assert api.post(f"{API}/federations/nope/pause", headers=bearer(ADMIN)).status_code == 404
        assert api.delete(f"{API}/federations/f1/tokens/99", headers=bearer(ADMIN)).status_code == 404
        # nothing a reader sent changed anything
        names = [f["name"] for f in api.get(f"{API}/federations", headers=bearer(READ)).json()]
        assert sorted(names) == ["f1", "f2"]
    with TestClient(create_app(db_url)) as api:  # no admin key: writes are off, reads open
        off = api.post(f"{API}/federations/f1/pause", headers=bearer(ADMIN))
        assert off.status_code == 403 and "writes are disabled" in off.json()["detail"]
        assert api.get(f"{API}/federations").status_code == 200


def test_issued_tokens_pause_resume_revoke_and_stop_reach_the_coordinator(
    tmp_path: Path, tiny_model: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'admin.db'}"
    migrate(db)
    with TestClient(create_app(db, admin_key=ADMIN)) as api:
        h = bearer(ADMIN)
        assert (
            api.post(f"{API}/federations", json={"name": "adm", "total_rounds": 3}, headers=h).status_code
            == 201
        )
        t1 = api.post(f"{API}/federations/adm/tokens", json={"label": "org-1"}, headers=h).json()
        t2 = api.post(f"{API}/federations/adm/tokens", json={"label": "org-2"}, headers=h).json()
        assert t1["token"] != t2["token"] and t1["token"].startswith(t1["prefix"])
        listed = api.get(f"{API}/federations/adm/tokens", headers=h).json()
        assert [t["label"] for t in listed] == ["org-1", "org-2"] and all("token" not in t for t in listed)
        assert api.post(f"{API}/federations/adm/pause", headers=h).json()["desired_state"] == "paused"

        settings = coordinator_settings(
            tmp_path,
            db,
            tiny_model,
            federation="adm",
            worker_tokens=[],
            rounds=3,
            min_workers=1,
            min_updates=1,
            control_poll_seconds=0.2,
            linger_seconds=1.0,
        )
        coord = ServedCoordinator(settings)
        store = Store(db)
        try:
            with pytest.raises(grpc.RpcError) as err:
                Client(coord.address, "strata_not-a-token-at-all", "intruder")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            c1 = Client(coord.address, t1["token"], "org-1")  # an issued token joins
            wait_until(lambda: store.get_or_create_federation("adm").state == "paused", 10)
            reply = c1.stub.GetTask(pb.TaskRequest(worker_id=c1.id, wait_seconds=1), metadata=c1.md)
            assert reply.kind == pb.Task.WAIT  # paused: no round opens

            api.post(f"{API}/federations/adm/resume", headers=h)
            task = task_from_proto(c1.task())
            assert task.round == 1
            c2 = Client(coord.address, t2["token"], "org-2")  # joins after round 1 opened
            revoked = api.delete(f"{API}/federations/adm/tokens/{t2['id']}", headers=h).json()
            assert revoked["revoked_at"] is not None

            def refused() -> bool:
                try:
                    c2.stub.GetTask(pb.TaskRequest(worker_id=c2.id, wait_seconds=0), metadata=c2.md)
                except grpc.RpcError as e:
                    return e.code() == grpc.StatusCode.UNAUTHENTICATED
                return False

            wait_until(refused, 10)
            model, _ = load_model(tiny_model, synthetic.LABELS)
            zero = {n: t.clone().zero_() for n, t in global_tensors(model).items()}
            assert c1.push(update_chunks(c1.id, task, result(zero))).accepted

            assert api.post(f"{API}/federations/adm/stop", headers=h).json()["desired_state"] == "stopped"
            wait_until(
                lambda: coord.server.runner.control.desired == "stopped", 10
            )  # the coordinator has read it
            # a round that opened before the stop still finishes; then the workers hear DONE
            for _ in range(30):
                msg = c1.stub.GetTask(pb.TaskRequest(worker_id=c1.id, wait_seconds=1), metadata=c1.md)
                if msg.kind == pb.Task.DONE:
                    break
                if msg.kind == pb.Task.TRAIN:
                    c1.push(update_chunks(c1.id, task_from_proto(msg), result(zero)))
            assert msg.kind == pb.Task.DONE
            coord.wait(30)
            fed = store.get_or_create_federation("adm")
            assert fed.state == "stopped" and fed.current_round < 3
            late = api.post(f"{API}/federations/adm/resume", headers=h)
            assert late.status_code == 409 and "has ended (stopped)" in late.json()["detail"]
        finally:
            coord.stop()
            store.close()


def test_strata_admin_cli(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate(db)
    with served_dashboard(db, admin_key=ADMIN) as url:
        base = [sys.executable, "-m", "strata.cli", "admin", "--api", url]

        def run(*args: str, key: str | None = ADMIN) -> subprocess.CompletedProcess[str]:
            env_key = ["--admin-key", key] if key else []
            return subprocess.run([*base, *env_key, *args], capture_output=True, text=True, timeout=60)

        assert "created" in run("create", "cli-fed", "--rounds", "2").stdout
        issued = run("token", "issue", "cli-fed", "org-a")
        assert issued.returncode == 0 and "strata_" in issued.stdout
        assert "org-a" in run("token", "list", "cli-fed").stdout
        assert "paused requested" in run("pause", "cli-fed").stdout
        assert "token 1 (org-a) revoked" in run("token", "revoke", "cli-fed", "1").stdout
        listed = run("token", "list", "cli-fed").stdout
        assert "revoked" in listed
        wrong = run("pause", "cli-fed", key="not-the-key")
        assert wrong.returncode == 1 and "403" in wrong.stderr
        missing = run("pause", "cli-fed", key=None)
        assert missing.returncode == 2 and "admin key" in missing.stderr
        assert run("stop", "nope").returncode == 1
