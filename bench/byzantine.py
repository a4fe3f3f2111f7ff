"""Poisoned updates: one byzantine worker of four, with and without the coordinator's defences.

    python -m bench.byzantine [--seeds 3] [--rounds 5] [--scale 10]

Each run is a real federation: the coordinator (in-process, real gRPC on 127.0.0.1:0, SQLite) and four
workers in threads, on the generated four-topic data (3 honest workers, 300 examples each) with a
small BERT built from a config. The fourth worker trains honestly and then sends an attack instead of
its delta Δ:

- sign-flip: −s·Δ (sign flipped and scaled)
- scale: +s·Δ (boosted, the model-replacement attack)
- noise: Gaussian noise with s times Δ's norm

Defences: none (sample-weighted mean), the relative norm bound (--max-norm-ratio 3), the
coordinate-wise median, the trimmed mean (trim 0.25: one update dropped at each end of each
coordinate). The coordinator's own held-out accuracy after the last round is reported, mean over seeds,
next to the same federation without an attacker.

Writes bench/results/byzantine.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.common import machine, write_report
from coordinator.store import Store
from strata import synthetic
from strata.data import write_examples
from strata.member.upload import encode_update
from strata.modeling import make_tiny_model_dir
from tests.helpers import (
    TOKENS,
    ServedCoordinator,
    coordinator_settings,
    make_worker_data,
    make_workers,
    run_to_done,
)
from worker.runner import Worker
from worker.settings import WorkerSettings

ATTACKS = ("sign-flip", "scale", "noise")
DEFENCES: dict[str, dict[str, Any]] = {
    "none (mean)": {},
    "norm bound (3x median)": {"max_norm_ratio": 3.0},
    "median": {"aggregation": "median"},
    "trimmed mean (0.25)": {"aggregation": "trimmed-mean", "trim_fraction": 0.25},
}
ATTACKER_TOKEN = "token-attacker-dddddddd"


def poison(delta: dict[str, torch.Tensor], attack: str, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """What the byzantine worker sends in place of its honest delta."""
    if attack == "sign-flip":
        return {n: -scale * d for n, d in delta.items()}
    if attack == "scale":
        return {n: scale * d for n, d in delta.items()}
    if attack == "noise":
        g = torch.Generator().manual_seed(seed)
        out = {}
        for n, d in delta.items():
            z = torch.randn(d.shape, generator=g)
            out[n] = z * (scale * float(d.norm()) / max(float(z.norm()), 1e-12))
        return out
    raise ValueError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")


class Byzantine(Worker):
    """A worker that trains like the others, then sends its attack instead of its delta."""

    def __init__(self, settings: WorkerSettings, attack: str, scale: float, seed: int) -> None:
        super().__init__(settings)
        self.attack, self.scale, self.seed = attack, scale, seed
        self.poisoned: set[int] = set()

    def deliver(self) -> None:
        p = self.pending
        if p is not None and p.task.round not in self.poisoned:
            bad = dataclasses.replace(
                p.result, delta=poison(p.result.delta, self.attack, self.scale, self.seed + p.task.round)
            )
            encoded, _ = encode_update(bad, p.task, {})
            self.pending = dataclasses.replace(p, result=bad, encoded=encoded, new_residual={})
            self.poisoned.add(p.task.round)
        super().deliver()


@dataclasses.dataclass
class Setup:
    """The shared pieces of one seed: model, worker data, the coordinator's held-out set."""

    root: Path
    model: Path
    data: list[Path]
    eval_path: Path
    seed: int


def make_setup(root: Path, seed: int) -> Setup:
    train, _ = synthetic.generate_splits(400, 10, seed=seed + 1)
    model = make_tiny_model_dir(
        root / "model",
        [e.text for e in train],
        synthetic.LABELS,
        seed=seed,
        hidden_size=64,
        num_layers=1,
        num_heads=2,
        vocab_size=600,
        max_len=32,
    )
    _, test = synthetic.generate_splits(10, 300, seed=seed + 7)
    write_examples(root / "eval.jsonl", test)
    data = make_worker_data(root / "data", 4, per_worker=300, seed=seed)
    return Setup(root, model, data, root / "eval.jsonl", seed)


