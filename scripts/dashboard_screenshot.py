"""Screenshot the dashboard page of a federation database in headless Chromium.

    python scripts/dashboard_screenshot.py sqlite:///work/strata.db docs/dashboard-demo.png [--federation demo]

Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium.
Prints the heatmap's numbers (divergence per block and round) beside the picture.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from dashboard_api.server import build_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("database_url")
    ap.add_argument("out")
    ap.add_argument("--federation", default="demo")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = build_server(args.database_url, "127.0.0.1", port, online_seconds=3600, log_level="warning")
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--window-size=1280,1400",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(f"{base}/?federation={args.federation}")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
        )
        driver.save_screenshot(args.out)
    finally:
        driver.quit()
    m = httpx.get(
        f"{base}/api/v1/federations/{args.federation}/blocks", params={"metric": "divergence"}
    ).json()
    print(f"wrote {args.out}\n\n| block | " + " | ".join(f"r{r}" for r in m["rounds"]) + " |")
    print("|---|" + "---|" * len(m["rounds"]))
    for block, row in zip(m["blocks"], m["values"], strict=True):
        print(f"| {block} | " + " | ".join("–" if v is None else f"{v:.3g}" for v in row) + " |")
    print(
        "| noise floor ρ₀ | " + " | ".join("–" if v is None else f"{v:.3f}" for v in m["noise_floor"]) + " |"
    )
    server.should_exit = True


if __name__ == "__main__":
    main()
