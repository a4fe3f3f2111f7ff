"""Local DP-SGD on a worker (worker/local_dp.py): per-example clipping as Opacus applies it through our
wrapper, Poisson batches, the ledger and its ε, the budget, and the model left as it was found."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from strata import accountant, synthetic
from strata.modeling import load_model, make_tiny_model_dir
from strata.serde import TrainingConfig
from worker.errors import WorkerError
from worker.local_dp import Ledger, LocalDPConfig, PrivateSteps, poisson_batches
from worker.trainer import train


def _cfg(tmp_path: Path, **kw: float) -> LocalDPConfig:
    values = dict(noise_multiplier=1.0, max_grad_norm=0.5, delta=1e-5, target_epsilon=0.0) | kw
    return LocalDPConfig(ledger=tmp_path / "ledger.json", **values)  # type: ignore[arg-type]


def test_the_wrapped_optimizer_clips_each_example_and_divides_by_the_expected_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 1, 0, 1])
    params = list(net.parameters())
    per_example = []
    for i in range(5):  # by hand: each example's gradient of its own loss, clipped to C
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        g = [p.grad.clone() for p in params]  # type: ignore[union-attr]
        norm = torch.sqrt(torch.stack([t.pow(2).sum() for t in g]).sum())
        per_example.append([t * min(1.0, 0.05 / float(norm)) for t in g])
    config = TrainingConfig(batch_size=5, max_steps=1)
    steps = PrivateSteps(_cfg(tmp_path, noise_multiplier=1e-9, max_grad_norm=0.05), 10, config, 1, False, 1)
    assert steps.rate == 0.5 and steps.expected == 5
    module, opt = steps.wrap(net, torch.optim.SGD(params, lr=1.0))
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(module(x), y).backward()
    opt.step()
    for k, p in enumerate(params):
        want = sum(g[k] for g in per_example) / 5  # Σ clip(g_i) / expected batch (noise negligible here)
        torch.testing.assert_close(before[k] - p.detach(), want, atol=1e-6, rtol=1e-4)
    steps.unwrap()
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in params)


def test_poisson_batches_sample_each_record_with_the_rate() -> None:
    gen = torch.Generator().manual_seed(3)
    sizes = [len(b) for b in poisson_batches(list(range(200)), 0.1, 400, gen)]
    assert len(sizes) == 400
    assert sum(sizes) / 400 == pytest.approx(20, rel=0.05)
    assert min(sizes) < 20 < max(sizes), "a Poisson batch's size varies"


def test_a_private_round_reports_the_ledgers_epsilon_and_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    examples, _ = synthetic.generate_splits(64, 4, seed=0)
    path = make_tiny_model_dir(
        tmp_path, [e.text for e in examples], synthetic.LABELS, hidden_size=16, num_layers=1, vocab_size=300
    )
    model, tok = load_model(path, synthetic.LABELS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainingConfig(max_steps=6, batch_size=8, max_seq_len=24, learning_rate=5e-3)
    cfg = _cfg(tmp_path)
    first = train(model, tok, examples, config, 1, progress=False, local_dp=cfg)
    second = train(model, tok, examples, config, 2, progress=False, local_dp=cfg)
    q = 8 / len(examples)
    assert first.num_steps == 6 and first.local_delta == 1e-5
    assert first.local_epsilon == pytest.approx(accountant.epsilon([(q, 1.0)] * 6, 1e-5))
    assert second.local_epsilon == pytest.approx(accountant.epsilon([(q, 1.0)] * 12, 1e-5))
    assert Ledger(cfg.ledger).rounds == [(q, 1.0, 6), (q, 1.0, 6)], "the ledger survives on disk"
    assert any(float(d.abs().max()) > 0 for d in first.delta.values())
    for n, p in model.named_parameters():  # the global version again, and no Opacus hooks left behind
        assert torch.equal(p.detach(), before[n])
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
    plain = train(model, tok, examples, config, 3, progress=False)
    assert plain.local_epsilon == 0.0


def test_the_budget_and_fedprox_are_refused_before_training(tmp_path: Path) -> None:
    config = TrainingConfig(batch_size=8, max_steps=10)
    cfg = _cfg(tmp_path, target_epsilon=1.0)
    with pytest.raises(WorkerError, match="local DP-SGD budget: round 4"):
        PrivateSteps(cfg, 64, config, 10, False, 4)
    with pytest.raises(WorkerError, match="FedProx"):
        PrivateSteps(_cfg(tmp_path), 64, TrainingConfig(prox_mu=0.1), 10, False, 1)
    with pytest.raises(WorkerError, match="torchrun"):
        PrivateSteps(_cfg(tmp_path), 64, config, 10, True, 1)
