"""The coordinator's settings for the traffic it takes: request rates per worker token, and how many
updates it decodes and versions it streams at once (docs/security.md, docs/protocol.md)."""

from __future__ import annotations

from pydantic import Field

from strata.tracking import TrackingSettings


class TrafficSettings(TrackingSettings):
    """Fields shared by CoordinatorSettings; see the module docstring."""

    track_model: bool = Field(
        False,
        description="With experiment tracking: log the final model (the `strata export` folders) as an MLflow "
        "artifact when the federation completes",
    )

    rate_limit: float = Field(
        20.0, ge=0, description="Requests per second each worker token may make on average (0: no limit)"
    )
    rate_burst: int = Field(
        60, ge=1, description="Requests a worker token may make at once before the rate applies"
    )
    max_concurrent_uploads: int = Field(
        8,
        ge=1,
        le=4096,
        description="Updates decoded at once; the others wait their turn, their data held back by HTTP/2 flow "
        "control, so memory does not grow with the number of workers",
    )
    max_concurrent_downloads: int = Field(
        8,
        ge=1,
        le=4096,
        description="Versions streamed to workers at once; the others wait their turn, so what waits in send "
        "buffers for slow readers does not grow with the number of workers",
    )
