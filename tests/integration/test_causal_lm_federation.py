"""The same federation machinery serving a causal language model: a tiny GPT-2, plain-text worker data,
targeted blocks, perplexity falling over rounds and reported by the REST API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coordinator.store import Store
from dashboard_api.app import create_app
from strata import synthetic
from strata.layers import block_map
from strata.modeling import load_model, make_tiny_causal_model_dir
from tests.helpers import ServedCoordinator, coordinator_settings, make_workers, run_to_done


def write_text(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.mark.parametrize("policy", ["full", "agreement"])
def test_a_causal_lm_federation_lowers_perplexity(tmp_path: Path, policy: str) -> None:
    train, test = synthetic.generate_splits(240, 40, seed=3)
    texts = [e.text for e in train]
    model_dir = make_tiny_causal_model_dir(
        tmp_path / "gpt2", texts, hidden_size=32, num_layers=2, num_heads=2, vocab_size=600, max_len=32
    )
    data = []
    for k in range(3):
        write_text(tmp_path / "data" / f"org-{k + 1}" / "train.jsonl", texts[k * 80 : (k + 1) * 80])
        data.append(tmp_path / "data" / f"org-{k + 1}")
    write_text(tmp_path / "eval.jsonl", [e.text for e in test])
    db = f"sqlite:///{tmp_path / 'lm.db'}"
    targeted = dict(policy="agreement", blocks=1, probe_every=0) if policy == "agreement" else {}
    settings = coordinator_settings(
        tmp_path,
        db,
        model_dir,
        task="causal-lm",
        labels=None,
        rounds=3,
        eval_data=tmp_path / "eval.jsonl",
        learning_rate=3e-3,
        max_steps=6,
        **targeted,
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
    fed = store.get_or_create_federation("test")
    assert fed.task_kind == "causal-lm" and fed.state == "completed"
    rounds = store.rounds(fed.id)
    assert [r.state for r in rounds] == ["completed"] * 3
    with TestClient(create_app(db)) as api:
        out = api.get("/api/v1/federations/test/rounds").json()["items"]
        ppl = [r["test_perplexity"] for r in out]
        assert all(
            math.isclose(p, math.exp(r["test_loss"]), rel_tol=1e-9) for p, r in zip(ppl, out, strict=True)
        )
        assert ppl[-1] < ppl[0], f"perplexity did not fall: {ppl}"
        assert ppl[0] < 600  # below a uniform guess over the vocabulary
    if policy == "agreement":
        bmap = block_map(load_model(model_dir, [], task="causal-lm")[0])
        assert bmap.names[:3] == ["embeddings", "layer.0", "layer.1"]
        assert rounds[0].blocks == bmap.names and rounds[0].probe
        assert len(rounds[1].blocks or []) < len(bmap.names)
