"""Who the virtual workers of `strata simulate` are: names, tokens, data shards and host processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from strata.data import DataError, Example, find_split, read_labels
from strata.split import dirichlet_split, holdout, iid_split
from worker.errors import WorkerError
from worker.local_data import LocalData, read_split

#: the files a `--partition files` folder may hold, one per virtual worker (labels.json aside)
SHARD_SUFFIXES = (".jsonl", ".jsonl.zst", ".csv")


@dataclass(frozen=True, slots=True)
class Member:
    """One virtual worker: its index, name, token and shard (indices into the pool, or its own file)."""

    index: int
    name: str
    token: str
    shard: tuple[int, ...] = ()
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class Pool:
    """The examples the virtual workers share out, their label names (labels.json) and whether they are chats."""

    examples: list[Example]
    labels: list[str] | None
    chats: bool


def names(prefix: str, count: int) -> list[str]:
    """`prefix-0000`, `prefix-0001`, ... (wider when there are more than 10,000)."""
    width = max(4, len(str(count - 1)))
    return [f"{prefix}-{k:0{width}d}" for k in range(count)]


def read_tokens(path: Path, count: int) -> list[str]:
    """Line k of `path` is virtual worker k's token (blank lines and # comments skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WorkerError(f"tokens_file: cannot read {path}: {exc.strerror}") from None
    tokens = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
    if len(tokens) < count:
        raise WorkerError(
            f"tokens_file: {path} holds {len(tokens)} token(s); {count} virtual workers need one each"
        )
    return tokens[:count]


def shard_files(folder: Path) -> list[Path]:
    """A `--partition files` folder's data files, in name order."""
    if not folder.is_dir():
        raise WorkerError(
            f"data: partition files needs a folder with one file per virtual worker; {folder} is not one"
        )
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SHARD_SUFFIXES))


def read_pool(path: Path) -> Pool:
    """The examples to share out: a file, or a folder's train split (with its labels.json)."""
    labels = read_labels(path) if path.is_dir() and (path / "labels.json").is_file() else None
    source = find_split(path, "train") if path.is_dir() else path
    examples, chats = read_split(source, labels)
    if not examples:
        raise DataError(f"{source}: no examples")
    return Pool(examples, labels, chats)


def partition(pool: Pool, count: int, how: str, alpha: float, seed: int) -> list[list[int]]:
    """Each virtual worker's indices into the pool: IID, or label-skewed by Dirichlet(alpha)."""
    if len(pool.examples) < count:
        raise WorkerError(f"data: {len(pool.examples)} examples cannot give {count} virtual workers one each")
    if how == "iid":
        return iid_split(len(pool.examples), count, seed)
    labels = [ex.label for ex in pool.examples]
    if pool.chats or min(labels) < 0:
        raise WorkerError("partition dirichlet splits by label; this data has examples without one (use iid)")
    return dirichlet_split(labels, count, alpha, seed)


def plan(
    prefix: str, tokens: list[str], shards: list[list[int]] | None = None, files: list[Path] | None = None
) -> list[Member]:
    """The virtual workers: one per token, each with its shard of the pool or its own file."""
    members = []
    for k, (name, token) in enumerate(zip(names(prefix, len(tokens)), tokens, strict=True)):
        shard = tuple(shards[k]) if shards is not None else ()
        members.append(Member(k, name, token, shard, files[k] if files is not None else None))
    return members


def assign(members: list[Member], processes: int) -> list[list[Member]]:
    """Virtual worker k goes to process k mod P (no process left empty)."""
    count = min(processes, len(members))
    return [members[p::count] for p in range(count)]


def local_data(
    member: Member, pool: Pool | None, eval_fraction: float, seed: int
) -> tuple[LocalData, list[str] | None]:
    """A virtual worker's training examples and held-out share (`eval_fraction` of its shard)."""
    if member.file is not None:
        labels = read_labels(member.file.parent) if (member.file.parent / "labels.json").is_file() else None
        examples, chats = read_split(member.file, labels)
    else:
        assert pool is not None
        examples, chats, labels = [pool.examples[i] for i in member.shard], pool.chats, pool.labels
    held: list[Example] = []
    if eval_fraction > 0 and len(examples) >= 2:
        keep, out = holdout(list(range(len(examples))), eval_fraction, seed + member.index)
        examples, held = [examples[i] for i in keep], [examples[i] for i in out]
    if not examples:
        raise WorkerError(f"{member.name}: no training examples in its shard")
    return LocalData(examples, held, chats), labels
