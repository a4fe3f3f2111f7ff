"""A federation's tree settings as the dashboard shows them (docs/methods.md section 5): read from the
config recorded with it, where a federation that predates them (or a malformed value) shows the defaults."""

from __future__ import annotations

from typing import Any

from dashboard_api.schemas import TreeOut

TREE_DEFAULTS: dict[str, Any] = {  # coordinator/tree_settings.py's defaults: federations that predate them
    "parent": None,
    "inner_rounds": 1,
    "local_blocks": "",
    "residual_keep": 0.5,
    "key_aggregation": "attention",
    "attention_temperature": 1.0,
}


def tree(config: dict[str, Any], parent_page: str | None = None) -> TreeOut:
    """The tree settings recorded in a federation's config (a missing or malformed value is the default),
    and the parent's dashboard page as the parent gave it."""
    values: dict[str, Any] = {}
    for key, default in TREE_DEFAULTS.items():
        try:
            values[key] = getattr(
                TreeOut.model_validate(TREE_DEFAULTS | {key: config.get(key, default)}), key
            )
        except ValueError:  # pydantic's ValidationError
            values[key] = default
    values["parent"] = values["parent"] or None  # "" is a top federation
    return TreeOut.model_validate(values | {"parent_dashboard_url": parent_page})
