"""Running bench.lora's federations and reading them back: one flat federation (a real coordinator on
127.0.0.1 with its SQLite database, workers in threads of this process, each with its own settings), its
rows read back from the database, the bytes its Prometheus counter saw, the base files each worker
downloaded; the distance of a new version's adapters from the exact mean of its members' products; one
worker's training alone in a child process for its peak memory (`python -m bench.lora_runs probe JSON`);
the instruction data and tiny LLaMA of study 3; and the numbers the report derives from a run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.worldlm_run import Node, coordinator_values, drop_none, proc_status, token
from coordinator import checkpoint
from coordinator.settings import CoordinatorSettings
from strata.adapters import LoraSpec, pairs
from strata.data import Example
from strata.modeling import evaluate, load_model, make_tiny_causal_model_dir, model_inputs
from tests.helpers import ServedCoordinator, run_to_done, worker_values

MB = 1e6

# ---------------------------------------------------------------------------------------- one federation


def run_fed(
    name: str,
    dirs: list[Path],
    eval_data: Path,
    common: dict[str, Any],
    extra: dict[str, Any],
    work: Path,
    per_worker: list[dict[str, Any]] | None = None,
    capture: bool = False,
) -> dict[str, Any]:
    """Run one flat federation to its end (every worker in every round); its rounds, accepted updates,
    discarded energy, bytes, and with `capture` each worker's sent factor deltas per round."""
    from worker.runner import Worker
    from worker.settings import WorkerSettings

    started = time.monotonic()
    timeout = float(common["round_timeout"]) * (int(common["rounds"]) + 1)
    node = Node(name, data=dirs, eval_data=eval_data, extra=extra)
    values = coordinator_values(node, None, work, common, "127.0.0.1:0")
    coord = ServedCoordinator(CoordinatorSettings.load(drop_none(values)))
    sent: dict[int, dict[str, dict[str, Any]]] = {}

    def keep(who: str, task: Any, res: Any) -> None:
        factors = {n: t.clone() for n, t in res.delta.items() if ".lora_A." in n or ".lora_B." in n}
        sent.setdefault(task.round, {})[who] = dict(
            version=task.model_version, weight=float(res.num_samples), rank=res.lora_rank, delta=factors
        )

    workers: list[Any] = []
    try:
        for k, d in enumerate(dirs):
            v = worker_values(coord.address, token(d.name), d.name, d, work / "workers") | dict(
                eval_fraction=0.0, poll_seconds=1, connect_timeout=600
            )
            hook = (lambda task, res, who=d.name: keep(who, task, res)) if capture else None
            workers.append(Worker(WorkerSettings.load(v | (per_worker[k] if per_worker else {})), hook))
        run_to_done(workers, timeout=timeout)
        coord.wait(timeout)
    finally:
        for w in workers:
            w.close()
        if coord.thread.is_alive():
            coord.stop()
    registry = coord.server.runner.metrics.registry
    sent_total = registry.get_sample_value("strata_bytes_sent_total", {"federation": name})
    out = read_db(work / name / "strata.db")
    states = [r["state"] for r in out["rounds"]]
    if states != ["completed"] * int(common["rounds"]):
        raise RuntimeError(f"federation {name}: rounds {states}, expected {common['rounds']} completed")
    out |= dict(
        seconds=time.monotonic() - started,
        bytes_sent_counter=int(sent_total or 0),
        base_cached=[cached_base_bytes(work / "workers" / d.name) for d in dirs],
    )
    if capture:
        out["distance"] = product_distance(work / name / "checkpoints" / name, sent)
    return out


