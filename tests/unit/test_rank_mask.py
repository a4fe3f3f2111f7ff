"""The rank mask (strata.adapters.RankMask): a worker of lower rank than the federation's trains the
truncated adapter, its gradients and AdamW leave the tail alone, and the tail comes back after."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from strata.adapters import RankMask
from strata.layers import block_map, set_trainable
from tests.adapter_models import (
    CAUSAL,
    SEQ_CLS,
    bert,
    factor_tensors,
    inputs,
    lead,
    llama,
    logits,
    merged_by_hand,
    tail,
    wrapped_with_reference,
)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(("builder", "task"), [(bert, SEQ_CLS), (llama, CAUSAL)], ids=["bert", "llama"])
def test_inside_the_mask_the_model_is_the_truncated_adapter(
    builder: Callable[[], torch.nn.Module], task: str, rank: int
) -> None:
    wrapped, base, spec = wrapped_with_reference(builder, task)
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    full = logits(wrapped)
    torch.testing.assert_close(full, logits(merged_by_hand(base, wrapped, spec, spec.rank)))
    truncated = logits(merged_by_hand(base, wrapped, spec, rank))
    assert not torch.allclose(full, truncated, atol=1e-3)  # the tail matters: the test can tell
    with RankMask(wrapped, rank):
        torch.testing.assert_close(logits(wrapped), truncated)
        for name, p in factor_tensors(wrapped).items():
            assert not tail(name, p, rank).any(), name
            assert torch.equal(lead(name, p, rank), lead(name, before[name], rank)), name
    after = dict(wrapped.named_parameters())
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    torch.testing.assert_close(logits(wrapped), full)


def test_gradients_past_the_rank_are_zero_inside_the_mask_and_not_after() -> None:
    wrapped, _, _ = wrapped_with_reference(bert, SEQ_CLS)
    rank = 2
    with RankMask(wrapped, rank):
        wrapped(**inputs()).logits.pow(2).sum().backward()
        for name, p in factor_tensors(wrapped).items():
            assert p.grad is not None
            assert not tail(name, p.grad, rank).any(), name
            assert lead(name, p.grad, rank).abs().sum() > 0, name
    wrapped.zero_grad(set_to_none=True)
    wrapped(**inputs()).logits.pow(2).sum().backward()  # the hooks are gone
    for name, p in factor_tensors(wrapped).items():
        assert p.grad is not None
        assert tail(name, p.grad, rank).abs().sum() > 0, name


def test_adamw_with_weight_decay_leaves_the_tail_zero_until_the_mask_ends() -> None:
    wrapped, _, _ = wrapped_with_reference(bert, SEQ_CLS)
    wrapped.train()
    rank = 2
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    trained = [p for p in wrapped.parameters() if p.requires_grad]
    with RankMask(wrapped, rank):
        optimizer = torch.optim.AdamW(trained, lr=0.05, weight_decay=0.5)
        for _ in range(3):
            optimizer.zero_grad()
            wrapped(**inputs()).logits.pow(2).sum().backward()
            optimizer.step()
            for name, p in factor_tensors(wrapped).items():
                assert not tail(name, p, rank).any(), name
        inside = {n: p.detach().clone() for n, p in factor_tensors(wrapped).items()}
    for name, p in factor_tensors(wrapped).items():
        assert torch.equal(tail(name, p, rank), tail(name, before[name], rank)), name  # restored exactly
        assert torch.equal(lead(name, p, rank), lead(name, inside[name], rank)), name  # trained part kept
        assert not torch.equal(lead(name, p, rank), lead(name, before[name], rank)), name


def test_the_mask_restores_the_tail_when_the_block_raises() -> None:
    wrapped, _, _ = wrapped_with_reference(bert, SEQ_CLS)
    before = {n: p.detach().clone() for n, p in factor_tensors(wrapped).items()}
    with pytest.raises(RuntimeError, match="boom"), RankMask(wrapped, 1):
        raise RuntimeError("boom")
    for name, p in factor_tensors(wrapped).items():
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("rank", [4, 8])
def test_a_mask_at_or_above_the_federations_rank_changes_nothing(rank: int) -> None:
    wrapped, _, _ = wrapped_with_reference(bert, SEQ_CLS)
    before = {n: p.detach().clone() for n, p in factor_tensors(wrapped).items()}
    with RankMask(wrapped, rank) as mask:
        assert mask.saved == [] and mask.hooks == []
        for name, p in factor_tensors(wrapped).items():
            assert torch.equal(p, before[name]), name


def test_the_mask_truncates_adapters_of_blocks_that_do_not_train_this_round() -> None:
    wrapped, base, spec = wrapped_with_reference(bert, SEQ_CLS)
    rank = 2
    set_trainable(wrapped, block_map(wrapped), ["layer.1"])
    with RankMask(wrapped, rank):
        torch.testing.assert_close(logits(wrapped), logits(merged_by_hand(base, wrapped, spec, rank)))
