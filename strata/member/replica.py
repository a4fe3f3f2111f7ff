"""What a member trains and what one round of its training produced."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from strata.layers import BlockMap, block_map
from strata.modeling import model_from_assets


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What one round of local training produced. ``loss`` and ``accuracy`` are means over the
    predictions made while training: one per example for a classifier, one per predicted token for
    a causal LM (next-token cross-entropy and accuracy)."""

    delta: dict[str, torch.Tensor]
    num_samples: int
    num_steps: int
    loss: float
    accuracy: float
    seconds: float
    local_epsilon: float = 0.0  # local DP-SGD: ε of this member's records so far (0: not private)
    local_delta: float = 0.0
    lora_rank: int = 0  # a LoRA worker that trained a lower rank than its federation's (0: the same)


@dataclass(frozen=True)
class Replica:
    """The model one process trains, on its device, with its tokenizer and block map."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    bmap: BlockMap
    device: str

    @classmethod
    def load(cls, assets: Path, device: str) -> Replica:
        """Build the architecture and tokenizer from the assets the coordinator sent."""
        model, tokenizer = model_from_assets(assets)
        model.to(device)  # type: ignore[arg-type]
        return cls(model, tokenizer, block_map(model), device)
