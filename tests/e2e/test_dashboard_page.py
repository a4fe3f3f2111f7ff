"""The federation page in headless Chromium (Debian's chromium and chromium-driver, driven by selenium):
served by the real dashboard app over HTTP on a real federation's database, it loads, draws its charts
and the workers table, and a screenshot goes to docs/dashboard.png.

`.ci/run` installs chromium and sets STRATA_TEST_BROWSER=1, which turns a missing browser into a failure;
elsewhere the test is skipped without one.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard_api.server import build_server
from strata import synthetic
from strata.layers import block_map
from strata.modeling import load_model

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
have_browser = Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()
if not have_browser and os.environ.get("STRATA_TEST_BROWSER") != "1":
    pytest.skip(
        "no chromium/chromedriver here (apt-get install chromium chromium-driver)", allow_module_level=True
    )
webdriver = pytest.importorskip("selenium.webdriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def page_url(federation_db: str) -> Iterator[str]:
    port = _free_port()
    server = build_server(federation_db, "127.0.0.1", port, online_seconds=3600.0, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "dashboard did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/?federation=demo"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1400",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_renders_a_real_federation(page_url: str, browser, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
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
    shot = ROOT / "docs" / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
