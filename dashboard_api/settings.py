"""The dashboard API's settings (flags, STRATA_DASHBOARD_* variables, or [dashboard] in a TOML file)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from strata.settings import StrataSettings


class DashboardSettings(StrataSettings):
    model_config = SettingsConfigDict(env_prefix="STRATA_DASHBOARD_", extra="forbid", validate_default=True)
    toml_table = "dashboard"

    database_url: str = Field(
        "sqlite:///strata-data/strata.db", description="The coordinator's database URL (read-only use)"
    )
    host: str = Field("127.0.0.1", description="HTTP listen host")
    port: int = Field(8080, ge=0, le=65535, description="HTTP listen port")
    online_seconds: float = Field(
        30.0, gt=0, description="A worker seen within this many seconds counts as online"
    )
    read_token: SecretStr | None = Field(
        None, description="If set, every API read needs Authorization: Bearer <read token> (or the admin key)"
    )
    admin_key: SecretStr | None = Field(
        None,
        description="Key for writes: create federations, issue and revoke worker tokens, pause, resume, stop "
        "(unset: writes are refused)",
    )
    log_level: str = Field(
        "info", pattern="^(critical|error|warning|info|debug)$", description="uvicorn log level"
    )
