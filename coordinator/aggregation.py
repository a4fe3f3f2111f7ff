"""Closing a round: from the accepted updates to a new version on disk (not yet published).

In order: one close pass over the spool (refused updates out of the sums, each worker's ⟨Δ_k, Δ̄⟩, the
robust aggregator's windows); block scores and divergence; the targeting policy decides which blocks
apply; the server optimizer turns the aggregate Δ̄ into the step η·u (docs/methods.md section 7); the
step is encoded for the downstream (with the server's error feedback), applied to the model exactly as
workers will apply it, and written as the version's update file; then the checkpoint, the residual and
the optimizer state of the new version are written, each atomically.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from coordinator import checkpoint
from coordinator.close_pass import close_pass, needs_pass
from coordinator.divergence import RoundDivergence, measure
from coordinator.global_model import Candidate, GlobalModel
from coordinator.key_blocks import KeyAggregate, key_aggregate
from coordinator.round import Round
from coordinator.updates import Spooled
from coordinator.versions import VersionFiles, write_frames
from strata import codec, failpoints, optimizers, tensorfile
from strata.codec import Codec
from strata.frames import add_update, header_of
from strata.modeling import global_tensors
from strata.optimizers import ServerOptimizer
from strata.selection import block_scores
from strata.targeting import BlockOutcome, Targeting
from strata.version import model_hash


@dataclasses.dataclass
class Aggregation:
    """What a federation's rounds close with: its files, policy, optimizer and downstream codec."""

    gm: GlobalModel
    targeting: Targeting
    optimizer: ServerOptimizer
    down_codec: Codec
    versions: VersionFiles
    ckpt_dir: Path
    divergence: bool
    key_blocks: tuple[str, ...] = ()  # kept partly local by member federations (docs/methods.md section 5)
    key_attention: bool = False
    temperature: float = 0.0

    def close(self, r: Round, refused: Sequence[Spooled]) -> Candidate:
        """Aggregate round `r` (its `refused` updates already taken out of the count) into the next version."""
        gm, bmap = self.gm, self.gm.bmap
        accepted = list(r.accepted.values())
        dots: dict[str, dict[str, float]] = {}
        attending = bool(self.key_blocks) and self.key_attention and len(accepted) > 1
        measuring = self.divergence or attending  # attention weighs members by their cosines
        if needs_pass(r.aggregator, refused, measuring, len(accepted)):
            dots = close_pass(r.aggregator, accepted, refused, dots=measuring)
        r.aggregator.finalize()  # a private round's noise: everything below reads the noised sums
        params = dict(gm.model.named_parameters())
        moments = r.sums.moments()
        weight_sq = {
            n: float(torch.dot(params[n].detach().view(-1), params[n].detach().view(-1))) for n in moments
        }
        scores = block_scores(moments, weight_sq, bmap.block_of)
        div = measure(moments, accepted, dots, bmap.block_of) if measuring else None
        key = (
            KeyAggregate()  # a private round publishes no per-member weight; its key blocks are in the sums
            if r.aggregator.private
            else key_aggregate(
                accepted, div, self.key_blocks, bmap, gm.expected, self.key_attention, self.temperature
            )
        )
        applied, outcomes = self.targeting.decide(r.number, r.plan, scores)
        keep = bmap.tensors_of(applied)
        r.sums.drop([n for n in moments if n not in keep])  # scored, not applied (server-masked)
        version = r.base_version + 1
        state = dict(gm.optimizer_state)  # a tensor not applied keeps its state

        def steps() -> Iterator[tuple[str, torch.Tensor]]:
            for name, mean in r.aggregator.result():  # one tensor at a time
                if name in key.means:  # a key block's tensor: the attentive aggregate replaces the mean
                    mean = key.means[name].view_as(mean)
                u, new_state = optimizers.step(self.optimizer, mean, gm.optimizer_state.get(name))
                if new_state:
                    state[name] = new_state
                yield name, u

        h, residual, sq = self._write(version, steps(), keep)
        if self.optimizer.stateful:
            tensorfile.save(
                checkpoint.optimizer_path(self.ckpt_dir, version), optimizers.flatten_state(state)
            )
        c = Candidate(version, h, sq**0.5, applied, residual, state)
        c.block_rows, c.tensor_rows, c.alignments, c.noise_floor = records(gm, outcomes, div, r)
        c.key_weights = key.rows
        return c

    def sync(self, target: dict[str, torch.Tensor]) -> Candidate:
        """The next version set to `target` (a sub-federation taking its parent's version, docs/methods.md
        section 5): the step target − θ of each tensor is encoded, applied and written exactly as a
        round's, so the federation's workers download it as a global update like any other."""
        params = dict(self.gm.model.named_parameters())
        unknown = sorted(set(target) - set(self.gm.expected))
        if unknown:
            raise ValueError(f"the parent's model has tensors this federation's lacks: {unknown[:3]}")
        for name, t in target.items():
            if tuple(t.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"{name}: the parent's shape {tuple(t.shape)} differs from {tuple(params[name].shape)}"
                )

        def steps() -> Iterator[tuple[str, torch.Tensor]]:
            for name in sorted(target):
                yield name, (target[name].double() - params[name].detach().double()).float()

        version = self.gm.version + 1
        h, residual, sq = self._write(version, steps(), set(target))
        state = dict(self.gm.optimizer_state)
        if self.optimizer.stateful and state:
            tensorfile.save(
                checkpoint.optimizer_path(self.ckpt_dir, version), optimizers.flatten_state(state)
            )
        return Candidate(version, h, sq**0.5, [], residual, state)

    def _write(
        self, version: int, steps: Iterator[tuple[str, torch.Tensor]], keep: set[str]
    ) -> tuple[str, dict[str, torch.Tensor], float]:
        """Encode each step u (plus the server's error feedback) for the downstream, add exactly its decoded
        value to the model, write the encodings as `version`'s update file, then its checkpoint and server
        residual; returns the new hash, the residual and ‖sent‖²."""
        gm = self.gm
        params = dict(gm.model.named_parameters())
        lossy = self.down_codec.lossy
        residual: dict[str, torch.Tensor] = {}
        sq = 0.0

        def frames() -> Iterator[tuple[object, list[bytes]]]:
            nonlocal sq
            for i, (name, step) in enumerate(steps):
                u = step
                e = gm.residual.get(name)
                if lossy and e is not None and e.shape == u.shape:
                    u = u + e
                enc, sent = codec.roundtrip(u, self.down_codec)
                if lossy:
                    residual[name] = u - sent
                p = params[name]
                with torch.no_grad():
                    add_update(p, sent)
                if i == 0:
                    failpoints.hit("coordinator.aggregate.applying")  # once a version: the model half updated
                sq += float(sent.double().pow(2).sum())
                yield header_of(name, p, enc), enc.blocks

        write_frames(self.versions.update(version), frames())  # type: ignore[arg-type]
        tensors = global_tensors(gm.model)
        h = model_hash(tensors)
        checkpoint.save(self.ckpt_dir, version, tensors, h)
        # a tensor not stepped keeps the residual it had until it is stepped again
        residual = {n: e for n, e in gm.residual.items() if n not in keep} | residual
        if lossy:
            tensorfile.save(checkpoint.residual_path(self.ckpt_dir, version), residual)
        return h, residual, sq