def federation(
    setup: Setup,
    attack: str | None,
    defence: dict[str, Any],
    rounds: int = 5,
    scale: float = 10.0,
    learning_rate: float = 3e-3,
) -> tuple[list[float], int]:
    """Run one federation; returns the coordinator's test accuracy after each round and the number of
    updates it refused (the attacker's, when a norm bound catches them)."""
    run = Path(tempfile.mkdtemp(dir=setup.root))
    n = 4 if attack else 3
    settings = coordinator_settings(
        run,
        f"sqlite:///{run / 'byz.db'}",
        setup.model,
        rounds=rounds,
        min_workers=n,
        min_updates=3,  # the honest workers: a refused attacker must not fail the round
        learning_rate=learning_rate,
        max_steps=40,
        local_epochs=5,
        eval_data=setup.eval_path,
        worker_tokens=[*TOKENS, ATTACKER_TOKEN],
        linger_seconds=0.5,
        seed=setup.seed,
        **defence,
    )
    coord = ServedCoordinator(settings)
    workers = make_workers(coord.address, setup.data[:3], run)
    if attack:
        s = WorkerSettings.load(
            dict(
                coordinator=coord.address,
                token=ATTACKER_TOKEN,
                name="attacker",
                data=setup.data[3],
                cache_dir=run / "attacker",
                device="cpu",
                progress=False,
                poll_seconds=2,
                connect_timeout=30,
            )
        )
        workers.append(Byzantine(s, attack, scale, setup.seed))
    try:
        run_to_done(workers)
        coord.wait()
    finally:
        for w in workers:
            w.close()
    store = Store(settings.database_url)
    try:
        rows = store.rounds(1)
        accuracy = [r.test_accuracy if r.test_accuracy is not None else float("nan") for r in rows]
        refused = sum(1 for r in rows for u in store.updates(r.id) if u.status == "rejected")
    finally:
        store.close()
    return accuracy, refused


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--scale", type=float, default=10.0, help="the attack's scale s (default 10)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cells = [(None, "none (mean)")] + [(att, d) for att in ATTACKS for d in DEFENCES]
    results: dict[tuple[str | None, str], list[float]] = {c: [] for c in cells}
    refused: dict[tuple[str | None, str], int] = dict.fromkeys(cells, 0)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=a.seeds * len(cells), desc="federations") as bar:
        for seed in range(a.seeds):
            setup = make_setup(Path(tmp) / f"seed-{seed}", seed)
            for attack, defence in cells:
                acc, ref = federation(setup, attack, DEFENCES[defence], a.rounds, a.scale)
                results[(attack, defence)].append(acc[-1])
                refused[(attack, defence)] += ref
                bar.set_postfix_str(f"{attack or 'clean'} / {defence}: {acc[-1]:.3f}")
                bar.update()
    clean = statistics.mean(results[(None, "none (mean)")])
    lines = [
        "# Byzantine worker: accuracy with and without the defences",
        "",
        f"Command: `python -m bench.byzantine --seeds {a.seeds} --rounds {a.rounds} --scale {a.scale:g}`  ",
        f"Machine: {machine()}; {time.time() - started:.0f} s in all.",
        "",
        f"Four workers (one byzantine) on the generated four-topic data, {a.rounds} rounds, a 1-layer BERT "
        f"(hidden 64) from a config; the coordinator's test accuracy after the last round, mean over "
        f"{a.seeds} seed(s) (300 test examples each; chance is 0.25). Without an attacker (three honest "
        f"workers): **{clean:.3f}**.",
        "",
        "| attack | defence | final accuracy | vs no attacker | updates refused |",
        "|---|---|---|---|---|",
    ]
    for attack, defence in cells[1:]:
        acc = statistics.mean(results[(attack, defence)])
        lines.append(
            f"| {attack} ×{a.scale:g} | {defence} | {acc:.3f} | {acc - clean:+.3f} | {refused[(attack, defence)]} |"
        )
    lines += [
        "",
        "Per seed (final accuracy): "
        + "; ".join(
            f"{attack or 'clean'} / {d}: {', '.join(f'{x:.3f}' for x in results[(attack, d)])}"
            for attack, d in cells
        ),
        "",
    ]
    write_report("byzantine", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
