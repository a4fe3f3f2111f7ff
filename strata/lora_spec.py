"""A LoRA federation's adapter as it is recorded and announced (rank, alpha, targets, base model hash), with
no model code: what settings, messages and records need without importing torch (strata.adapters wraps
models with it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: the modules that get an adapter when a federation names none: attention's query and value projections,
#: as in the LoRA paper and peft's own defaults
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "albert": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
}


@dataclass(frozen=True)
class LoraSpec:
    """A federation's adapter. `targets` are module names (suffixes); `modules_to_save` are trained whole."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    base_hash: str = ""
    aggregation: str = "product"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LoraSpec:
        """The spec a federation recorded (``dataclasses.asdict`` of one, as JSON)."""
        return cls(
            int(record["rank"]),
            float(record["alpha"]),
            float(record["dropout"]),
            tuple(record["targets"]),
            tuple(record["modules_to_save"]),
            str(record["base_hash"]),
            str(record["aggregation"]),
        )
