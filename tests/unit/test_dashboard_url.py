"""The address of a member federation's own dashboard (coordinator.tree_settings.dashboard_url_problem and
the dashboard_url setting): only an absolute http or https URL with a host, since a parent's dashboard
renders it as a link."""

from __future__ import annotations

import pytest

from coordinator.settings import CoordinatorSettings
from coordinator.tree_settings import MAX_URL, dashboard_url_problem
from strata.settings import SettingsError


@pytest.mark.parametrize(
    "url",
    [
        "http://dash.org-a.example",
        "https://dash.org-a.example/?federation=org-a",
        "https://10.0.0.7:8080/",
        "HTTPS://Dash.Example/path#round=3",
        "http://[::1]:8080/?federation=a",
        "https://x.example/" + "a" * (MAX_URL - 18),
    ],
)
def test_an_absolute_web_address_is_a_dashboard(url: str) -> None:
    assert len(url) <= MAX_URL
    assert dashboard_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("javascript:alert(1)", "http:// or https://"),
        ("data:text/html,<b>x</b>", "http:// or https://"),
        ("ftp://files.example/", "http:// or https://"),
        ("/relative/path", "http:// or https://"),
        ("dash.example", "http:// or https://"),
        ("https://", "http:// or https://"),
        ("https:///path-only", "http:// or https://"),
        ("https://dash.example:99999/", "not a URL"),
        ("https://dash.example:port/", "not a URL"),
        ("https://[::1/", "not a URL"),
        ("https://dash example/", "spaces or control characters"),
        ("https://dash.example/\n", "spaces or control characters"),
        ("https://dash.example/\x00", "spaces or control characters"),
        ("https://x.example/" + "a" * MAX_URL, f"at most {MAX_URL}"),
    ],
)
def test_anything_else_is_refused_with_the_reason(url: str, why: str) -> None:
    problem = dashboard_url_problem(url)
    assert problem is not None and why in problem


def test_the_setting_is_checked_when_the_coordinator_loads() -> None:
    base: dict[str, str] = {}  # checked with or without a parent
    s = CoordinatorSettings.load(base | {"dashboard_url": "https://dash.org-a.example/?federation=org-a"})
    assert s.dashboard_url == "https://dash.org-a.example/?federation=org-a"
    assert CoordinatorSettings.load(base).dashboard_url == ""
    with pytest.raises(SettingsError, match=r"dashboard_url: 'javascript:alert\(1\)': not an absolute"):
        CoordinatorSettings.load(base | {"dashboard_url": "javascript:alert(1)"})


def test_a_sub_federation_keeps_its_parents_page_only_when_it_is_a_web_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from coordinator.subfederation import parent_page
    from strata.proto.v1 import coordinator_pb2 as pb

    page = "https://dash.world.example/?federation=world"
    assert parent_page(pb.JoinReply(dashboard_url=page)) == page
    assert parent_page(pb.JoinReply()) is None
    with caplog.at_level("WARNING", logger="strata.coordinator"):
        assert parent_page(pb.JoinReply(dashboard_url="javascript:alert(1)")) is None
    assert "the parent's dashboard address is left out: 'javascript:alert(1)'" in caplog.text
