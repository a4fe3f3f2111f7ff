"""The global model and its published version: the one owner of what workers may download.

A round's aggregation prepares a new version (model weights updated, its files written) as a
`Candidate`; it becomes the published version, with its hash, server residual and optimizer state,
only by `publish`, which the round loop calls after the database transaction that records it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from strata.adapters import LoraSpec
from strata.frames import Expected
from strata.layers import BlockMap
from strata.version import assets_hash


@dataclass
class Candidate:
    """A version written to disk, not yet recorded or visible: what closing a round produced."""

    version: int
    hash: str
    norm: float
    applied: list[str]
    residual: dict[str, torch.Tensor]
    optimizer_state: dict[str, dict[str, torch.Tensor]]
    block_rows: list[dict[str, Any]] = field(default_factory=list)
    tensor_rows: list[dict[str, Any]] = field(default_factory=list)
    alignments: list[dict[str, Any]] = field(default_factory=list)
    noise_floor: float | None = None
    key_weights: list[dict[str, Any]] = field(default_factory=list)  # α per member and key block


@dataclass
class GlobalModel:
    """The model in memory and what has been published of it."""

    model: PreTrainedModel
    tokenizer: Any
    assets: dict[str, bytes]
    bmap: BlockMap
    expected: dict[str, Expected]
    version: int = 0
    hash: str = ""
    hashes: dict[int, str] = field(default_factory=dict)  # every version the federation has had
    residual: dict[str, torch.Tensor] = field(default_factory=dict)  # the server's error feedback
    optimizer_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    lora: LoraSpec | None = None  # a LoRA federation's adapter: only its tensors make up a version

    def initial(self, seed: int) -> dict[str, Any]:
        """The JoinReply fields that let a worker holding the pretrained checkpoint build version 0 itself
        (docs/protocol.md); none in a LoRA federation, whose workers hold their base by its own hash."""
        if self.lora is not None or 0 not in self.hashes:
            return {}
        return {"initial_hash": self.hashes[0], "init_seed": seed, "assets_hash": assets_hash(self.assets)}

    def publish(self, c: Candidate) -> None:
        """Make a recorded candidate the version workers get; call only after its commit."""
        self.residual = c.residual
        self.optimizer_state = c.optimizer_state
        self.hashes[c.version] = c.hash
        self.version, self.hash = c.version, c.hash
