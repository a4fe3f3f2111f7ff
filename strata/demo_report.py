"""What `strata demo` prints: a line per finished round and the final table, from the REST API's rounds;
and the flags of its tree of federations (`strata/demo_tree.py`)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from strata.demo_procs import Proc


def _mb(n: Any) -> str:
    return f"{(int(n or 0)) / 1e6:.2f} MB"


def _ratio(v: Any) -> str:
    return f"{v:.1f}x" if isinstance(v, (int, float)) else "–"


def round_line(r: dict[str, Any], total: int) -> str:
    if r["state"] == "failed":
        return f"round {r['number']}: FAILED: {r.get('error')}"
    acc, loss = r.get("test_accuracy"), r.get("test_loss")
    head = f"round {r['number']}/{total}  " + (
        f"test acc {acc:.4f}  test loss {loss:.4f}  " if acc is not None else ""
    )
    train = r.get("train_loss")
    return (
        head
        + (f"train loss {train:.4f}  " if train is not None else "")
        + (f"ε {r['dp_epsilon']:.3g}  " if r.get("dp_epsilon") is not None else "")
        + f"up {_mb(r['bytes_up'])} ({_ratio(r.get('up_ratio'))} < fp32)  "
        f"down {_mb(r['bytes_down'])} ({_ratio(r.get('down_ratio'))} < fp32)  "
        f"{r.get('duration_seconds') or 0:.1f}s  ({r['num_updates']} updates)"
        + (f"  blocks {short_blocks(r['blocks'])}" if r.get("blocks") else "")
    )


@dataclass(frozen=True)
class Feed:
    """One federation the demo follows: its rounds on the REST API, the prefix of its lines, its rounds."""

    url: str
    prefix: str
    total: int


def follow(feeds: dict[str, Feed], main: Proc, procs: Sequence[Proc]) -> dict[str, list[dict[str, Any]]]:
    """Print a line per finished round of every federation in `feeds` (read from their REST APIs) until
    `main` exits or another process fails; each federation's rounds rows."""
    printed: set[tuple[str, int]] = set()
    rows: dict[str, list[dict[str, Any]]] = {fed: [] for fed in feeds}
    with httpx.Client(timeout=5.0) as http:
        while True:
            finished = main.popen.poll() is not None
            for fed, feed in feeds.items():
                try:
                    resp = http.get(feed.url, params={"limit": 500})
                    rows[fed] = resp.json()["items"] if resp.status_code == 200 else rows[fed]
                except httpx.HTTPError:
                    pass
                for r in rows[fed]:
                    if r["state"] in ("completed", "failed") and (fed, r["number"]) not in printed:
                        printed.add((fed, int(r["number"])))
                        print(feed.prefix + round_line(r, feed.total), flush=True)
            if finished or any(p.popen.poll() not in (None, 0) for p in procs):
                return rows
            time.sleep(0.5)


def short_blocks(blocks: list[str]) -> str:
    """embeddings, layer.3, pooler, head -> E,L3,P,H"""
    names = {"embeddings": "E", "pooler": "P", "head": "H"}
    return ",".join(names.get(b, b.replace("layer.", "L")) for b in blocks)


def render_table(rows: list[dict[str, Any]]) -> str:
    """The final table as markdown: round, test accuracy, loss, bytes up and down (and their ratio to
    fp32), seconds; a private federation's ε after each round."""
    private = any(r.get("private") for r in rows)
    out = [
        "| round | state | test accuracy | test loss | train loss | bytes up | up ratio | bytes down | down ratio | seconds |"
        + (" ε |" if private else ""),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if private else ""),
    ]
    for r in rows:

        def f(key: str, fmt: str = ".4f", row: dict[str, Any] = r) -> str:
            v = row.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) else "–"

        out.append(
            f"| {r['number']} | {r['state']} | {f('test_accuracy')} | {f('test_loss')} | {f('train_loss')} | "
            f"{int(r['bytes_up'] or 0):,} | {_ratio(r.get('up_ratio'))} | {int(r['bytes_down'] or 0):,} | "
            f"{_ratio(r.get('down_ratio'))} | {f('duration_seconds', '.1f')} |"
            + (f" {f('dp_epsilon', '.3g')} |" if private else "")
        )
    return "\n".join(out)


def tree_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--federations",
        type=int,
        default=0,
        metavar="F",
        help="run a two-level tree: a parent federation whose members are F sub-federations, each with "
        "--workers workers (docs/methods.md section 5; default 0: one flat federation)",
    )
    p.add_argument(
        "--tree-alpha",
        type=float,
        default=0.3,
        help="with --federations and generated data: Dirichlet concentration of each sub-federation's topic mix (default 0.3)",
    )
