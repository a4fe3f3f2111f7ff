"""The coordinator's settings for federations of federations (docs/methods.md section 5).

Two sides: a coordinator that is itself a member of a parent federation (`parent` and the settings
beside it: how to reach the parent, and how many rounds of its own to run per parent round), and a
coordinator whose members are federations (`local_blocks` and the settings beside it: which key
blocks stay partly local to each member, and how the members' key-block updates are combined).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from pydantic import Field, SecretStr, model_validator

from coordinator.lora_settings import LoraSettings

KEY_AGGREGATIONS = ("attention", "mean")
_TOP = re.compile(r"^top:(\d+)$")
MAX_URL = 512  # characters of a dashboard address (workers.dashboard_url)


def dashboard_url_problem(url: str) -> str | None:
    """Why `url` cannot be a dashboard page's address (an absolute http or https URL with a host, at most
    MAX_URL printable characters without spaces), or None when it can. A parent's dashboard renders it as a
    link, so nothing else (javascript:, data:, a relative path) gets through."""
    if len(url) > MAX_URL:
        return f"{len(url)} characters; at most {MAX_URL}"
    if not url.isprintable() or any(c.isspace() for c in url):
        return "contains spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a malformed port)
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an absolute http:// or https:// address with a host"
    return None


class TreeSettings(LoraSettings):
    """Fields shared by CoordinatorSettings; see the module docstring."""

    parent: str = Field(
        "",
        description="host:port of a parent federation's coordinator: this coordinator joins it as one member "
        "(a sub-federation) and runs inner_rounds rounds of its own per parent round (empty: a top federation)",
    )
    parent_token: SecretStr = Field(
        SecretStr(""), description="The token this federation joins its parent with"
    )
    parent_name: str = Field(
        "",
        pattern=r"^$|^[A-Za-z0-9_.\-]{1,128}$",
        description="This federation's member name at the parent (default: the federation's name)",
    )
    parent_tls: bool = Field(
        False, description="Connect to the parent with TLS, checking it against the system's CAs"
    )
    parent_tls_ca: Path | None = Field(
        None, description="CA certificate (PEM) to check the parent's certificate with (implies TLS)"
    )
    parent_tls_cert: Path | None = Field(
        None, description="Client certificate (PEM) presented to the parent, for mutual TLS"
    )
    parent_tls_key: Path | None = Field(None, description="The parent client certificate's private key (PEM)")
    parent_tls_server_name: str | None = Field(
        None, description="Name to check the parent's certificate against (default: the address's host)"
    )
    inner_rounds: int = Field(
        1, ge=1, le=1000, description="With a parent: rounds of this federation per round of the parent"
    )
    dashboard_url: str = Field(
        "",
        description="The address of this federation's own dashboard page (http or https, e.g. "
        "https://dash.org-a.example/?federation=org-a), sent to its parent, whose dashboard links this member "
        "to it, and to its member federations, whose dashboards link their parent to it (empty: no link)",
    )
    local_blocks: str = Field(
        "",
        description="Key blocks that member federations keep partly local: block names (comma-separated) or "
        "top:N for the task head and the N highest layers (empty: none; plain workers treat them as shared)",
    )
    residual_keep: float = Field(
        0.5,
        ge=0,
        le=1,
        description="β: the share of its own deviation from the shared key blocks a member federation keeps "
        "after each synchronisation (0: the shared copy replaces its own; 1: fully local)",
    )
    key_aggregation: str = Field(
        "attention",
        description="How the members' key-block updates are combined: attention (weights n·exp(τ·cos)) or mean",
    )
    attention_temperature: float = Field(
        1.0,
        ge=0,
        le=100,
        description="τ of the attentive aggregation of key blocks (0: the sample-weighted mean)",
    )

    @property
    def member_name(self) -> str:
        """The name this federation has among its parent's members."""
        return self.parent_name or getattr(self, "federation", "default")

    def parent_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for the parent channel, or None for plaintext."""
        if not (self.parent_tls or self.parent_tls_ca or self.parent_tls_cert):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.parent_tls_ca.read_bytes() if self.parent_tls_ca else None,
            private_key=self.parent_tls_key.read_bytes() if self.parent_tls_key else None,
            certificate_chain=self.parent_tls_cert.read_bytes() if self.parent_tls_cert else None,
        )

    def key_block_spec(self) -> tuple[str, ...] | str:
        """local_blocks as the layer map resolves it: "top:N", or the block names."""
        spec = self.local_blocks.strip()
        if _TOP.match(spec):
            return spec
        return tuple(b.strip() for b in spec.split(",") if b.strip())

    @model_validator(mode="after")
    def _check_tree(self) -> TreeSettings:
        if self.parent:
            host, _, port = self.parent.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"parent: {self.parent!r} is not host:port (see --parent)")
            if not self.parent_token.get_secret_value():
                raise ValueError("parent: a sub-federation needs --parent-token to join its parent")
        if self.dashboard_url and (problem := dashboard_url_problem(self.dashboard_url)):
            raise ValueError(f"dashboard_url: {self.dashboard_url!r}: {problem}")
        if (self.parent_tls_cert is None) != (self.parent_tls_key is None):
            raise ValueError("parent_tls_cert and parent_tls_key: give both (mutual TLS) or neither")
        for name in ("parent_tls_ca", "parent_tls_cert", "parent_tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        if self.key_aggregation not in KEY_AGGREGATIONS:
            raise ValueError(
                f"unknown key aggregation {self.key_aggregation!r}; valid: {', '.join(KEY_AGGREGATIONS)}"
            )
        spec = self.local_blocks.strip()
        if spec.startswith("top") and not _TOP.match(spec):
            raise ValueError(f"local_blocks: {spec!r}: write top:N with N a whole number, e.g. top:2")
        return self
