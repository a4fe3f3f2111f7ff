"""The `strata` command as a user runs it: help, bad settings, and a whole demo federation."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

STRATA = [sys.executable, "-m", "strata.cli"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STRATA, *args], capture_output=True, text=True, timeout=timeout, env=os.environ | (env or {})
    )


@pytest.mark.parametrize("command", ["coordinator", "migrate", "worker", "dashboard", "demo"])
def test_every_subcommand_has_help(command: str) -> None:
    res = run(command, "--help")
    assert res.returncode == 0, res.stderr
    assert f"usage: strata {command}" in res.stdout
    if command not in ("demo", "migrate"):
        assert "--config" in res.stdout and "STRATA_" in res.stdout
    if command == "demo":  # every coordinator setting, from the coordinator's settings class
        assert "--aggregation" in res.stdout and "STRATA_COORDINATOR_MAX_NORM_RATIO" in res.stdout


def test_bad_setting_gets_a_clear_message_and_exit_2() -> None:
    res = run("coordinator", "--rounds", "0")
    assert res.returncode == 2
    assert "rounds" in res.stderr and "STRATA_COORDINATOR_ROUNDS" in res.stderr


def test_bad_env_setting_is_reported_with_its_name() -> None:
    res = run("dashboard", env={"STRATA_DASHBOARD_PORT": "notaport"})
    assert res.returncode == 2 and "STRATA_DASHBOARD_PORT" in res.stderr


def test_coordinator_without_model_fails_cleanly(tmp_path: Path) -> None:
    res = run(
        "coordinator",
        "--database-url",
        f"sqlite:///{tmp_path}/x.db",
        "--data-dir",
        str(tmp_path),
        "--worker-tokens",
        "abcdefgh12",
    )
    assert res.returncode == 1 and "model" in res.stderr


def test_demo_refuses_a_bad_coordinator_setting_before_anything_starts(tmp_path: Path) -> None:
    res = run("demo", "--max-norm-ratio", "-1", "--workdir", str(tmp_path / "demo"))
    assert res.returncode == 2, res.stderr
    assert "max_norm_ratio (--max-norm-ratio / STRATA_COORDINATOR_MAX_NORM_RATIO)" in res.stderr
    assert "greater than or equal to 0" in res.stderr
    assert res.stdout == "" and not (tmp_path / "demo").exists()


@pytest.mark.e2e
def test_demo_runs_a_federation_prints_the_table_and_serves_the_api(tmp_path: Path) -> None:
    import signal

    import httpx

    proc = subprocess.Popen(
        [
            *STRATA,
            "demo",
            "--workers",
            "2",
            "--rounds",
            "2",
            "--train-examples",
            "400",
            "--test-examples",
            "100",
            "--workdir",
            str(tmp_path / "demo"),
            "--serve",
            "--policy",
            "agreement",
            "--blocks",
            "1",
            "--probe-every",
            "0",
            "--max-norm-ratio",  # a coordinator setting the demo never names
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # read until the demo says it is serving
            lines.append(line)
            if line.startswith("serving the dashboard API on "):
                break
        out = "".join(lines)
        assert re.search(r"^round 1/2 +test acc 0\.\d{4}", out, re.M), out
        assert re.search(r"^round 2/2 +test acc", out, re.M), out
        # agreement, k = 1: round 1 probes every block, round 2 trains one block and the head
        assert re.search(r"^round 1/2 .*blocks E,L0,L1,P,H$", out, re.M), out
        assert re.search(r"^round 2/2 .*blocks (E|L0|L1|P),H$", out, re.M), out
        table = [line for line in out.splitlines() if re.match(r"^\| \d+ \| completed \|", line)]
        assert len(table) == 2, out
        assert "2 of 2 rounds completed" in out
        url = lines[-1].split()[5]
        status = httpx.get(f"{url}/api/v1/federations/demo", timeout=10).json()
        assert (status["state"], status["model_version"], status["current_round"]) == ("completed", 2, 2)
        config = status["config"]  # as the coordinator process recorded it
        assert (config["max_norm_ratio"], config["round_timeout"], config["min_updates"]) == (3.0, 600.0, 2)
        # keep reading what it prints while it stops: a full pipe would block it (the demo, or a child
        # writing to the same stdout) and it would never exit
        rest: list[str] = []
        drain = threading.Thread(target=lambda: rest.extend(proc.stdout or ()), daemon=True)
        drain.start()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        drain.join(10)
        assert proc.returncode == 0, "".join(rest)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "demo" / "strata.db").is_file()
    started_with = (tmp_path / "demo" / "config" / "coordinator.toml").read_text()
    assert "max_norm_ratio = 3.0" in started_with and "worker_tokens" not in started_with


def test_coordinator_shuts_down_gracefully_on_sigterm(tmp_path: Path, tiny_model: Path) -> None:
    import signal
    import time

    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            *STRATA,
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--database-url",
            f"sqlite:///{tmp_path}/c.db",
            "--data-dir",
            str(tmp_path / "d"),
            "--model",
            str(tiny_model),
            "--labels",
            "a,b,c,d",
            "--worker-tokens",
            "abcdefgh12",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert port_file.is_file(), proc.communicate(timeout=5)[0]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "shutting down" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/m.db"
    for _ in range(2):  # idempotent
        res = run("migrate", "--database-url", db)
        assert res.returncode == 0, res.stderr
    from sqlalchemy import create_engine, inspect

    engine = create_engine(db)
    assert "rounds" in inspect(engine).get_table_names()
    engine.dispose()


SUBS = ("fed-1", "fed-2")


@pytest.mark.e2e
def test_demo_runs_a_tree_of_federations(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            *STRATA,
            "demo",
            "--federations",
            "2",
            "--workers",
            "2",
            "--rounds",
            "2",
            "--train-examples",
            "600",
            "--test-examples",
            "100",
            "--local-blocks",
            "top:1",
            "--workdir",
            str(tmp_path / "tree"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr[-3000:]
    for fed in SUBS:  # each sub-federation: its own rounds, one per parent round
        assert re.search(rf"^  {fed} round 2/2 +test acc 0\.\d{{4}}", out, re.M), out
    assert re.search(r"^world round 2/2 +test acc 0\.\d{4}", out, re.M), out
    assert "2 of 2 parent rounds completed" in out
    for db in ("strata.db", "fed-1.db", "fed-2.db"):  # every federation keeps its own database
        assert (tmp_path / "tree" / db).is_file()
    # the parent's page links each member federation to its own dashboard, whose address the demo printed
    printed = {
        fed: re.search(rf"^  {fed} on \S+, dashboard (http://127\.0\.0\.1:\d+/)$", out, re.M) for fed in SUBS
    }
    assert all(printed.values()), out
    with sqlite3.connect(tmp_path / "tree" / "strata.db") as db:
        members = sorted(db.execute("SELECT name, dashboard_url FROM workers"))
    assert members == [(fed, f"{m.group(1)}?federation={fed}") for fed, m in printed.items() if m]


def test_demo_runs_a_private_federation_and_prints_its_epsilon(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            *STRATA, "demo", "--workers", "2", "--rounds", "2", "--train-examples", "300", "--test-examples",
            "60", "--workdir", str(tmp_path / "dp"), "--dp", "--dp-noise-multiplier", "2",
            "--dp-target-epsilon", "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    out = res.stdout
    assert res.returncode == 0, out + res.stderr[-3000:]
    from strata.accountant import epsilon

    for k in (1, 2):  # the line per round and the table say the round's ε, the accountant's
        eps = f"{epsilon([(1.0, 2.0)] * k, 1e-5):.3g}"
        assert re.search(rf"^round {k}/2 .* ε {re.escape(eps)} ", out, re.M), out
        assert re.search(rf"^\| {k} \| completed \|.* \| {re.escape(eps)} \|$", out, re.M), out
    assert "train loss" not in out.split("| round |")[0], "no per-member loss in a private federation's lines"
