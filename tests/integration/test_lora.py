"""LoRA federations over real gRPC: only adapters (and a classifier's head) travel, workers hold the base
model by hash, members of different ranks are aggregated exactly (the re-factorised mean of their products),
and `strata export` writes folders that transformers and peft load back to the same model."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator import checkpoint
from coordinator.store import Store
from strata.adapters import pairs, travels
from strata.cli import main as strata_main
from strata.lowrank import factorise
from strata.modeling import global_tensors, load_model
from tests.helpers import ServedCoordinator, coordinator_settings, make_worker_data, make_workers, run_to_done

RANK = 4


def run_lora_federation(tmp_path: Path, model: Path, ranks: dict[str, int], **extra: Any) -> dict[str, Any]:
    """Three BERT workers holding the base model, ranks per worker name; every update they sent, by round."""
    db = f"sqlite:///{tmp_path / 'lora.db'}"
    settings = coordinator_settings(
        tmp_path, db, model, lora_rank=RANK, lora_alpha=8, rounds=2, learning_rate=1e-2, **extra
    )
    coord = ServedCoordinator(settings)
    sent: dict[int, dict[str, Any]] = {}
    workers = make_workers(
        coord.address,
        make_worker_data(tmp_path / "data", 3),
        tmp_path,
        lambda name, task, result: sent.setdefault(task.round, {}).__setitem__(name, result),
        extra={"base_model": str(model)},
    )
    for w in workers:
        w.s.lora_rank = ranks.get(w.s.name, 0)
    try:
        run_to_done(workers)
    finally:
        for w in workers:
            w.close()
    coord.wait()
    return {"db": db, "sent": sent, "settings": settings}


def test_a_lora_federation_sends_adapters_only_and_aggregates_products_exactly(
    tmp_path: Path, tiny_model: Path
) -> None:
    run = run_lora_federation(tmp_path, tiny_model, {"org-2": 2})
    ckpt = tmp_path / "coord" / "checkpoints" / "test"
    v1, v2 = checkpoint.load(ckpt, 1), checkpoint.load(ckpt, 2)
    # a version is the adapters and the classifier's head, nothing of the frozen base
    assert v2 and all(travels(n) for n in v2)
    assert any(".lora_A." in n for n in v2) and any(".modules_to_save." in n for n in v2)
    assert not any("word_embeddings" in n or "attention.self.query.base_layer" in n for n in v2)

    # round 2 from version 1: each adapted matrix is the re-factorised weighted mean of B_k·A_k
    updates = run["sent"][2]
    weights = {name: float(r.num_samples) for name, r in updates.items()}
    ranks = {"org-1": RANK, "org-2": 2, "org-3": RANK}
    modules = pairs(sorted(v1))
    assert modules
    for a_name, b_name in modules.values():
        bs = [(v1[b_name] + updates[k].delta[b_name])[:, : ranks[k]] for k in sorted(updates)]
        as_ = [(v1[a_name] + updates[k].delta[a_name])[: ranks[k]] for k in sorted(updates)]
        want = factorise(bs, as_, [weights[k] for k in sorted(updates)], RANK, seed=0)
        product = v2[b_name].double() @ v2[a_name].double()
        assert torch.allclose(product, want.B.double() @ want.A.double(), atol=1e-5)
        # org-2 trained rank 2: nothing of its update lies past its rank
        assert (
            not updates["org-2"].delta[a_name][2:].any() and not updates["org-2"].delta[b_name][:, 2:].any()
        )
    head = [n for n in v1 if ".modules_to_save." in n]
    total = sum(weights.values())
    for n in head:  # the head is trained whole and averaged as usual
        mean = sum(updates[k].delta[n] * weights[k] for k in updates) / total
        assert torch.allclose(v2[n], v1[n] + mean, atol=1e-5)

    # nothing but adapters crossed the wire: workers held the base model
    full = sum(
        t.numel() * 4 for t in global_tensors(load_model(tiny_model, ["a", "b", "c", "d"])[0]).values()
    )
    store = Store(run["db"])
    rounds = store.rounds(1)
    assert all(r.bytes_down < 0.2 * full * 3 for r in rounds), [r.bytes_down for r in rounds]
    with sqlite3.connect(tmp_path / "lora.db") as c:
        assert dict(c.execute("select name, lora_rank from workers")) == {
            "org-1": None,
            "org-2": 2,
            "org-3": None,
        }
        discarded = c.execute("select lora_discarded from round_blocks where block like 'layer.%'").fetchall()
    assert discarded and all(d is not None and 0 <= d < 1 for (d,) in discarded)


def test_export_writes_a_peft_adapter_and_a_merged_model_that_load_back(
    tmp_path: Path, tiny_model: Path
) -> None:
    import peft
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = run_lora_federation(tmp_path, tiny_model, {})
    out = tmp_path / "export"
    s = run["settings"]
    code = strata_main(
        [
            "export",
            "--out",
            str(out),
            "--federation",
            "test",
            "--database-url",
            run["db"],
            "--data-dir",
            str(s.data_dir),
            "--model",
            str(tiny_model),
        ]
    )
    assert code == 0
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model" / "config.json").is_file()
    tok = AutoTokenizer.from_pretrained(out / "model")
    batch = tok(["the market rallied today", "the team won the match"], return_tensors="pt", padding=True)
    merged = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=4)
    adapted = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        a, b = merged(**batch).logits, adapted(**batch).logits
    assert torch.allclose(a, b, atol=1e-4)
    # and it is the federation's last version: the head it trained, not a fresh one
    v2 = checkpoint.load(s.data_dir / "checkpoints" / "test", 2)
    head = next(n for n in v2 if n.endswith("modules_to_save.default.weight"))
    assert torch.allclose(merged.classifier.weight, v2[head], atol=1e-6)
    assert (
        strata_main(["export", "--out", str(out), "--federation", "test", "--database-url", run["db"]]) == 1
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"lora_targets": "query,nonexistent"}, "lora_targets: nonexistent names no module"),
        ({"lora_aggregation": "product", "aggregation": "median"}, "use lora_aggregation factors"),
    ],
)
def test_a_federation_refuses_adapter_settings_that_cannot_work(
    tmp_path: Path, tiny_model: Path, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        s = coordinator_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", tiny_model, lora_rank=4, **extra)
        ServedCoordinator(s)


def instruction_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """Prompt/response pairs with a rule to learn: the response repeats the prompt's last word, twice."""
    import random

    rng = random.Random(seed)
    words = ["red", "blue", "green", "apple", "river", "stone", "cloud", "music", "paper", "light"]
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(words) for _ in range(4))
        last = prompt.split()[-1]
        out.append({"prompt": f"echo: {prompt}", "response": f"{last} {last}"})
    return out


