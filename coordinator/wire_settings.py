"""The coordinator's settings for what travels: the update encodings both ways and what workers download
(docs/protocol.md, docs/methods.md)."""

from __future__ import annotations

from pydantic import Field

from coordinator.traffic_settings import TrafficSettings
from strata.names import DEFAULT_LOWRANK_RANK, ENCODINGS, MAX_LOWRANK_RANK


class WireSettings(TrafficSettings):
    """Fields shared by CoordinatorSettings; see the module docstring."""

    encoding: str = Field("fp32", description=f"Upstream update encoding: {', '.join(ENCODINGS)}")
    topk_fraction: float = Field(
        0.1, gt=0, le=1, description="topk: share of each tensor's entries a worker sends"
    )
    lowrank_rank: int = Field(
        DEFAULT_LOWRANK_RANK,
        ge=1,
        le=MAX_LOWRANK_RANK,
        description="lowrank: rank of the factors each weight matrix's update travels as, both ways "
        "(vectors and matrices too small to gain go as int8)",
    )
    downstream: str = Field(
        "delta",
        pattern="^(delta|snapshot)$",
        description="What workers download each round: delta (the global updates since their version) or snapshot (the whole model)",
    )
    down_encoding: str = Field(
        "fp32", description=f"Encoding of the global update sent downstream: {', '.join(ENCODINGS)}"
    )
    history: int = Field(
        8,
        ge=1,
        le=1000,
        description="Global updates kept for workers that are behind; further behind gets a snapshot",
    )
