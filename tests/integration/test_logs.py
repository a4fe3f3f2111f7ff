"""`strata logs` against a running federation: a real coordinator and workers, the dashboard over HTTP with a
read token, and the command as a user runs it, following the rounds as they close."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import (
    ServedCoordinator,
    coordinator_settings,
    make_worker_data,
    make_workers,
    run_to_done,
    served_dashboard,
)

READ = "read-token-logs-abcdefgh"
LOGS = [sys.executable, "-m", "strata.cli", "logs"]


def logs(url: str, *args: str, token: str | None = READ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STRATA_READ_TOKEN", "STRATA_ADMIN_KEY")}
    tok = ["--token", token] if token else []
    return subprocess.run(
        [*LOGS, "--api", url, *tok, *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_logs_follows_a_running_federation_to_its_end(tmp_path: Path, tiny_model: Path) -> None:
    db = f"sqlite:///{tmp_path / 'logs.db'}"
    evals = make_worker_data(tmp_path / "eval", 1, per_worker=40)[0] / "train.jsonl"
    settings = coordinator_settings(
        tmp_path, db, tiny_model, federation="followed", rounds=3, eval_data=evals
    )
    coord = ServedCoordinator(settings)  # migrates and creates the federation
    workers = make_workers(coord.address, make_worker_data(tmp_path / "data", 3), tmp_path)
    with served_dashboard(db, read_token=READ) as url:
        follower = subprocess.Popen(
            [*LOGS, "followed", "--follow", "--interval", "0.2", "--api", url],
            env=os.environ | {"STRATA_READ_TOKEN": READ},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            run_to_done(workers)
            coord.wait()
            out, err = follower.communicate(timeout=60)
        finally:
            for w in workers:
                w.close()
            if follower.poll() is None:
                follower.kill()
        assert follower.returncode == 0, err
        lines = out.splitlines()
        assert [line.split()[:2] for line in lines[:3]] == [
            ["round", "1/3"],
            ["round", "2/3"],
            ["round", "3/3"],
        ]
        assert all("test acc 0." in line and "(3 updates)" in line for line in lines[:3]), out
        assert (
            lines[3].startswith("federation followed completed: round 3/3, last test acc 0.")
            and len(lines) == 4
        )

        again = logs(url, "followed", "--since", "2", "--json")
        rows = [json.loads(line) for line in again.stdout.splitlines()]
        assert again.returncode == 0 and [r["number"] for r in rows] == [2, 3]
        assert all(r["state"] == "completed" and r["num_updates"] == 3 for r in rows)
        assert (
            logs(url, "followed", "--since", "1h").stdout.splitlines() == lines
        )  # every round closed just now
        assert logs(url, "followed", "--since", "2099-01-01T00:00:00Z").stdout.splitlines() == lines[3:]

        refused = logs(url, "followed", token=None)
        assert refused.returncode == 1 and "401" in refused.stderr and "--token" in refused.stderr
        unknown = logs(url, "nope")
        assert unknown.returncode == 1 and "404" in unknown.stderr
        bad = logs(url, "followed", "--since", "yesterday")
        assert bad.returncode == 2 and "--since" in bad.stderr
    gone = logs(url, "followed")  # the dashboard has stopped
    assert gone.returncode == 1 and "cannot reach" in gone.stderr
