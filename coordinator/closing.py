"""Completing a round that made its quorum: aggregate it into a candidate version (coordinator/aggregation.py),
evaluate the candidate on the coordinator's held-out data, and record the round, its rows and (a private
federation) its ε in one transaction. The federation publishes the candidate once this returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from coordinator.global_model import Candidate
from coordinator.round import Round
from coordinator.updates import Spooled
from strata import failpoints
from strata.modeling import evaluate, perplexity
from strata.storage.models import RoundState

if TYPE_CHECKING:
    from coordinator.federation import Federation


async def complete(
    fed: Federation, r: Round, taken: Sequence[Spooled], started: float
) -> tuple[Candidate, str]:
    """Aggregate, evaluate and record round `r` ( `taken`: the updates refused at close); returns the
    candidate version and the round's log line."""
    s = fed.s
    await asyncio.to_thread(fed.store.set_round_fields, r.db_id, state=RoundState.AGGREGATING.value)
    t0 = time.monotonic()
    c = await asyncio.to_thread(fed.aggregation.close, r, taken)
    agg_seconds = time.monotonic() - t0
    fed.metrics.aggregate_seconds.labels(s.federation).observe(agg_seconds)
    t1 = time.monotonic()
    test_loss = test_acc = None
    if fed.eval_examples:
        test_loss, test_acc = await asyncio.to_thread(
            evaluate, fed.gm.model, fed.gm.tokenizer, fed.eval_examples, s.max_seq_len
        )
    train_loss, train_acc = r.train_metrics()
    dp = await asyncio.to_thread(fed.privacy.closed, r) if fed.privacy else {}
    failpoints.hit("coordinator.round.closing")  # the version is checkpointed, not yet recorded
    await asyncio.to_thread(
        fed.store.close_round,
        r.db_id,
        RoundState.COMPLETED,
        federation_fields=dict(model_version=c.version, model_hash=c.hash),
        block_outcomes=c.block_rows,
        tensor_rows=c.tensor_rows,
        alignments=c.alignments,
        key_weights=c.key_weights,
        noise_floor=c.noise_floor,
        result_version=c.version,
        result_hash=c.hash,
        train_loss=train_loss,
        train_accuracy=train_acc,
        test_loss=test_loss,
        test_accuracy=test_acc,
        update_norm=c.norm,
        aggregate_seconds=agg_seconds,
        eval_seconds=time.monotonic() - t1 if fed.eval_examples else None,
        duration_seconds=time.monotonic() - started,
        **r.traffic(),
        **dp,
    )
    test = "n/a"
    if test_loss is not None and test_acc is not None:
        test = f"perplexity {perplexity(test_loss):.2f}" if fed.causal else f"accuracy {test_acc:.4f}"
    extra = f", applied {', '.join(c.applied)}" if fed.targeting.active else ""
    if "dp_epsilon" in dp:
        extra += f", ε = {dp['dp_epsilon']:.3g} of {s.dp_target_epsilon:g}"
    seconds = time.monotonic() - started
    line = f"round {r.number} done: {len(r.accepted)} update(s), version {c.version}, test {test}, {seconds:.1f}s{extra}"
    return c, line
