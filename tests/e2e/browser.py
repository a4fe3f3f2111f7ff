"""Headless Chromium for the page's tests (Debian's chromium and chromium-driver, driven by selenium).

`.ci/run` installs chromium and sets STRATA_TEST_BROWSER=1, which turns a missing browser into a failure;
elsewhere a module calling `require_browser()` is skipped without one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def require_browser() -> None:
    """Skip the calling test module (at import) where there is no browser and CI did not ask for one."""
    have = Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()
    if not have and os.environ.get("STRATA_TEST_BROWSER") != "1":
        pytest.skip(
            "no chromium/chromedriver here (apt-get install chromium chromium-driver)",
            allow_module_level=True,
        )
    pytest.importorskip("selenium.webdriver")


def chromium() -> Iterator[Any]:
    """A headless Chromium driver, 1280 × 1400 (a test module makes it a fixture: `pytest.fixture(chromium)`)."""
    from selenium import webdriver
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


def load(browser: Any, url: str) -> None:
    """Open `url` and wait until the page has drawn the federation (no error shown)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    )
    error = browser.find_element(By.ID, "error")
    assert error.get_attribute("hidden") is not None, error.text
