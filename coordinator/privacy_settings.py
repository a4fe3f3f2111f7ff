"""The coordinator's differential-privacy settings (docs/methods.md section 6, docs/privacy.md).

User-level DP-FedAvg over this federation's members: each accepted update clipped to L2 norm S, equal
weights, Gaussian noise N(0, (z·S)²) on the sum, the sum divided by the expected number of participants;
an accountant composes the rounds into an (ε, δ) and the federation stops before a round whose release
would exceed the target ε. Settings that would break the sensitivity bound or publish per-member data
the mechanism does not cover are refused here, with the setting named.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from coordinator.tree_settings import TreeSettings


class PrivacySettings(TreeSettings):
    """Fields shared by CoordinatorSettings; see the module docstring."""

    dp: bool = Field(
        False,
        description="User-level differential privacy of the released models (DP-FedAvg): clipped updates, equal "
        "weights, calibrated Gaussian noise, an (ε, δ) per round and a budget (docs/privacy.md)",
    )
    dp_noise_multiplier: float = Field(
        1.0, gt=0, description="z: the noise on the sum of clipped updates has standard deviation z·S"
    )
    dp_clip: float = Field(
        1.0,
        gt=0,
        description="S: every update is scaled to at most this L2 norm (with dp_adaptive_clip, the first round's S)",
    )
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee")
    dp_target_epsilon: float = Field(
        0.0,
        ge=0,
        description="The budget: no round opens whose release would take ε past this (required with dp)",
    )
    dp_sampling_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="q: each online member takes part in a round with this probability, independently (Poisson "
        "sampling, which the accountant assumes; 1: every member every round)",
    )
    dp_adaptive_clip: bool = Field(
        False,
        description="Adaptive clipping (Andrew et al., 2021): S follows the dp_target_quantile of the update norms, "
        "from a noised count of unclipped updates whose cost is inside the same ε",
    )
    dp_target_quantile: float = Field(
        0.5, gt=0, lt=1, description="γ: the share of updates adaptive clipping aims to leave unclipped"
    )
    dp_clip_lr: float = Field(
        0.2, gt=0, le=10, description="η_C: the geometric step of adaptive clipping, S ← S·exp(−η_C·(b̄ − γ))"
    )
    dp_count_noise: float = Field(
        0.0,
        ge=0,
        description="σ_b: noise on the count of unclipped updates (0: max(m/20, z/(2·√0.1)), m the expected "
        "participants); must exceed z/2",
    )

    def privacy_conflicts(self) -> list[str]:
        """What in these settings is incompatible with dp (empty when dp is off or nothing is)."""
        if not self.dp:
            return []
        s = self
        why = []
        if not s.dp_target_epsilon:
            why.append("dp_target_epsilon: dp needs a budget, e.g. --dp-target-epsilon 8")
        aggregation = getattr(s, "aggregation", "mean")  # the coordinator's own fields, defined after these
        if aggregation != "mean":
            why.append(
                f"aggregation {aggregation!r}: a robust aggregator's output is not a sum of clipped "
                "updates, so the noise does not cover it; dp needs aggregation mean"
            )
        if getattr(s, "max_norm_ratio", 0):
            why.append(
                "max_norm_ratio: refusing updates by the round's median norm lets one member change which others "
                "count; clipping already bounds every update (set it to 0)"
            )
        if getattr(s, "max_update_norm", 0):
            why.append("max_update_norm: with dp every update is clipped to dp_clip instead (set it to 0)")
        if getattr(s, "workers_per_round", 0) or getattr(s, "over_selection", 0):
            why.append(
                "workers_per_round / over_selection: dp samples members with dp_sampling_rate (Poisson), the "
                "sampling the accountant assumes; set workers_per_round 0 and over_selection 0"
            )
        if getattr(s, "min_updates", 1) > 1:
            why.append(
                "min_updates: a dp round releases its noised aggregate however many updates arrived (a quorum "
                "would reveal how many did); leave min_updates at 1"
            )
        if getattr(s, "policy", "full") == "agreement":
            why.append(
                "policy agreement: it scores blocks from the members' individual update energies, which the "
                "noise does not cover; use full, random or fedtlu"
            )
        if s.local_blocks.strip() and s.key_aggregation == "attention":
            why.append(
                "key_aggregation attention: it weighs members by their own updates' cosines, which the noise "
                "does not cover; use key_aggregation mean"
            )
        return why

    @model_validator(mode="after")
    def _check_privacy(self) -> PrivacySettings:
        why = self.privacy_conflicts()
        if why:
            raise ValueError("dp: " + "; ".join(why))
        if self.dp:
            from strata.accountant import epsilon  # dp-accounting loads only for a private federation

            first = epsilon([(self.dp_sampling_rate, self.dp_noise_multiplier)], self.dp_delta)
            if first > self.dp_target_epsilon:
                raise ValueError(
                    f"dp_target_epsilon: one round at z = {self.dp_noise_multiplier:g}, q = {self.dp_sampling_rate:g} "
                    f"already spends ε = {first:.3g} > {self.dp_target_epsilon:g}; raise dp_noise_multiplier, "
                    "lower dp_sampling_rate or raise the budget"
                )
            if (
                self.dp_adaptive_clip
                and self.dp_count_noise
                and self.dp_count_noise <= self.dp_noise_multiplier / 2
            ):
                raise ValueError(
                    f"dp_count_noise: σ_b = {self.dp_count_noise:g} must exceed z/2 = {self.dp_noise_multiplier / 2:g}"
                )
            object.__setattr__(self, "divergence", False)  # per-member cosines: not covered by the noise
        return self
