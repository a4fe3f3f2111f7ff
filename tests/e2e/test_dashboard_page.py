"""The federation page in headless Chromium (Debian's chromium and chromium-driver, driven by selenium):
served by the real dashboard app over HTTP on a real federation's database, it loads, draws its charts
and the workers table, and a screenshot is taken (the README's picture comes from a federation that
learns: scripts/dashboard_screenshot.py).

`.ci/run` installs chromium and sets STRATA_TEST_BROWSER=1, which turns a missing browser into a failure;
elsewhere the test is skipped without one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.store import Store
from strata import synthetic
from strata.layers import block_map
from strata.modeling import load_model
from tests.e2e.browser import chromium, load, require_browser
from tests.helpers import served_dashboard
from tests.tree_federation import BETA, SUBS, TAU, build_tree, dashboard_page

require_browser()
browser = pytest.fixture(chromium)


@pytest.fixture
def page_url(federation_db: str) -> Iterator[str]:
    with served_dashboard(federation_db) as url:
        yield f"{url}?federation=demo"


def test_the_page_renders_a_real_federation(page_url: str, browser, tiny_model: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_url)
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    )
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None, browser.find_element(
        By.ID, "error"
    ).text
    status = browser.find_element(By.ID, "status").text
    assert "completed" in status and "4 / 4" in status and "agreement" in status

    def rendered(chart: str) -> str:
        return browser.find_element(By.ID, chart).get_attribute("data-rendered") or ""

    assert int(rendered("chart-accuracy")) == 8  # 4 rounds x (accuracy, loss)
    assert int(rendered("chart-bytes")) == 8  # 4 rounds x (up, down)
    names = block_map(load_model(tiny_model, synthetic.LABELS)[0]).names
    assert int(rendered("chart-divergence")) == 4 * len(names)
    heat = browser.find_element(By.ID, "chart-divergence")
    assert (
        len(heat.find_elements(By.CSS_SELECTOR, "circle.applied")) >= 4 * 2
    )  # k = 1 plus the head per round
    labels = [t.text for t in heat.find_elements(By.TAG_NAME, "text")]
    assert all(b in labels for b in names)
    rows = browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")
    assert sorted(r.find_elements(By.TAG_NAME, "td")[0].text for r in rows) == ["org-1", "org-2", "org-3"]
    assert not browser.find_elements(By.CSS_SELECTOR, "#workers .badge")  # plain workers, no tree
    assert not browser.find_element(By.ID, "key-blocks").is_displayed()
    assert not browser.find_element(By.ID, "parent").is_displayed()
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_the_page_shows_a_federation_tree(browser, tmp_path: Path, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    """A parent with member federations: the federation badges, their reported metric and the key blocks;
    a sub-federation: its parent and the parent rounds it served (tests/tree_federation.py); a member
    federation the dashboard's database also holds links to its page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tree = build_tree(tmp_path, f"sqlite:///{tmp_path / 'world.db'}", tiny_model)

    with served_dashboard(tree.parent_url) as url:
        load(browser, f"{url}?federation=world")
        rows = browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr.federation")
        assert sorted(r.find_elements(By.TAG_NAME, "td")[0].text for r in rows) == [
            f"{name} ↗ federation · 2 workers · 1 inner round" for name in SUBS
        ]
        for r in rows:
            assert "acc " in r.text and "loss " in r.text and "(round 2)" in r.text
        section = browser.find_element(By.ID, "key-blocks")
        assert section.is_displayed()
        settings = browser.find_element(By.ID, "key-settings").text
        assert "top:1" in settings and "head" in settings and f"β = {BETA:g}" in settings
        assert f"τ = {TAU:g}" in settings and "attention" in settings
        assert "round 2" in browser.find_element(By.ID, "key-caption").text
        header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#key-weights thead th")]
        assert header == ["block", *SUBS]
        cells = browser.find_elements(By.CSS_SELECTOR, "#key-weights tbody tr")
        assert len(cells) == 2  # the highest layer and the head
        for row in cells:
            weights = [float(td.text) for td in row.find_elements(By.CSS_SELECTOR, "td.w")]
            assert len(weights) == 2 and abs(sum(weights) - 1) < 2e-3
        chart = browser.find_element(By.ID, "chart-key-weights")
        assert chart.get_attribute("data-rendered") == "4"  # 2 blocks x 2 members
        assert not browser.find_element(By.ID, "parent").is_displayed()
        assert browser.save_screenshot(str(tmp_path / "tree-parent.png"))
    with served_dashboard(tree.sub_urls["sub-a"]) as url:
        load(browser, f"{url}?federation=sub-a")
        assert browser.find_element(By.ID, "parent").is_displayed()
        assert "member of the federation at 127.0.0.1:" in browser.find_element(By.ID, "parent-line").text
        link = browser.find_element(By.CSS_SELECTOR, "#parent-line a.parent-link")  # the parent's own page
        assert link.get_attribute("href") == dashboard_page("world") and link.text.endswith(" ↗")
        served_rounds = [
            [td.text for td in r.find_elements(By.TAG_NAME, "td")[:6]]
            for r in browser.find_elements(By.CSS_SELECTOR, "#parent-rounds tbody tr")
        ]
        assert [r[:5] for r in served_rounds] == [
            ["1", "0", "1", "1", "delivered"],
            ["2", "1", "3", "2", "delivered"],
        ]
        assert not browser.find_element(By.ID, "key-blocks").is_displayed()
        assert not browser.find_elements(By.CSS_SELECTOR, "#workers .badge")
    # each sub-federation keeps its own SQLite database: the parent's page links each to the dashboard page
    # it joined with; a database that also holds a member federation (PostgreSQL, where a tree shares one;
    # a copy here) links it here instead
    assert links_on(browser, tree.parent_url) == [(f"{name} ↗", dashboard_page(name)) for name in SUBS]
    both = tmp_path / "both.db"
    shutil.copy(tree.parent_url.removeprefix("sqlite:///"), both)
    store = Store(f"sqlite:///{both}")
    store.get_or_create_federation(SUBS[0])
    store.close()
    with served_dashboard(f"sqlite:///{both}") as url:
        load(browser, f"{url}?federation=world")
        links = browser.find_elements(By.CSS_SELECTOR, "#workers a.member-link")
        assert [a.text for a in links] == [SUBS[0], f"{SUBS[1]} ↗"]
        assert links[1].get_attribute("href") == dashboard_page(SUBS[1])
        assert links[1].get_attribute("target") == "_blank"
        links[0].click()
        WebDriverWait(browser, 10).until(lambda d: f"federation={SUBS[0]}" in d.current_url)
        load(browser, browser.current_url)
        assert browser.find_element(By.ID, "federation").get_attribute("value") == SUBS[0]


