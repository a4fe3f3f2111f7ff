"""The deployment files cannot rot: the compose files follow the Compose specification, every variable is
documented, and each service's command, environment and health check, run as local processes against
this machine's PostgreSQL, take two organisations through a 2-round federation over TLS, with worker
tokens issued the way docs/deploy.md says."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from coordinator.settings import CoordinatorSettings
from dashboard_api.settings import DashboardSettings
from tests import compose
from tests.conftest import POSTGRES_URL, _drop_postgres_database, _fresh_postgres_database
from tests.helpers import make_worker_data
from tests.tls import make_material
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
FILES = [DEPLOY / "compose.site.yaml", DEPLOY / "compose.worker.yaml"]
SETTINGS = (CoordinatorSettings, WorkerSettings, DashboardSettings)


def example_env() -> dict[str, str]:
    return compose.read_env_file(DEPLOY / ".env.example")


def referenced(path: Path) -> set[str]:
    """The variables a compose file interpolates."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))


def documented() -> set[str]:
    """Every variable .env.example names, set or commented out."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)[=:]", (DEPLOY / ".env.example").read_text(), re.M))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path: Path) -> None:
    doc = compose.load(path, example_env())
    assert compose.validate(doc) == []
    broken = json.loads(json.dumps(doc))  # the validator does catch mistakes
    service = next(iter(broken["services"].values()))
    service["restart_policy"] = "always"
    service["volumes"] = "not-a-list"
    assert len(compose.validate(broken)) >= 2


def test_every_variable_is_documented_and_every_setting_name_is_real() -> None:
    names = documented()
    for path in FILES:
        missing = referenced(path) - names
        assert not missing, f"{path.name} uses {missing}, which deploy/.env.example does not document"
    settings = {env for cls in SETTINGS for _, env, _, _ in cls.documentation()}
    assert settings <= names, f".env.example lacks {settings - names}"
    # a misspelt STRATA_* name would be ignored silently: every one must be a setting or a deploy variable
    deploy_vars = set().union(*(referenced(p) for p in FILES))
    for path in FILES:
        for service in compose.load(path, example_env())["services"].values():
            for name in service.get("environment") or {}:
                assert not name.startswith("STRATA_") or name in settings, f"{path.name}: {name}"
    for name in example_env():
        assert name in settings or name in deploy_vars, f".env.example sets {name}, which nothing reads"
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    for name in deploy_vars:
        assert name in deploy_doc, f"docs/deploy.md does not mention {name}"
    # the generated block of .env.example is up to date (python scripts/settings_doc.py)
    doc_script = runpy.run_path(str(ROOT / "scripts" / "settings_doc.py"))
    assert doc_script["env_block"]() in (DEPLOY / ".env.example").read_text()


def test_the_dockerfiles_copy_what_exists_and_run_unprivileged() -> None:
    for name in ("Dockerfile.site", "Dockerfile.worker"):
        text = (DEPLOY / name).read_text()
        for line in re.findall(r"^COPY (.+)$", text, re.M):
            *sources, _ = line.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: no such file"
        assert re.search(r"^USER (?!root)\S+", text, re.M), f"{name} runs as root"
        for image in re.findall(r"^(?:ARG BASE=|FROM )(\S+)", text, re.M):
            assert image.startswith("$") or (":" in image and not image.endswith(":latest")), image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def project(root: Path, compose_file: Path, env: dict[str, str]) -> Path:
    """A copy of the deploy folder's compose file with its .env, as an operator would have it."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(compose_file, root / compose_file.name)
    (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return root


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="STRATA_TEST_POSTGRES_URL is not set")
def test_the_compose_services_run_a_two_round_federation_as_local_processes(
    tmp_path: Path, tiny_model: Path
) -> None:
    db_url, db_name = _fresh_postgres_database()
    user = db_url.split("://", 1)[1].split("@", 1)[0].split(":")[0]
    tls = make_material(tmp_path / "pki")
    site_tls = tmp_path / "site-tls"
    site_tls.mkdir()
    shutil.copy(tls.server.cert, site_tls / "server.pem")
    shutil.copy(tls.server.key, site_tls / "server.key")
    org_tls = tmp_path / "org-tls"
    org_tls.mkdir()
    shutil.copy(tls.ca.cert, org_tls / "ca.pem")
    eval_dir = make_worker_data(tmp_path / "held-out", 1, per_worker=40)[0]
    ports = {k: free_port() for k in ("grpc", "health", "metrics", "dashboard")}
    admin_key = "deploy-test-admin-key"
    site_env = example_env() | {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_USER": user,
        "POSTGRES_PASSWORD": "unused-with-trust-auth",
        "POSTGRES_DB": db_name,
        "STRATA_MODEL_DIR": str(tiny_model),
        "STRATA_TLS_DIR": str(site_tls),
        "STRATA_GRPC_PORT": str(ports["grpc"]),
        "STRATA_HEALTH_PORT": str(ports["health"]),
        "STRATA_METRICS_PORT": str(ports["metrics"]),
        "STRATA_DASHBOARD_PORT": str(ports["dashboard"]),
        "STRATA_COORDINATOR_FEDERATION": "deploy-test",
        "STRATA_COORDINATOR_ROUNDS": "2",
        "STRATA_COORDINATOR_MIN_WORKERS": "2",
        "STRATA_COORDINATOR_MIN_UPDATES": "2",
        "STRATA_COORDINATOR_MAX_STEPS": "4",
        "STRATA_COORDINATOR_BATCH_SIZE": "16",
        "STRATA_COORDINATOR_MAX_SEQ_LEN": "32",
        "STRATA_COORDINATOR_CONTROL_POLL_SECONDS": "0.5",
        "STRATA_COORDINATOR_TASK_POLL_SECONDS": "1",
        "STRATA_COORDINATOR_TORCH_THREADS": "1",
        "STRATA_DASHBOARD_ADMIN_KEY": admin_key,
        "STRATA_EVAL_DIR": str(eval_dir),
        "STRATA_COORDINATOR_EVAL_DATA": "/eval/train.jsonl",
    }
    site_dir = project(tmp_path / "site", DEPLOY / "compose.site.yaml", site_env)
    doc = compose.load(site_dir / "compose.site.yaml", site_env)
    assert compose.validate(doc) == []
    assert compose.start_order(doc) == ["postgres", "migrate", "coordinator", "dashboard"]
    services = {
        name: compose.Local(name, spec, site_dir, tmp_path / "site-volumes")
        for name, spec in doc["services"].items()
    }
    running: list[subprocess.Popen[bytes]] = []
    try:
        # PostgreSQL is this machine's: its health check must pass against it
        assert services["postgres"].healthy({"PGHOST": "127.0.0.1"})
        assert services["migrate"].run(tmp_path / "migrate.log", timeout=120) == 0, (
            tmp_path / "migrate.log"
        ).read_text()[-3000:]
        for name in ("coordinator", "dashboard"):
            proc = services[name].start(tmp_path / f"{name}.log")
            running.append(proc)
            try:
                services[name].wait_healthy(proc)
            except compose.ComposeError:
                pytest.fail((tmp_path / f"{name}.log").read_text()[-3000:])

        api = f"http://127.0.0.1:{ports['dashboard']}"
        tokens = {}
        for org in ("org-1", "org-2"):  # docs/deploy.md: the site issues one token per organisation
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "strata.cli",
                    "admin",
                    "--api",
                    api,
                    "--admin-key",
                    admin_key,
                    "--json",
                ]
                + ["token", "issue", "deploy-test", org],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            tokens[org] = json.loads(out.stdout)["token"]

        data = make_worker_data(tmp_path / "org-data", 2)
        workers = []
        for k, org in enumerate(("org-1", "org-2")):
            env = example_env() | {
                "STRATA_WORKER_COORDINATOR": f"127.0.0.1:{ports['grpc']}",
                "STRATA_WORKER_TOKEN": tokens[org],
                "STRATA_WORKER_NAME": org,
                "STRATA_WORKER_DATA_DIR": str(data[k]),
                "STRATA_WORKER_DEVICE": "cpu",
                "STRATA_WORKER_GPUS": "1",
                "STRATA_TLS_DIR": str(org_tls),
            }
            org_dir = project(tmp_path / org, DEPLOY / "compose.worker.yaml", env)
            wdoc = compose.load(org_dir / "compose.worker.yaml", env)
            assert compose.validate(wdoc) == []
            reservation = wdoc["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
            assert reservation["driver"] == "nvidia" and "gpu" in reservation["capabilities"]
            local = compose.Local("worker", wdoc["services"]["worker"], org_dir, tmp_path / f"{org}-volumes")
            assert local.env()["STRATA_WORKER_DATA"] == str(data[k])  # the read-only data volume
            workers.append((org, local.start(tmp_path / f"{org}.log")))
        for org, proc in workers:
            assert proc.wait(300) == 0, (tmp_path / f"{org}.log").read_text()[-3000:]

        status = httpx.get(f"{api}/api/v1/federations/deploy-test", timeout=10).json()
        assert (status["state"], status["model_version"], status["workers_total"]) == ("completed", 2, 2)
        rounds = httpx.get(f"{api}/api/v1/federations/deploy-test/rounds", timeout=10).json()["items"]
        assert sorted((r["number"], r["state"], r["num_updates"]) for r in rounds) == [
            (1, "completed", 2),
            (2, "completed", 2),
        ]
        assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rounds)  # evaluated on the /eval mount
        metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
        assert 'strata_rounds_total{federation="deploy-test",state="completed"} 2.0' in metrics
        for proc in running:  # docker compose stop: SIGTERM, then the grace period
            proc.send_signal(signal.SIGTERM)
        coordinator, dashboard = running
        assert coordinator.wait(60) == 0
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit 143 in a container)
        assert dashboard.wait(60) in (0, -signal.SIGTERM)
        assert "Finished server process" in (tmp_path / "dashboard.log").read_text()
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
        time.sleep(0.2)
        _drop_postgres_database(db_name)
