"""`strata simulate` against a real coordinator over real gRPC: virtual workers on one shared model copy
train exactly what separate workers would, dozens of them across processes count once each round, and
Ray hosts them as well as local processes do."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from coordinator import checkpoint
from coordinator.store import Store
from strata import synthetic
from strata.data import write_examples, write_labels
from strata.settings import SettingsError
from strata.storage.models import Round, Update, Worker
from tests.helpers import ServedCoordinator, coordinator_settings, run_to_done, service_env, worker_values
from worker.simulate_cli import SimulateSettings, simulate
from worker.simulation_plan import names


def _tokens(n: int) -> list[str]:
    return [f"token-sim-{k:03d}-xxxxxxxx" for k in range(n)]


def _shards(folder: Path, n: int, per_worker: int = 16) -> list[Path]:
    train, _ = synthetic.generate_splits(per_worker * n, 4, seed=3)
    folder.mkdir(parents=True)
    write_labels(folder, synthetic.LABELS)
    files = []
    for k in range(n):
        files.append(folder / f"shard-{k:03d}.jsonl")
        write_examples(files[-1], train[k * per_worker : (k + 1) * per_worker])
    return files


def _accepted_per_round(db: str) -> dict[int, list[str]]:
    with Store(db).sessions() as s:
        rows = s.execute(
            select(Round.number, Worker.name)
            .join(Update, Update.round_id == Round.id)
            .join(Worker, Worker.id == Update.worker_id)
            .where(Update.status == "accepted")
        ).all()
    out: dict[int, list[str]] = {}
    for number, name in rows:
        out.setdefault(number, []).append(name)
    return {k: sorted(v) for k, v in out.items()}


def test_virtual_workers_on_one_shared_copy_train_what_separate_workers_train(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The same federation twice, with 6 separate workers and with 6 virtual workers of one process on one
    model copy (same names, tokens, data): the final models agree, so no virtual worker trained from
    another's weights, and each carried its own error feedback (bf16 upstream: top-k would let the order in
    which the coordinator sums the updates, different between the runs, flip a near-tie of which entries a
    worker sends, and the runs part by a whole entry)."""
    n, tokens = 6, _tokens(6)
    files = _shards(tmp_path / "shards", n)
    # no dropout: nothing but each worker's own seeds, data and error feedback decides what it trains
    model = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    (model / "config.json").write_text(json.dumps(config))
    finals = []
    for run in ("separate", "simulated"):
        db = f"sqlite:///{tmp_path / f'{run}.db'}"
        settings = coordinator_settings(
            tmp_path / run, db, model, rounds=3, min_workers=n, min_updates=n, worker_tokens=tokens,
            max_steps=2, encoding="bf16",
        )  # fmt: skip
        coord = ServedCoordinator(settings)
        cache = tmp_path / run / "workers"
        if run == "separate":
            from worker.runner import Worker as RealWorker
            from worker.settings import WorkerSettings

            workers = [
                RealWorker(
                    WorkerSettings.load(
                        worker_values(coord.address, tokens[k], name, files[k], cache) | {"eval_fraction": 0}
                    )
                )
                for k, name in enumerate(names("sim", n))
            ]
            try:
                run_to_done(workers, timeout=300)
            finally:
                for w in workers:
                    w.close()
        else:
            (tmp_path / "tokens.txt").write_text("\n".join(tokens) + "\n")
            s = SimulateSettings.load(
                dict(
                    coordinator=coord.address, tokens_file=tmp_path / "tokens.txt", data=tmp_path / "shards",
                    partition="files", workers=n, cache_dir=cache, device="cpu", progress=False,
                    poll_seconds=2, connect_timeout=30,
                )
            )  # fmt: skip
            assert simulate(s) == 0
        coord.wait(120)
        assert _accepted_per_round(db) == {r: names("sim", n) for r in (1, 2, 3)}
        residuals = sorted(p.name for p in cache.glob("**/test/*-residual.safetensors"))
        assert residuals == [f"{name}-residual.safetensors" for name in names("sim", n)]
        finals.append(checkpoint.load(settings.data_dir / "checkpoints" / "test", 3))
    for name, tensor in finals[0].items():
        torch.testing.assert_close(finals[1][name], tensor, atol=1e-5, rtol=0, msg=name)