def read_db(db: Path) -> dict[str, Any]:
    """The federation's rounds rows, its accepted updates per round, the mean lora_discarded over the
    round's blocks, its travelling parameters and its recorded adapter (None: full fine-tuning)."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.row_factory = sqlite3.Row
        rows = c.execute(
            "select number, state, bytes_up, bytes_down, raw_bytes_up, raw_bytes_down, test_loss, "
            "test_accuracy, train_loss, num_updates, duration_seconds as seconds from rounds order by number"
        )
        rounds = [dict(r) for r in rows]
        ups = c.execute(
            "select r.number, w.name, w.lora_rank, u.bytes, u.raw_bytes, u.train_seconds, u.num_steps "
            "from updates u join rounds r on r.id = u.round_id join workers w on w.id = u.worker_id "
            "where u.status = 'accepted' order by r.number, w.name"
        ).fetchall()
        lost = c.execute(
            "select r.number, avg(b.lora_discarded) from round_blocks b join rounds r on r.id = b.round_id "
            "where b.lora_discarded is not null group by r.number"
        ).fetchall()
        fed = c.execute("select num_parameters, config from federations").fetchone()
    for r in rounds:
        mine = [u for u in ups if u["number"] == r["number"]]
        r["updates"] = [dict(u) for u in mine]
    discarded = dict(lost)
    config = json.loads(fed["config"]) if isinstance(fed["config"], str) else fed["config"]
    return dict(
        rounds=rounds,
        discarded=[discarded.get(r["number"]) for r in rounds],
        travelling=int(fed["num_parameters"]),
        lora=config.get("lora"),
    )


def cached_base_bytes(folder: Path) -> int:
    """The bytes of the base model files a worker downloaded into its cache (0: it held the base)."""
    return sum(p.stat().st_size for p in folder.glob("base/*/*") if p.is_file() and p.name != ".complete")


def product_distance(ckpt: Path, sent: dict[int, dict[str, dict[str, Any]]]) -> list[float | None]:
    """Per round: ‖B'A' − P̄‖² / ‖P̄‖², mean over adapted matrices, where B'A' is the new version's
    product and P̄ the sample-weighted mean of the members' products B_k·A_k at the rank each trained
    (its factors: the round's base version plus its sent deltas, truncated to its rank). Product
    aggregation's value is the share its SVD truncation discards; factor averaging's is its error."""
    out: list[float | None] = []
    for rnd in sorted(sent):
        members = list(sent[rnd].values())
        v = members[0]["version"]
        base, new = checkpoint.load(ckpt, v), checkpoint.load(ckpt, v + 1)
        errs = []
        for a, b in pairs(sorted(base)).values():
            target = torch.zeros(base[b].shape[0], base[a].shape[1], dtype=torch.float64)
            total = 0.0
            for m in members:
                if a not in m["delta"]:
                    continue
                r = m["rank"] or base[a].shape[0]
                bk = (base[b] + m["delta"][b])[:, :r].double()
                ak = (base[a] + m["delta"][a])[:r].double()
                target += m["weight"] * (bk @ ak)
                total += m["weight"]
            if total:
                target /= total
                got = new[b].double() @ new[a].double()
                errs.append(float((got - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30)))
        out.append(sum(errs) / len(errs) if errs else None)
    return out


# ---------------------------------------------------------------------------------------- memory probe


def probe_memory(
    model: Path, data: Path, labels: list[str], task: str, lora: dict[str, Any] | None, cfg: dict[str, Any]
) -> dict[str, Any]:
    """One worker's round of training alone in a child process: its RSS with the model loaded, its peak
    during training, seconds per step. `lora`: the federation's recorded adapter (None: the whole model)."""
    spec = dict(model=str(model), data=str(data), labels=labels, task=task, lora=lora, **cfg)
    cmd = [sys.executable, "-m", "bench.lora_runs", "probe", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe exited with {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _probe(spec: dict[str, Any]) -> dict[str, Any]:
    from strata.data import read_examples
    from strata.instruct import read_chats
    from strata.layers import block_map
    from strata.member.replica import Replica
    from strata.serde import RoundTask, TrainingConfig
    from worker.large_models import adapted_replica
    from worker.trainer import train_round

    torch.set_num_threads(int(spec["threads"]))
    labels, task, model = spec["labels"], spec["task"], Path(spec["model"])
    path = Path(spec["data"]) / "train.jsonl"
    examples = read_chats(path) if task == "instruction" else read_examples(path, labels or None)
    if spec["lora"]:  # as a worker of the federation builds its replica (worker/large_models.py)
        replica = adapted_replica(model, LoraSpec.from_record(spec["lora"]), labels, task, "cpu")
    else:
        net, tok = load_model(model, labels, seed=0, task=task)
        replica = Replica(net, tok, block_map(net), "cpu")
    gc.collect()
    loaded = proc_status(os.getpid()).get("VmRSS", float("nan"))
    try:  # reset the peak (VmHWM) to the current RSS: the peak below is training's, not loading's
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    config = TrainingConfig(
        local_epochs=1000, max_steps=int(spec["steps"]), batch_size=int(spec["batch"]),
        learning_rate=float(spec["lr"]), max_seq_len=int(spec["max_len"]), seed=0,
    )  # fmt: skip
    rt = RoundTask(1, 0, "", time.time() + 3600, config, "fp32", 1)
    with tempfile.TemporaryDirectory() as tmp:
        res = train_round(replica, examples, rt, None, Path(tmp), "probe")
    peak = proc_status(os.getpid()).get("VmHWM", float("nan"))
    trainable = sum(p.numel() for p in replica.model.parameters() if p.requires_grad)
    return dict(loaded_mib=loaded, peak_mib=peak, peak_reset=reset, seconds=res.seconds, steps=res.num_steps,
                trainable=trainable, threads=int(spec["threads"]))  # fmt: skip


# ---------------------------------------------------------------------------------------- study 3: data

WORDS = (
    "good", "bad", "movie", "story", "funny", "actor", "music", "film", "great", "dull", "heart", "light",
    "life", "love", "time", "world", "smart", "dark", "sweet", "slow", "young", "old", "long", "short",
    "new", "true", "best", "fun", "cast", "plot", "war", "city",
)  # fmt: skip
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
#: operation type: (the instruction, the response as a function of the words)
OPS: dict[str, tuple[str, Any]] = {
    "reverse": ("reverse the words:", lambda w: " ".join(reversed(w))),
    "sort": ("sort the words:", lambda w: " ".join(sorted(w))),
    "repeat": ("repeat twice:", lambda w: " ".join(w + w)),
    "count": ("count the words:", lambda w: NUMBERS[len(w)]),
    "first": ("first word of:", lambda w: w[0]),
    "last": ("last word of:", lambda w: w[-1]),
}


def pair(op: str, rng: random.Random) -> dict[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    instruction, rule = OPS[op]
    return {"prompt": f"{instruction} {' '.join(words)}", "response": rule(words)}


def worker_ops(k: int, per: int) -> list[str]:
    """Worker k's operation types: `per` consecutive ones of OPS, starting at the k-th (cyclic)."""
    names = list(OPS)
    return [names[(k + j) % len(names)] for j in range(per)]


def instruct_data(
    root: Path, workers: int, per_ops: int, examples: int, test: int, seed: int
) -> dict[str, Any]:
    """Per worker `examples` pairs of its operation types (drawn in turn), a held-out file of `test`
    pairs over every type (in turn), no held-out prompt in any worker's data."""
    rng = random.Random(seed)
    held = [pair(op, rng) for _, op in zip(range(test), list(OPS) * test, strict=False)]
    seen = {p["prompt"] for p in held}
    dirs, ops = [], []
    for k in range(workers):
        mine = worker_ops(k, per_ops)
        rows: list[dict[str, str]] = []
        while len(rows) < examples:
            p = pair(mine[len(rows) % len(mine)], rng)
            if p["prompt"] not in seen:
                rows.append(p)
        folder = root / f"org-{k + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs.append(folder)
        ops.append(mine)
    test_file = root / "heldout.jsonl"
    test_file.write_text("".join(json.dumps(r) + "\n" for r in held))
    return dict(dirs=dirs, ops=ops, test=test_file, pairs=held)


def tiny_llama(
    root: Path, texts: list[str], pairs_: list[dict[str, str]], size: dict[str, int], max_len: int, seed: int
) -> Path:
    """A LLaMA-architecture causal LM from a config, its WordPiece tokenizer trained on `texts` and
    the instruction pairs (with the chat template's words)."""
    vocab = texts + [f"{p['prompt']} {p['response']} ### user assistant system" for p in pairs_]
    return make_tiny_causal_model_dir(
        root / "llama", vocab, seed=seed, hidden_size=size["hidden"], num_layers=size["layers"],
        num_heads=size["heads"], vocab_size=size["vocab"], max_len=max_len, family="llama",
    )  # fmt: skip


def pretrain(model_dir: Path, out: Path, texts: list[str], steps: int, batch: int, lr: float,
             max_len: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Central pretraining, whole model, next-token loss on generic text: `steps` AdamW steps over
    shuffled `texts`; the model is written to `out`. Returns its first and last losses (mean of 10)."""
    model, tok = load_model(model_dir, [], seed=seed, task="causal-lm")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    losses: list[float] = []
    started = time.monotonic()
    model.train()
    for _ in range(steps):
        batch_ex = [Example(t, -1) for t in rng.sample(texts, batch)]
        enc, labels = model_inputs("causal-lm", tok, batch_ex, max_len, "cpu")
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    head, tail = losses[:10], losses[-10:]
    return dict(steps=steps, batch=batch, lr=lr, first_loss=sum(head) / max(len(head), 1),
                last_loss=sum(tail) / max(len(tail), 1), seconds=time.monotonic() - started)  # fmt: skip


def eval_instruct(model_dir: Path, test: Path, max_len: int) -> tuple[float, float]:
    """Held-out response loss and token accuracy of a model as it is (round 0: the base, no adapter),
    with the function the coordinator evaluates its versions with."""
    from strata.instruct import read_chats

    model, tok = load_model(model_dir, [], task="instruction")
    return evaluate(model, tok, read_chats(test), max_len)


# -------------------------------------------------------------------------------- numbers for the report


def num(x: float | None, spec: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def size(n: float | None) -> str:
    """Bytes as kB / MB, three significant digits."""
    return "–" if n is None else "0" if n == 0 else f"{n / MB:.3g} MB" if n >= MB else f"{n / 1e3:.3g} kB"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.3g}×"


def params(n: int | None) -> str:
    return f"{n:,}" if n else "?"


def mean(xs: list[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return sum(got) / len(got) if got else None


def per_worker(rec: dict[str, Any]) -> dict[str, Any]:
    """A run's bytes per worker per round from its rounds rows (every worker takes part in every round),
    round 1 apart; everything the coordinator sent before round 2 opened (its Prometheus counter less
    the bytes_down of rounds 2+) per worker, i.e. round 1 including any base model download; what it
    sent while no round was open; the base bytes in the workers' caches (mean)."""
    rows = rec["rounds"]
    n = max(rows[0]["num_updates"], 1)
    later = rows[1:]
    return dict(
        up1=rows[0]["bytes_up"] / n,
        down1=rows[0]["bytes_down"] / n,
        up=mean([r["bytes_up"] / max(r["num_updates"], 1) for r in later]),
        down=mean([r["bytes_down"] / max(r["num_updates"], 1) for r in later]),
        before2=(rec["bytes_sent_counter"] - sum(r["bytes_down"] for r in later)) / n,
        outside=rec["bytes_sent_counter"] - sum(r["bytes_down"] for r in rows),
        cached=mean(rec["base_cached"]),
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        print(json.dumps(_probe(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m bench.lora_runs probe JSON")
