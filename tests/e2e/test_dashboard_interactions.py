"""The federation page's interactions in headless Chromium, on a real federation's database: the value box
on hover over every chart, axes that stay readable when a series is flat, the blocks chart by another
metric, the per-worker alignment, a round's detail opened by a click (and by its link). Skipped like
tests/e2e/test_dashboard_page.py without a browser."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.browser import chromium, load, require_browser
from tests.helpers import served_dashboard

require_browser()
browser = pytest.fixture(chromium)


def by(css: str):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, css


def hover(browser, element, dx: int = 0, dy: int = 0) -> str:  # type: ignore[no-untyped-def]
    """Move the pointer over `element` (dx, dy from its centre); the value box's text."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element_with_offset(element, dx, dy).perform()
    tip = browser.find_element(*by("#tooltip"))
    assert tip.is_displayed()
    return str(tip.text)


def test_hover_flat_axes_metrics_alignment_and_round_detail(
    browser, federation_db: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with served_dashboard(federation_db) as base:
        load(browser, f"{base}?federation=demo")
        # every chart answers the pointer with the values of the round under it
        acc = browser.find_element(*by("#chart-accuracy .hover-layer"))
        left = hover(browser, acc, -int(acc.size["width"]) // 2 + 2)
        assert left.startswith("round 1") and "test accuracy: 0." in left and "test loss: " in left, left
        assert "train loss" in left and "3 updates" in left
        right = hover(browser, acc, int(acc.size["width"]) // 2 - 2)
        assert right.startswith("round 4"), right
        assert browser.find_element(*by("#chart-accuracy")).get_attribute("data-hover") == "4"
        assert "upstream: " in hover(browser, browser.find_element(*by("#chart-bytes .hover-layer")))
        cell = browser.find_element(*by('#chart-divergence rect.cell[data-round="2"][data-block="head"]'))
        tip = hover(browser, cell)
        assert tip.startswith("head · round 2") and "divergence: " in tip and "applied" in tip, tip
        align = browser.find_element(*by("#chart-alignment"))
        assert align.get_attribute("data-rendered") == "12"  # 3 workers x 4 rounds
        tip = hover(browser, browser.find_element(*by("#chart-alignment .hover-layer")))
        assert all(f"org-{k}: " in tip for k in (1, 2, 3)) and "‖Δ_k‖" in tip, tip

        # axes: round-number ticks, distinct labels even for a flat or nearly flat series
        for lo, hi in ((1.38412, 1.38438), (1.384, 1.384), (0.0, 0.0), (2e-7, 3e-7), (12.0, 4096.0)):
            labels = browser.execute_script(f"const s = niceScale({lo}, {hi}); return s.ticks.map(s.label);")
            assert len(labels) >= 2 and len(set(labels)) == len(labels), (lo, hi, labels)
            scale = browser.execute_script(f"return niceScale({lo}, {hi});")
            assert scale["lo"] <= lo and scale["hi"] >= hi
        ticks = [t.text for t in browser.find_elements(*by("#chart-accuracy text.tick1"))]
        assert len(ticks) >= 2 and len(set(ticks)) == len(ticks), ticks

        # the blocks chart by the policy's score; the choice stays in the URL
        Select(browser.find_element(*by("#block-metric"))).select_by_value("score")
        heat = browser.find_element(*by("#chart-divergence"))
        WebDriverWait(browser, 10).until(lambda d: heat.get_attribute("data-metric") == "score")
        assert "policy's score" in browser.find_element(*by("#blocks-caption")).text
        assert "metric=score" in browser.current_url
        assert "score: " in hover(
            browser, browser.find_element(*by('#chart-divergence rect.cell[data-round="3"]'))
        )

        # a click on a round opens its detail: blocks with their scores, updates with their alignment
        browser.find_element(*by('#chart-divergence rect.cell[data-round="3"]')).click()
        detail = browser.find_element(*by("#round-detail"))
        WebDriverWait(browser, 10).until(lambda d: detail.get_attribute("data-round") == "3")
        assert detail.is_displayed() and browser.find_element(*by("#round-title")).text == "Round 3"
        assert "completed" in browser.find_element(*by("#round-summary")).text
        blocks = browser.find_elements(*by("#round-blocks tbody tr"))
        applied = [
            r.find_elements(*by("td"))[0].text
            for r in blocks
            if "applied" in (r.get_attribute("class") or "")
        ]
        assert len(blocks) >= 4 and "head" in applied and len(applied) == 2  # k = 1 and the head
        updates = browser.find_elements(*by("#round-updates tbody tr"))
        assert sorted(r.find_elements(*by("td"))[0].text for r in updates) == ["org-1", "org-2", "org-3"]
        cosines = [float(r.find_elements(*by("td"))[7].text) for r in updates]
        assert all(-1 <= c <= 1 for c in cosines)
        assert "round=3" in browser.current_url
        browser.find_element(*by("#round-close")).click()
        assert not detail.is_displayed() and "round=" not in browser.current_url
        browser.find_element(*by('#rounds tbody tr[data-round="1"]')).click()  # the rounds table
        WebDriverWait(browser, 10).until(lambda d: detail.get_attribute("data-round") == "1")
        # a click on a chart opens the round under the pointer (the centre: round 2 or 3 of 4)
        browser.find_element(*by("#chart-accuracy .hover-layer")).click()
        WebDriverWait(browser, 10).until(lambda d: detail.get_attribute("data-round") in ("2", "3"))
        assert browser.save_screenshot(str(tmp_path / "interactions.png"))

        load(browser, f"{base}?federation=demo&round=4")  # a round's link opens it
        WebDriverWait(browser, 10).until(
            lambda d: d.find_element(*by("#round-detail")).get_attribute("data-round") == "4"
        )
