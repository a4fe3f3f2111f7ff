"""`strata logs`: follow a federation from a terminal through the dashboard's REST API, a line per round as
it closes (the line `strata demo` prints).

    strata logs NAME                      # every finished round so far, then the federation's state
    strata logs NAME --follow             # ... and each round as it closes, until the federation ends
    strata logs NAME --since 12           # from round 12 on
    strata logs NAME --since 10m          # rounds closed in the last 10 minutes (s, m, h, d)
    strata logs NAME --since 2026-12-04T18:00:00Z
    strata logs NAME --json               # the API's round rows, one JSON object per line

The API address and the read token come from --api / STRATA_API (default http://127.0.0.1:8080) and
--token / STRATA_READ_TOKEN (the admin key works too). With --follow the command exits when the
federation completes, stops or fails (exit status 1 for a failed federation), and rides out a restart of
the API or the coordinator by retrying.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from strata.demo_report import round_line

#: federation states after which no round will close
ENDED = ("completed", "failed", "stopped")
FINISHED = ("completed", "failed")
PAGE = 500
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Since:
    """Which rounds to show: from a round number on, or those closed at or after an instant."""

    number: int = 1
    instant: datetime | None = None

    def keeps(self, row: dict[str, Any]) -> bool:
        if row["number"] < self.number:
            return False
        if self.instant is None:
            return True
        closed = row.get("closed_at")
        return closed is not None and parse_instant(closed) >= self.instant


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant; one without a zone is UTC (as the API writes them)."""
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime | None = None) -> Since:
    """`12` (round 12 on), `90s`/`10m`/`2h`/`1d` (closed that long ago or later) or an ISO 8601 instant."""
    text = text.strip()
    if text.isdigit():
        if int(text) < 1:
            raise ValueError("--since: rounds are numbered from 1")
        return Since(number=int(text))
    if len(text) > 1 and text[-1] in UNITS and text[:-1].replace(".", "", 1).isdigit():
        ago = timedelta(seconds=float(text[:-1]) * UNITS[text[-1]])
        return Since(instant=(now or datetime.now(UTC)) - ago)
    try:
        return Since(instant=parse_instant(text))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a round number (12), an age (90s, 10m, 2h, 1d) or an ISO 8601 instant"
        ) from None


class ApiError(Exception):
    """An answer the command cannot go on from (unknown federation, refused token, bad request)."""


class Api:
    """The two reads `strata logs` makes, with the token; network errors propagate as httpx.HTTPError."""

    def __init__(self, base: str, token: str | None, client: httpx.Client) -> None:
        self.base = base.rstrip("/") + "/api/v1/federations/"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = client

    def _get(self, path: str, **params: Any) -> Any:
        r = self.client.get(self.base + path, params=params, headers=self.headers)
        if r.status_code == 200:
            return r.json()
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        if r.status_code >= 500:  # the API is up but its database is not (yet): retry like a network error
            raise httpx.TransportError(f"{r.status_code}: {detail}")
        hint = " (give --token or STRATA_READ_TOKEN)" if r.status_code == 401 else ""
        raise ApiError(f"{r.status_code}: {detail}{hint}")

    def federation(self, name: str) -> dict[str, Any]:
        return dict(self._get(name))

    def rounds(self, name: str, offset: int) -> list[dict[str, Any]]:
        return list(self._get(f"{name}/rounds", offset=offset, limit=PAGE)["items"])


class Cursor:
    """The rounds already shown. Rounds close in number order, so the leading run of finished rounds never
    changes again and later polls start after it (`offset`)."""

    def __init__(self) -> None:
        self.offset = 0
        self.shown: set[int] = set()

    def new_rounds(self, api: Api, name: str) -> Iterator[dict[str, Any]]:
        """Finished rounds not shown before, in number order; pages through long federations."""
        while True:
            page = api.rounds(name, self.offset)
            leading = True
            for row in page:
                finished = row["state"] in FINISHED
                if finished and row["number"] not in self.shown:
                    self.shown.add(row["number"])
                    yield row
                leading = leading and finished
                if leading:
                    self.offset += 1
            if len(page) < PAGE or not leading:
                return


def end_line(fed: dict[str, Any]) -> str:
    """The federation's state in one line, after its rounds."""
    acc = fed.get("last_test_accuracy")
    line = f"federation {fed['name']} {fed['state']}: round {fed['current_round']}/{fed['total_rounds']}"
    line += f", last test acc {acc:.4f}" if acc is not None else ""
    eps = (fed.get("privacy") or {}).get("epsilon")
    line += f", ε {eps:.3g}" if eps is not None else ""
    for key in ("reason", "error"):
        line += f"; {key}: {fed[key]}" if fed.get(key) else ""
    return line


def stream(
    api: Api,
    name: str,
    since: Since,
    follow: bool,
    interval: float,
    emit: Callable[[str], None],
    note: Callable[[str], None],
    as_json: bool = False,
) -> dict[str, Any]:
    """Emit a line per finished round `since` keeps; with `follow`, poll until the federation ends (and its
    last rounds are out). Returns the federation's final status. Network failures while following are
    reported once per outage through `note` and retried; before the first answer they propagate."""
    fed = api.federation(name)
    cursor, outage, first = Cursor(), False, True
    while True:
        try:
            # the state before the rounds: once it says ended, the rounds read next include the last one
            fed = fed if first else api.federation(name)
            first = False
            for row in cursor.new_rounds(api, name):
                if since.keeps(row):
                    emit(json.dumps(row) if as_json else round_line(row, fed["total_rounds"]))
            if outage:
                note(f"strata logs: {api.base} answers again")
                outage = False
        except httpx.HTTPError as exc:
            if not outage:
                note(f"strata logs: {api.base} unreachable ({exc}); retrying every {interval:g}s")
                outage = True
            time.sleep(interval)
            continue
        if not follow or fed["state"] in ENDED:
            return fed
        time.sleep(interval)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "logs",
        help="follow a federation from a terminal: a line per round as it closes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="the federation")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing rounds until the federation ends"
    )
    p.add_argument("--since", default=None, help="a round number, an age (10m) or an ISO 8601 instant")
    p.add_argument("--json", action="store_true", help="print the API's round rows as JSON lines")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")
    p.add_argument(
        "--api",
        default=os.environ.get("STRATA_API", "http://127.0.0.1:8080"),
        help="dashboard URL (env STRATA_API)",
    )
    p.add_argument("--token", default=None, help="the dashboard's read token (env STRATA_READ_TOKEN)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since) if args.since else Since()
    except ValueError as exc:
        print(f"strata logs: {exc}", file=sys.stderr)
        return 2
    if args.interval <= 0:
        print("strata logs: --interval must be positive", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("STRATA_READ_TOKEN") or os.environ.get("STRATA_ADMIN_KEY")
    with httpx.Client(timeout=10.0) as client:
        api = Api(args.api, token, client)
        try:
            fed = stream(
                api,
                args.name,
                since,
                args.follow,
                args.interval,
                emit=lambda line: print(line, flush=True),
                note=lambda line: print(line, file=sys.stderr, flush=True),
                as_json=args.json,
            )
        except ApiError as exc:
            print(f"strata logs: {args.name}: {exc}", file=sys.stderr)
            return 1
        except httpx.HTTPError as exc:
            print(f"strata logs: cannot reach {args.api}: {exc}", file=sys.stderr)
            return 1
    if not args.json:
        print(end_line(fed), flush=True)
    return 1 if fed["state"] == "failed" else 0
