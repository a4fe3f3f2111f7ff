"""Response models of the layer-wise divergence routes: the block × round matrix and one round's divergence."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from dashboard_api.schemas import BlockOutcomeOut, _Out

BlockMetric = Literal[
    "divergence",
    "cancelled",
    "energy",
    "spread",
    "score",
    "fedtlu",
    "agreement",
    "update_norm",
    "relative",
    "consensus",
    "lora_discarded",
]
BLOCK_METRICS: tuple[str, ...] = get_args(BlockMetric)


class BlockMatrix(_Out):
    policy: str = Field(description="The federation's layer selection policy.")
    schedule: str = Field(description="pre-selected or server-masked.")
    metric: str = Field(description=f"Which value `values` holds: one of {', '.join(BLOCK_METRICS)}.")
    blocks: list[str] = Field(description="Rows: the model's blocks in model order.")
    rounds: list[int] = Field(description="Columns: completed round numbers, ascending.")
    trained: list[list[bool]] = Field(description="trained[block][round]: workers trained the block.")
    applied: list[list[bool]] = Field(description="applied[block][round]: the block's update was applied.")
    values: list[list[float | None]] = Field(
        description="values[block][round]: the metric, null when unknown."
    )
    noise_floor: list[float | None] = Field(
        description="noise_floor[round]: ρ of independent random updates."
    )
    total_rounds: int = Field(description="Completed rounds with block outcomes, over all pages.")
    offset: int = Field(description="Index of the first round of this page.")
    limit: int = Field(description="Largest number of rounds a page holds.")


class TensorDivergenceOut(_Out):
    tensor: str = Field(description="Parameter name.")
    block: str = Field(description="The block it belongs to.")
    num_elements: int = Field(description="Entries of the tensor.")
    update_norm: float = Field(description="‖Δ̄‖ of its aggregated update.")
    energy: float = Field(description="E = Σ p_k ‖Δ_k‖².")
    spread: float | None = Field(description="V = E − ‖Δ̄‖² (null below two updates).")
    divergence: float | None = Field(description="D = V / (‖Δ̄‖² + ε·E) (null below two updates).")
    cancelled: float | None = Field(description="ρ = V / E (null below two updates).")


class AlignmentOut(_Out):
    name: str = Field(description="Block or tensor name.")
    norm: float = Field(description="‖Δ_k‖ of the worker's update.")
    cosine: float | None = Field(description="cos(Δ_k, Δ̄): 1 when the worker moved with the federation.")


class WorkerDivergenceOut(_Out):
    worker: str = Field(description="Worker name.")
    num_samples: int = Field(description="Samples behind its update (its FedAvg weight).")
    blocks: list[AlignmentOut] = Field(description="Per block, in model order.")
    tensors: list[AlignmentOut] = Field(description="Per tensor, by name (empty unless tensors=true).")


class RoundDivergenceOut(_Out):
    round: int = Field(description="Round number.")
    num_updates: int = Field(description="Accepted updates the measures come from.")
    noise_floor: float | None = Field(description="1 − Σ p_k²: ρ of independent random updates.")
    blocks: list[BlockOutcomeOut] = Field(description="Per block, in model order.")
    tensors: list[TensorDivergenceOut] = Field(description="Per tensor, by name (empty unless tensors=true).")
    workers: list[WorkerDivergenceOut] = Field(description="Per worker: norm and cosine to the mean.")