def records(
    gm: GlobalModel, outcomes: list[BlockOutcome], div: RoundDivergence | None, r: Round
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], float | None]:
    """The rows a completed round adds: per block, per tensor, per worker alignment; the noise floor."""
    bmap = gm.bmap
    blocks = []
    lost: dict[str, list[float]] = {}  # LoRA product aggregation: the share discarded, per block
    for a_name, share in getattr(r.aggregator, "discarded", {}).items():
        lost.setdefault(bmap.block_of[a_name], []).append(share)
    for o in outcomes:
        row = dataclasses.asdict(o) | {"num_elements": bmap.sizes[o.block]}
        if o.block in lost:  # the mean over the block's adapted matrices
            row["lora_discarded"] = sum(lost[o.block]) / len(lost[o.block])
        d = div.blocks.get(o.block) if div else None
        if d is not None:
            row |= dict(energy=d.energy, spread=d.spread, divergence=d.divergence, cancelled=d.cancelled)
        blocks.append(row)
    if div is None:
        return blocks, [], [], None
    numel = {n: math.prod(e.shape) for n, e in gm.expected.items()}
    tensors = [
        dict(
            tensor=name,
            block=bmap.block_of[name],
            num_elements=numel[name],
            update_norm=math.sqrt(d.mean_sq),
            energy=d.energy,
            spread=d.spread,
            divergence=d.divergence,
            cancelled=d.cancelled,
        )
        for name, d in sorted(div.tensors.items())
    ]
    alignments = []
    for uid, wa in div.workers.items():
        update_id = r.accepted[uid].update_id
        for scope, values in (("block", wa.blocks), ("tensor", wa.tensors)):
            for name, (norm, cos) in values.items():
                alignments.append(dict(update_id=update_id, scope=scope, name=name, norm=norm, cosine=cos))
    return blocks, tensors, alignments, div.noise_floor
