"""FedProx on the worker: the proximal term's gradient, its pull toward θ_t, no cost at μ = 0, and DDP."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from strata import synthetic
from strata.data import Example
from strata.layers import block_map, set_trainable
from strata.modeling import load_model, make_tiny_model_dir
from strata.serde import TrainingConfig
from worker import trainer
from worker.trainer import Proximal, train


def _tiny(tmp_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[Example]]:
    examples, _ = synthetic.generate_splits(64, 4, seed=0)
    path = make_tiny_model_dir(
        tmp_path, [e.text for e in examples], synthetic.LABELS, hidden_size=16, num_layers=1, vocab_size=300
    )
    model, tok = load_model(path, synthetic.LABELS)
    return model, tok, examples


def _config(mu: float) -> TrainingConfig:
    return TrainingConfig(max_steps=12, batch_size=8, max_seq_len=24, learning_rate=5e-3, prox_mu=mu)


def _grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    out = []
    for p in params:
        assert p.grad is not None
        out.append(p.grad.clone())
    return out


def test_the_prox_gradient_is_mu_times_the_distance_to_the_pulled_weights() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    net[1].weight.requires_grad_(False)  # frozen: not in the term
    trained = [p for p in net.parameters() if p.requires_grad]
    mu = 0.7
    prox = Proximal(trained, mu)
    with torch.no_grad():  # θ moves away from θ_t, as training would move it
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(5, 4)

    net.zero_grad()
    net(x).pow(2).sum().backward()
    prox.add_gradient()
    ours = _grads(trained)

    net.zero_grad()  # the definition: autograd of F(θ) + μ/2·‖θ − θ_t‖² over the trained tensors
    term = sum(((p - a) ** 2).sum() for p, a in zip(trained, prox.anchor, strict=True))
    (net(x).pow(2).sum() + mu / 2 * term).backward()
    for got, want in zip(ours, _grads(trained), strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got, torch.zeros_like(got))
    assert len(prox.anchor) == len(trained) == 3  # a copy of θ_t for the trained tensors only
    assert net[1].weight.grad is None

    for p in trained:  # the term alone: exactly μ(θ − θ_t)
        p.grad = torch.zeros_like(p)
    prox.add_gradient()
    for p, a, got in zip(trained, prox.anchor, _grads(trained), strict=True):
        assert torch.allclose(got, mu * (p.detach() - a))


def test_a_large_mu_keeps_the_trained_weights_close_to_the_pulled_version(tmp_path: Path) -> None:
    model, tok, examples = _tiny(tmp_path)
    set_trainable(model, block_map(model), ["layer.0", "head"])

    def distance(mu: float) -> float:
        res = train(model, tok, examples, _config(mu), 1, progress=False)
        return sum(float(d.pow(2).sum()) for d in res.delta.values()) ** 0.5

    free, held = distance(0.0), distance(100.0)
    assert held < 0.5 * free, (held, free)
    assert distance(0.0) == free  # the model was handed back at θ_t, and μ = 0 is reproducible


def test_mu_zero_builds_no_proximal_term(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok, examples = _tiny(tmp_path)

    def refuse(*_: object) -> None:
        raise AssertionError("μ = 0 must cost nothing")

    monkeypatch.setattr(trainer, "Proximal", refuse)
    train(model, tok, examples, _config(0.0), 1, progress=False)
    with pytest.raises(AssertionError, match="cost nothing"):
        train(model, tok, examples, _config(0.1), 1, progress=False)


def _rank(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, tok = load_model(Path(model_dir), synthetic.LABELS)
        examples, _ = synthetic.generate_splits(64, 4, seed=0)
        # train() checks that the replicas' weights agree after training (it raises otherwise)
        res = train(model, tok, examples, _config(10.0), 1, progress=False)
        torch.save(res.delta, f"{out}/delta-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_prox_term_keeps_ddp_replicas_identical(tmp_path: Path) -> None:
    examples, _ = synthetic.generate_splits(64, 4, seed=0)
    model_dir = make_tiny_model_dir(
        tmp_path / "model",
        [e.text for e in examples],
        synthetic.LABELS,
        hidden_size=16,
        num_layers=1,
        vocab_size=300,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(model_dir), str(tmp_path)), nprocs=2, join=True)
    d0, d1 = (torch.load(tmp_path / f"delta-{r}.pt") for r in (0, 1))
    assert set(d0) == set(d1) and all(torch.equal(d0[n], d1[n]) for n in d0)
    assert any(float(d.abs().max()) > 0 for d in d0.values())
