"""The coordinator's divergence-aware design settings (docs/methods.md section 10): the model it serves
is given wider feed-forward layers and local attention windows in its early layers before version 0 is
made. The windows are recorded in the model's config, which travels in the assets, so every worker (and
`strata export`) builds the same model; the widening is seeded, so a restart rebuilds the same version 0
shape and the checkpoint fits it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from coordinator.privacy_settings import PrivacySettings
from strata import adapt


class DesignSettings(PrivacySettings):
    """Fields shared by CoordinatorSettings; see the module docstring."""

    ffn_width: float = Field(
        1.0,
        ge=1,
        le=16,
        description="Widen every feed-forward layer of the model by this factor, keeping its function "
        "(Net2Net; BERT-like models; 1: as it is)",
    )
    local_attention_layers: int = Field(
        0,
        ge=0,
        description="Restrict attention to ±local_attention_window tokens in this many early layers (0: none; "
        "BERT-like models)",
    )
    local_attention_window: int = Field(
        0, ge=0, description="Tokens either side a token attends to in the windowed layers"
    )

    @model_validator(mode="after")
    def _check_design(self) -> DesignSettings:
        if bool(self.local_attention_layers) != bool(self.local_attention_window):
            raise ValueError(
                "local_attention_layers and local_attention_window go together: set both, or neither "
                "(see --local-attention-layers, --local-attention-window)"
            )
        if self.lora_rank and (self.ffn_width > 1 or self.local_attention_layers):
            raise ValueError(
                "ffn_width and local attention change the base model, which a LoRA federation's workers hold "
                "themselves: adapt the checkpoint with `strata adapt` and give every member the result"
            )
        return self

    def apply_design(self, model: Any) -> Any:
        """The model as this federation serves it (unchanged with the defaults)."""
        if self.ffn_width > 1:
            adapt.widen_ffn(model, self.ffn_width, seed=self.seed)  # type: ignore[attr-defined]
        if self.local_attention_layers:
            adapt.add_local_attention(model, self.local_attention_layers, self.local_attention_window)
        return model
