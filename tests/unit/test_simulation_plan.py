"""The plan of `strata simulate`: names, tokens, shards and host processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.data import Example, write_examples
from worker.errors import WorkerError
from worker.simulation_plan import Pool, assign, local_data, names, partition, plan, read_tokens, shard_files


def _pool(n: int, labelled: bool = True) -> Pool:
    return Pool([Example(f"text {i}", i % 3 if labelled else -1) for i in range(n)], None, False)


def test_names_are_zero_padded_and_widen_past_ten_thousand() -> None:
    assert names("sim", 3) == ["sim-0000", "sim-0001", "sim-0002"]
    assert names("x", 12_000)[-1] == "x-11999" and names("x", 12_000)[0] == "x-00000"


def test_tokens_file_gives_one_token_a_line_and_refuses_too_few(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("# sim tokens\nt-aaaaaaaa\n\n  t-bbbbbbbb  \nt-cccccccc\n")
    assert read_tokens(path, 2) == ["t-aaaaaaaa", "t-bbbbbbbb"]
    with pytest.raises(WorkerError, match="holds 3 token"):
        read_tokens(path, 4)
    with pytest.raises(WorkerError, match="cannot read"):
        read_tokens(tmp_path / "missing.txt", 1)


@pytest.mark.parametrize("how", ["iid", "dirichlet"])
def test_each_example_goes_to_exactly_one_virtual_worker(how: str) -> None:
    shards = partition(_pool(300), 7, how, alpha=0.5, seed=1)
    assert len(shards) == 7 and all(shards)
    assert sorted(i for s in shards for i in s) == list(range(300))
    assert shards == partition(_pool(300), 7, how, alpha=0.5, seed=1)  # reproducible
    assert shards != partition(_pool(300), 7, how, alpha=0.5, seed=2)


def test_partition_refuses_what_it_cannot_share_out() -> None:
    with pytest.raises(WorkerError, match="cannot give 20 virtual workers one each"):
        partition(_pool(10), 20, "iid", 0.5, 0)
    with pytest.raises(WorkerError, match="without one"):
        partition(_pool(30, labelled=False), 3, "dirichlet", 0.5, 0)


def test_plan_and_assignment_round_robin_without_empty_processes() -> None:
    members = plan("w", ["t0", "t1", "t2", "t3", "t4"], shards=[[0], [1], [2], [3], [4]])
    assert [(m.name, m.token, m.shard) for m in members[:2]] == [
        ("w-0000", "t0", (0,)),
        ("w-0001", "t1", (1,)),
    ]
    groups = assign(members, 2)
    assert [[m.index for m in g] for g in groups] == [[0, 2, 4], [1, 3]]
    assert len(assign(members, 9)) == 5


def test_local_data_holds_out_a_share_of_each_shard(tmp_path: Path) -> None:
    pool = _pool(100)
    member = plan("w", ["t"], shards=[list(range(40))])[0]
    data, labels = local_data(member, pool, 0.25, seed=0)
    assert len(data.train) == 30 and len(data.eval) == 10 and labels is None
    assert sorted(e.text for e in data.train + data.eval) == sorted(f"text {i}" for i in range(40))
    folder = tmp_path / "shards"
    write_examples(folder / "b.jsonl", [Example("b", 1)])
    write_examples(folder / "a.jsonl", [Example("a", 0), Example("c", 1)])
    (folder / "notes.txt").write_text("not data")
    files = shard_files(folder)
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    data, _ = local_data(plan("w", ["t"], files=files[:1])[0], None, 0.0, seed=0)
    assert [e.text for e in data.train] == ["a", "c"] and data.eval == []
