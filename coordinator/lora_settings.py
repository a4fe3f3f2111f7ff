"""The coordinator's settings for a LoRA federation (docs/lora.md): the adapter every worker trains, fixed
when the federation is created, and how the members' adapters are combined."""

from __future__ import annotations

from pydantic import Field, model_validator

from coordinator.wire_settings import WireSettings
from strata.names import ALL_LINEAR
from strata.names import LORA_AGGREGATIONS as AGGREGATIONS


class LoraSettings(WireSettings):
    """Fields shared by CoordinatorSettings; see the module docstring."""

    lora_rank: int = Field(
        0,
        ge=0,
        le=4096,
        description="LoRA federation: the adapter rank r; only adapters (and a classifier's head) train and "
        "travel, workers hold the base model (0: full fine-tuning; docs/lora.md)",
    )
    lora_alpha: float = Field(16.0, gt=0, description="LoRA: alpha; the adapter's scale is alpha / rank")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA: dropout on the adapter's input")
    lora_targets: str = Field(
        "",
        description="LoRA: comma-separated module names that get an adapter (empty: the family's default, e.g. "
        f"query,value for BERT, q_proj,v_proj for LLaMA; {ALL_LINEAR}: every linear layer)",
    )
    lora_aggregation: str = Field(
        "product",
        description="LoRA: product (the weighted mean of each member's B·A, re-factorised to rank r by SVD: "
        "exact across ranks) or factors (A and B averaged separately, as plain FedAvg does)",
    )

    def lora_target_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    def lora_conflicts(self) -> list[str]:
        """Why these settings cannot run a LoRA federation (empty: they can)."""
        if not self.lora_rank:
            return []
        why = []
        if getattr(self, "parent", "") or getattr(self, "local_blocks", "").strip():
            why.append("a federation of federations (parent, local_blocks) does not run LoRA adapters yet")
        if self.lora_aggregation == "product":
            rule = "combines whole updates (each member's B·A), so use lora_aggregation factors with {}"
            if getattr(self, "aggregation", "mean") != "mean":
                why.append(
                    "aggregation " + getattr(self, "aggregation", "") + ": product " + rule.format("it")
                )
            if getattr(self, "dp", False):
                why.append(
                    "dp: the noise is calibrated to the sum of the factors' updates; product "
                    + rule.format("dp")
                )
            if (
                getattr(self, "server_optimizer", "fedavg") != "fedavg"
                or getattr(self, "server_lr", 1.0) != 1.0
            ):
                why.append(
                    "server_optimizer: product replaces the adapters by the re-factorised mean; use fedavg with "
                    "server_lr 1, or lora_aggregation factors with a server optimizer"
                )
        return why

    @model_validator(mode="after")
    def _check_lora(self) -> LoraSettings:
        if self.lora_aggregation not in AGGREGATIONS:
            raise ValueError(
                f"lora_aggregation: unknown {self.lora_aggregation!r}; valid: {', '.join(AGGREGATIONS)}"
            )
        why = self.lora_conflicts()
        if why:
            raise ValueError("lora_rank: " + "; ".join(why))
        return self