def test_an_instruction_federation_on_llama_downloads_the_base_once_and_lowers_perplexity(
    tmp_path: Path,
) -> None:
    import json

    from strata.modeling import make_tiny_causal_model_dir
    from worker import base_download

    pairs_ = instruction_pairs(200, seed=0)
    texts = [p["prompt"] + " " + p["response"] + " ### user assistant" for p in pairs_]
    model = make_tiny_causal_model_dir(
        tmp_path / "llama",
        texts,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        vocab_size=300,
        max_len=32,
        family="llama",
    )
    data = []
    for k in range(3):
        folder = tmp_path / "data" / f"org-{k + 1}"
        folder.mkdir(parents=True)
        rows = pairs_[k * 50 : (k + 1) * 50]
        (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        data.append(folder)
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs_[150:]))
    db = f"sqlite:///{tmp_path / 'instruct.db'}"
    settings = coordinator_settings(
        tmp_path,
        db,
        model,
        task="instruction",
        labels=None,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.0,
        rounds=3,
        learning_rate=1e-2,
        max_steps=8,
        eval_data=tmp_path / "eval.jsonl",
    )
    coord = ServedCoordinator(settings)
    workers = make_workers(coord.address, data, tmp_path)
    try:
        run_to_done(workers)
    finally:
        for w in workers:
            w.close()
    coord.wait()
    store = Store(db)
    losses = [r.test_loss for r in store.rounds(1)]
    assert len(losses) == 3 and all(x is not None for x in losses)
    assert losses[-1] < losses[0], losses  # held-out response perplexity falls
    spec = workers[0].spec
    assert spec is not None and spec.targets == ("q_proj", "v_proj") and spec.modules_to_save == ()
    for w in workers:  # each worker downloaded the base into its cache, checked by hash
        cached = tmp_path / w.s.name / "base" / spec.base_hash[:32]
        assert (cached / "model.safetensors").is_file() and (
            cached / ".complete"
        ).read_text() == spec.base_hash
        # a second start finds it there: no coordinator is asked (the client is not even used)
        assert base_download.resolve(None, "", spec.base_hash, tmp_path / w.s.name, None) == cached  # type: ignore[arg-type]
