"""`strata logs` without a federation: parsing --since, paging through the rounds, riding out an outage,
and the lines it prints (against an in-memory API behind httpx's MockTransport)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from dashboard_api.logs_cli import PAGE, Api, ApiError, Since, end_line, parse_since, stream

NOW = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)


def test_since_takes_a_round_an_age_or_an_instant() -> None:
    assert parse_since("12") == Since(number=12)
    assert parse_since("10m", now=NOW) == Since(instant=NOW - timedelta(minutes=10))
    assert parse_since("1.5h", now=NOW) == Since(instant=NOW - timedelta(minutes=90))
    assert parse_since("2026-12-04T17:00:00Z") == Since(instant=NOW - timedelta(hours=1))
    assert parse_since("2026-12-04T17:00:00") == Since(instant=NOW - timedelta(hours=1))  # no zone: UTC
    for bad in ("0", "ten", "10x", "m", "-5m", "2026-13-01"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


def row(n: int, state: str = "completed", closed: datetime | None = NOW) -> dict[str, Any]:
    return {
        "number": n,
        "state": state,
        "test_accuracy": 0.5 + n / 1000 if state == "completed" else None,
        "test_loss": 0.7,
        "train_loss": 0.69,
        "bytes_up": 2_000_000,
        "bytes_down": 4_000_000,
        "up_ratio": 4.0,
        "down_ratio": 2.0,
        "duration_seconds": 1.5,
        "num_updates": 3,
        "blocks": None,
        "error": "no updates before the deadline" if state == "failed" else None,
        "closed_at": closed.isoformat() if closed and state != "open" else None,
    }


def test_since_keeps_rounds_by_number_and_by_closing_time() -> None:
    assert not Since(number=3).keeps(row(2)) and Since(number=3).keeps(row(3))
    since = Since(instant=NOW - timedelta(minutes=5))
    assert since.keeps(row(1, closed=NOW - timedelta(minutes=4)))
    assert not since.keeps(row(1, closed=NOW - timedelta(minutes=6)))


class FakeApi:
    """The two routes `strata logs` reads, over a list of rounds the test changes between polls."""

    def __init__(self, rounds: list[dict[str, Any]], total: int, state: str = "running") -> None:
        self.rounds, self.total, self.state = rounds, total, state
        self.calls: list[str] = []
        self.down = 0  # the next this many requests fail to connect
        self.on_poll: list[Any] = []  # called before each federation read, in order

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(str(request.url))
        if self.down:
            self.down -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if request.headers.get("authorization") != "Bearer tok":
            return httpx.Response(401, json={"detail": "this dashboard needs a read token"})
        path = request.url.path.removeprefix("/api/v1/federations/")
        if path == "fed":
            if self.on_poll:
                self.on_poll.pop(0)(self)
            return httpx.Response(200, json=self.status())
        if path == "fed/rounds":
            off, lim = int(request.url.params["offset"]), int(request.url.params["limit"])
            return httpx.Response(
                200, json={"items": self.rounds[off : off + lim], "total": len(self.rounds)}
            )
        return httpx.Response(404, json={"detail": "no federation named 'x'"})

    def status(self) -> dict[str, Any]:
        done = [r for r in self.rounds if r["state"] == "completed"]
        return {
            "name": "fed",
            "state": self.state,
            "current_round": len(self.rounds),
            "total_rounds": self.total,
            "last_test_accuracy": done[-1]["test_accuracy"] if done else None,
            "privacy": {"epsilon": None},
            "reason": None,
            "error": None,
        }


def run(fake: FakeApi, token: str = "tok", **kw: Any) -> tuple[list[str], list[str], dict[str, Any]]:
    out: list[str] = []
    notes: list[str] = []
    with httpx.Client(transport=httpx.MockTransport(fake.handle)) as client:
        fed = stream(
            Api("http://dash", token, client),
            kw.pop("name", "fed"),
            kw.pop("since", Since()),
            kw.pop("follow", False),
            0.001,
            out.append,
            notes.append,
            **kw,
        )
    return out, notes, fed


def test_prints_each_finished_round_once_and_pages_through_long_federations() -> None:
    n = PAGE * 2 + 7
    fake = FakeApi([row(k) for k in range(1, n + 1)] + [row(n + 1, "open")], total=n + 5)
    out, notes, fed = run(fake)
    assert len(out) == n and not notes
    assert out[0].startswith(f"round 1/{n + 5}  test acc 0.5010  test loss 0.7000  train loss 0.6900")
    assert "up 2.00 MB (4.0x < fp32)  down 4.00 MB (2.0x < fp32)  1.5s  (3 updates)" in out[0]
    assert out[-1].startswith(f"round {n}/{n + 5}")
    offsets = [c.split("offset=")[1].split("&")[0] for c in fake.calls if "/rounds" in c]
    assert offsets == ["0", str(PAGE), str(2 * PAGE)]
    assert (
        end_line(fed) == f"federation fed running: round {n + 1}/{n + 5}, last test acc {0.5 + n / 1000:.4f}"
    )


def test_follow_waits_for_rounds_rides_out_an_outage_and_stops_when_the_federation_ends() -> None:
    fake = FakeApi([row(1), row(2, "open")], total=4)

    def close_2(f: FakeApi) -> None:
        f.rounds[1] = row(2)
        f.rounds.append(row(3, "open"))
        f.down = 3  # the API goes away for three requests

    def fail_3_and_end(f: FakeApi) -> None:
        f.rounds[2] = row(3, "failed")
        f.state = "failed"

    fake.on_poll = [lambda f: None, lambda f: None, close_2, fail_3_and_end]
    out, notes, fed = run(fake, follow=True, as_json=True)
    assert [json.loads(line)["number"] for line in out] == [1, 2, 3]
    assert json.loads(out[2])["error"] == "no updates before the deadline"
    assert len(notes) == 2 and "unreachable" in notes[0] and "answers again" in notes[1]
    assert fed["state"] == "failed"
    # once round 1 is finished for good, later polls start after it
    assert "offset=0" not in [c for c in fake.calls if "/rounds" in c][-1]


def test_since_filters_and_a_refused_token_or_unknown_federation_is_an_error() -> None:
    fake = FakeApi([row(k) for k in range(1, 6)], total=5, state="completed")
    out, _, _ = run(fake, since=Since(number=4))
    assert [line.split()[1] for line in out] == ["4/5", "5/5"]
    with pytest.raises(ApiError, match="401.*--token"):
        run(fake, token="wrong")
    with pytest.raises(ApiError, match="404"):
        run(fake, name="x")
    fake.down = 1
    with pytest.raises(httpx.ConnectError):  # before the first answer an outage is the user's error
        run(fake)


def test_a_failed_round_says_why() -> None:
    out, _, _ = run(FakeApi([row(1, "failed")], total=2, state="running"))
    assert out == ["round 1: FAILED: no updates before the deadline"]
