"""One accepted update of a round, as the coordinator keeps it: who sent it, where its frames are spooled,
what it measured on arrival, and its database row."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class Spooled:
    key: str  # the worker's uid
    path: Path
    num_samples: int
    update_id: int = 0
    name: str = ""  # the worker's name
    norm: float = 0.0  # ‖Δ_k‖ over the whole update
    tensors: frozenset[str] = frozenset()
    sq: dict[str, float] = field(default_factory=dict)  # ‖Δ_k‖² per tensor
    train_loss: float = 0.0
    train_accuracy: float = 0.0
