"""bench/transport.py on a few megabytes: both server kinds receive every byte and the report is written."""

from __future__ import annotations

from pathlib import Path

from bench import transport


def test_the_transport_bench_measures_both_server_kinds(tmp_path: Path) -> None:
    out = tmp_path / "transport.md"
    assert (
        transport.main(["--gb", "0.008", "--workers", "1", "2", "--chunk-kib", "256", "--out", str(out)]) == 0
    )
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| aio", "| sync"))]
    assert [r.split("|")[1:3] for r in rows] == [
        [" aio ", " 1 "],
        [" aio ", " 2 "],
        [" sync ", " 1 "],
        [" sync ", " 2 "],
    ]