def _run_cli(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strata.cli", "simulate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _sim_env(address: str, tmp_path: Path, data: Path, n: int, **extra: object) -> dict[str, str]:
    (tmp_path / "tokens.txt").write_text("\n".join(_tokens(n)) + "\n")
    values: dict[str, object] = dict(
        coordinator=address, tokens_file=tmp_path / "tokens.txt", data=data, workers=n,
        cache_dir=tmp_path / "sim-cache", device="cpu", progress=False, poll_seconds=2, connect_timeout=30,
    )  # fmt: skip
    return service_env("SIMULATE", values | extra)


def _pool(tmp_path: Path, n: int) -> Path:
    train, _ = synthetic.generate_splits(12 * n, 4, seed=5)
    write_examples(tmp_path / "pool.jsonl", train)
    return tmp_path / "pool.jsonl"


def test_32_virtual_workers_in_two_processes_count_once_each_round(tmp_path: Path, tiny_model: Path) -> None:
    n = 32
    db = f"sqlite:///{tmp_path / 'sim.db'}"
    settings = coordinator_settings(
        tmp_path, db, tiny_model, rounds=2, min_workers=n, min_updates=n, worker_tokens=_tokens(n), max_steps=1,
        encoding="int8", round_timeout=240,
    )  # fmt: skip
    coord = ServedCoordinator(settings)
    env = _sim_env(
        coord.address, tmp_path, _pool(tmp_path, n), n, processes=2, partition="dirichlet", alpha=1.0
    )
    done = _run_cli(env, 400)
    coord.wait(120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "simulating 32 virtual worker(s) (dirichlet" in done.stderr and "in 2 process(es)" in done.stderr
    assert "round 2: " in done.stderr and "simulation done: 32 virtual worker(s), 64 update(s)" in done.stderr
    assert _accepted_per_round(db) == {r: names("sim", n) for r in (1, 2)}
    with Store(db).sessions() as s:
        assert [(r.number, r.num_updates) for r in s.scalars(select(Round).order_by(Round.number))] == [
            (1, n),
            (2, n),
        ]
        assert s.scalar(select(func.count()).select_from(Worker)) == n


def test_ray_hosts_the_virtual_workers(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("ray", reason="backend ray needs the ray extra")
    n = 8
    db = f"sqlite:///{tmp_path / 'ray.db'}"
    settings = coordinator_settings(
        tmp_path, db, tiny_model, rounds=1, min_workers=n, min_updates=n, worker_tokens=_tokens(n), max_steps=1,
        round_timeout=240, linger_seconds=60,  # (it ends once every worker heard DONE: Ray's may be slow to ask)
    )  # fmt: skip
    coord = ServedCoordinator(settings)
    env = _sim_env(coord.address, tmp_path, _pool(tmp_path, n), n, processes=2, backend="ray", threads=1)
    done = _run_cli(env, 400)
    coord.wait(120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in 2 Ray task(s)" in done.stderr
    assert _accepted_per_round(db) == {1: names("sim", n)}


def _settings(tmp_path: Path, **extra: object) -> SimulateSettings:
    (tmp_path / "tokens.txt").write_text("\n".join(_tokens(3)) + "\n")
    values = dict(
        coordinator="127.0.0.1:1", tokens_file=tmp_path / "tokens.txt", data=_pool(tmp_path, 4), workers=3
    )
    return SimulateSettings.load(values | {"cache_dir": tmp_path / "c", "connect_timeout": 1} | extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"workers": 40}, "holds 3 token(s); 40 virtual workers need one each"),
        ({"partition": "files"}, "partition files needs a folder"),
        ({"workers": 60}, "48 examples cannot give 60 virtual workers one each"),
    ],
)
def test_simulate_refuses_what_it_cannot_plan_before_it_connects(
    tmp_path: Path, extra: dict[str, object], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if extra.get("workers") == 60:
        (tmp_path / "more.txt").write_text("\n".join(_tokens(60)))
        extra = extra | {"tokens_file": tmp_path / "more.txt"}
    assert simulate(_settings(tmp_path, **extra)) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"partition": "striped"}, "partition: unknown 'striped'"),
        ({"eval_data": "pool.jsonl"}, "eval_data: virtual workers evaluate on a held-out share"),
        ({"ray_address": "ray://head:10001"}, "ray_address: set --backend ray too"),
    ],
)
def test_simulate_refuses_bad_settings(tmp_path: Path, extra: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        _settings(tmp_path, **extra)


def test_the_command_names_a_bad_setting_and_exits_2(tmp_path: Path) -> None:
    done = _run_cli(_sim_env("127.0.0.1:1", tmp_path, _pool(tmp_path, 4), 3, partition="striped"), 120)
    assert done.returncode == 2 and "partition: unknown 'striped'" in done.stderr, done.stderr[-2000:]
