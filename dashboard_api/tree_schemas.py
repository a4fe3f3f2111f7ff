"""Response models of federations of federations (docs/methods.md section 5): the attention weights of key
blocks at a parent, and the parent rounds a sub-federation served. (A member federation's own fields and the
tree settings are part of WorkerOut and FederationStatus in schemas.py.)"""

from __future__ import annotations

from pydantic import Field

from dashboard_api.schemas import UtcDateTime, _Out


class KeyWeightOut(_Out):
    name: str = Field(description="Name of the member (a member federation, or a plain worker).")
    weight: float = Field(
        description="α: the member's weight in the key block's aggregate Σ α_c Δ_c (the block's weights sum "
        "to 1)."
    )
    cosine: float | None = Field(
        description="cos(Δ_c, Δ̄) of the member's key-block update to the round's mean; null when unmeasured."
    )
    num_samples: int = Field(description="n_c: samples behind the member's update.")


class KeyBlockWeightsOut(_Out):
    block: str = Field(description="The key block's name.")
    members: list[KeyWeightOut] = Field(description="Every member that carried the block, by name.")


class KeyWeightMatrix(_Out):
    blocks: list[str] = Field(description="The key blocks, in model order.")
    members: list[str] = Field(description="The members with a weight in any round of the page, by name.")
    rounds: list[int] = Field(description="Completed round numbers with key weights, ascending.")
    weights: list[list[list[float | None]]] = Field(
        description="weights[block][member][round]: α, null when the member did not carry the block."
    )
    cosines: list[list[list[float | None]]] = Field(
        description="cosines[block][member][round]: cos(Δ_c, Δ̄), null when unknown."
    )
    total_rounds: int = Field(description="Completed rounds of the range with key weights, over all pages.")
    offset: int = Field(description="Index of the first round of this page.")
    limit: int = Field(description="Largest number of rounds a page holds.")


class ParentRoundOut(_Out):
    parent_round: int = Field(description="The parent federation's round number.")
    parent_version: int = Field(description="The parent's model version the round trained from.")
    parent_hash: str = Field(description="SHA-256 of that version's trained tensors.")
    start_version: int = Field(
        description="This federation's version made from it (key blocks keep β of their own)."
    )
    rounds_before: int = Field(description="This federation's last round number before the parent round.")
    state: str = Field(
        description="training, delivered (its update went up), missed (no inner round completed, or the "
        "parent did not take the update) or ended (the parent moved on before delivery)."
    )
    num_samples: int = Field(description="n_c: the samples it sent up its update with (0 before delivery).")
    inner_rounds: list[int] = Field(
        description="This federation's completed rounds that served the parent round."
    )
    test_loss: float | None = Field(
        description="Test loss of its model after the last of them (what it reports upward); null if none."
    )
    test_accuracy: float | None = Field(description="Test accuracy of its model after the last of them.")
    started_at: UtcDateTime = Field(description="When it started serving the parent round (UTC).")
    finished_at: UtcDateTime | None = Field(
        description="When it delivered or gave up (UTC); null while training."
    )