def links_on(browser, db: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """The member-federation links (text, address) on the world federation's page served from `db`."""
    from selenium.webdriver.common.by import By

    with served_dashboard(db) as url:
        load(browser, f"{url}?federation=world")
        found = browser.find_elements(By.CSS_SELECTOR, "#workers a.member-link")
        return [(a.text, a.get_attribute("href")) for a in found]


def test_the_page_shows_a_private_federations_budget(browser, tmp_path: Path, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    """A federation with --dp and workers with local DP-SGD: ε spent against the budget, ε and the clip
    per round, and each worker's local ε."""
    from selenium.webdriver.common.by import By

    from tests.helpers import coordinator_settings, run_federation

    url = f"sqlite:///{tmp_path / 'private.db'}"
    settings = coordinator_settings(
        tmp_path, url, tiny_model, rounds=2, min_updates=1, dp=True, dp_noise_multiplier=2.0,
        dp_target_epsilon=20.0, dp_adaptive_clip=True,
    )  # fmt: skip
    run_federation(settings, tmp_path, extra=dict(local_dp=True))
    with served_dashboard(url) as base:
        load(browser, f"{base}?federation=test")
        assert browser.find_element(By.ID, "privacy").is_displayed()
        line = browser.find_element(By.ID, "privacy-line").text
        assert "ε spent" in line and "of the budget 20.000" in line and "adaptive clipping" in line
        chart = browser.find_element(By.ID, "chart-privacy")
        assert chart.get_attribute("data-rendered") == "4"
        target = chart.find_elements(By.CSS_SELECTOR, "text.ref-label")  # the budget, drawn against ε
        assert [t.text for t in target] == ["target ε 20.000"]
        assert len(chart.find_elements(By.CSS_SELECTOR, "line.ref")) == 1
        assert "ε spent" in browser.find_element(By.ID, "status").text
        badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#workers .badge")]
        assert len(badges) == 3 and all(b.startswith("local DP-SGD ε ") for b in badges)
        assert browser.save_screenshot(str(tmp_path / "private.png"))
