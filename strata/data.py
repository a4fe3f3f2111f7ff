"""Reading and writing text data sets (JSON Lines or CSV, optionally zstd-compressed): labelled texts for
classification, or text alone (``require_labels=False``) for causal language modelling."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from strata import atomic

__all__ = [
    "NO_LABEL",
    "SPLIT_SUFFIXES",
    "DataError",
    "DatasetDir",
    "Example",
    "find_split",
    "load_dataset_dir",
    "read_examples",
    "read_labels",
    "write_examples",
    "write_labels",
]

#: Suffixes a split file may have, in the order ``find_split`` tries them.
SPLIT_SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.zst", ".csv", ".csv.zst")

LABELS_FILE = "labels.json"
ZSTD_LEVEL = 3
_TEXT_COLUMNS = ("text", "sentence")
_INT_RE = re.compile(r"[+-]?\d+")
#: the label of a text read without one (``read_examples(..., require_labels=False)``)
NO_LABEL = -1


@dataclass(frozen=True, slots=True)
class Example:
    """One text and its label: an index into the data set's label names, or ``NO_LABEL`` (-1) for a
    text that has none (read with ``require_labels=False``, e.g. for causal language modelling)."""

    text: str
    label: int


class DataError(ValueError):
    """Bad data-set input; the message names the file and, where it applies, the 1-based line."""


@dataclass
class DatasetDir:
    """A data-set folder loaded into memory: train and test splits and the label names."""

    train: list[Example]
    test: list[Example]
    labels: list[str]


def _suffix_of(path: Path) -> str | None:
    name = path.name.lower()
    # Longest first so that ".jsonl.zst" wins over a bare ".zst" check.
    for suffix in sorted(SPLIT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


@contextlib.contextmanager
def _open_lines(path: Path) -> Iterator[Iterator[str]]:
    """Yield the decoded lines (line ends kept) of ``path``, decompressing a ``.zst`` file on the fly.

    Lines are decoded one at a time so that invalid UTF-8 is reported with its exact line number.
    """
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    with raw:
        stream: IO[bytes] = raw
        if path.name.lower().endswith(".zst"):
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            stream = io.BufferedReader(reader)  # type: ignore[arg-type]
        try:
            yield _decode_lines(path, stream)
        except zstandard.ZstdError as exc:
            raise DataError(f"{path}: corrupt zstd data: {exc}") from None


def _decode_lines(path: Path, stream: IO[bytes]) -> Iterator[str]:
    for lineno, line in enumerate(stream, start=1):
        try:
            # utf-8-sig on the first line tolerates a byte-order mark (spreadsheet exports).
            yield line.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid UTF-8: {exc.reason}") from None


def _check_label(value: Any, num_labels: int | None, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: label must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise DataError(f"{where}: label {value} is negative")
    if num_labels is not None and value >= num_labels:
        raise DataError(f"{where}: label {value} out of range for {num_labels} labels (0..{num_labels - 1})")
    return value


def _check_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: text must be a string, got {type(value).__name__}")
    return value


def json_records(path: Path) -> Iterator[tuple[Any, str]]:
    """(decoded value, "file:line") of each non-blank line of a JSON Lines file (``.zst`` too);
    :class:`DataError` names the file and line of invalid JSON."""
    with _open_lines(path) as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            yield value, where


def _read_jsonl(path: Path, num_labels: int | None, require_labels: bool = True) -> list[Example]:
    examples: list[Example] = []
    for obj, where in json_records(path):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for key in ("text", "label") if require_labels else ("text",):
            if key not in obj:
                raise DataError(f'{where}: missing "{key}"')
        label = _check_label(obj["label"], num_labels, where) if "label" in obj else NO_LABEL
        examples.append(Example(_check_text(obj["text"], where), label))
    return examples


def _parse_csv_label(value: str, labels: Sequence[str] | None, where: str) -> int:
    value = value.strip()
    if _INT_RE.fullmatch(value):
        return _check_label(int(value), None if labels is None else len(labels), where)
    if labels is None:
        raise DataError(f"{where}: label {value!r} is not an int (label names need labels.json)")
    try:
        return list(labels).index(value)
    except ValueError:
        raise DataError(f"{where}: unknown label name {value!r}; known: {', '.join(labels)}") from None


def _read_csv(path: Path, labels: Sequence[str] | None, require_labels: bool = True) -> list[Example]:
    examples: list[Example] = []
    with _open_lines(path) as lines:
        reader = csv.reader(lines, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}:1: empty CSV file, expected a header row")
            columns = [name.strip().lower() for name in header]
            text_col = next((columns.index(c) for c in _TEXT_COLUMNS if c in columns), None)
            if text_col is None:
                raise DataError(f'{path}:1: CSV header has no "text" (or "sentence") column: {header}')
            if "label" not in columns and require_labels:
                raise DataError(f'{path}:1: CSV header has no "label" column: {header}')
            label_col = columns.index("label") if "label" in columns else None
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                # line_num is the physical line where the record ends (1-based, header included).
                where = f"{path}:{reader.line_num}"
                if len(row) <= text_col:
                    raise DataError(f'{where}: missing "text" (row has {len(row)} fields)')
                cell = row[label_col] if label_col is not None and label_col < len(row) else None
                if cell is None and require_labels:
                    raise DataError(f'{where}: missing "label" (row has {len(row)} fields)')
                if cell is None or (not require_labels and not cell.strip()):
                    label = NO_LABEL
                else:
                    label = _parse_csv_label(cell, labels, where)
                examples.append(Example(row[text_col], label))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    return examples


def read_examples(
    path: str | Path, labels: Sequence[str] | None = None, *, require_labels: bool = True
) -> list[Example]:
    """Read a ``.jsonl``, ``.jsonl.zst``, ``.csv`` or ``.csv.zst`` split into a list of examples.

    JSON Lines: one ``{"text": str, "label": int}`` object per line; blank lines are skipped.
    CSV: a header row with a ``text`` (or ``sentence``) column and a ``label`` column; a label is
    an int or, when ``labels`` is given, one of those names (an int-looking value is read as an int).
    When ``labels`` is given every label must lie in ``0..len(labels)-1``. Labels are never negative.
    With ``require_labels=False`` (text only, as for causal language modelling) the label may be left
    out: a JSON object without ``"label"``, a CSV without a ``label`` column, or a row whose label
    cell is missing or blank gets ``NO_LABEL`` (-1); a label that is given is checked as usual.
    Raises :class:`DataError` naming the file and 1-based line on any bad input.
    """
    path = Path(path)
    suffix = _suffix_of(path)
    if suffix is None:
        raise DataError(f"{path}: unsupported file suffix; expected one of {', '.join(SPLIT_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if suffix.startswith(".jsonl"):
        return _read_jsonl(path, None if labels is None else len(labels), require_labels)
    return _read_csv(path, labels, require_labels)


def read_labels(directory: str | Path) -> list[str]:
    """Read ``labels.json`` in ``directory``: a non-empty JSON list of distinct label-name strings."""
    path = Path(directory) / LABELS_FILE
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8: {exc.reason}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise DataError(f"{path}: expected a JSON list of strings")
    if not value:
        raise DataError(f"{path}: label list is empty")
    if len(set(value)) != len(value):
        dupes = sorted({name for name in value if value.count(name) > 1})
        raise DataError(f"{path}: duplicate label names: {', '.join(dupes)}")
    return value


def find_split(directory: str | Path, split: str) -> Path:
    """Return the first of ``{split}.jsonl``, ``.jsonl.zst``, ``.csv``, ``.csv.zst`` in ``directory``."""
    directory = Path(directory)
    candidates = [directory / f"{split}{suffix}" for suffix in SPLIT_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(c.name for c in candidates)
    raise DataError(f"{directory}: no {split!r} split found (looked for {looked})")


def load_dataset_dir(directory: str | Path) -> DatasetDir:
    """Load the ``train`` and ``test`` splits and label names of a data-set folder.

    ``labels.json`` is expected; when it is missing, every label must be an int (CSV label names
    are then rejected) and the names become ``["0", "1", ..., str(max_label)]``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: data-set folder not found")
    if (directory / LABELS_FILE).exists():
        labels = read_labels(directory)
        train = read_examples(find_split(directory, "train"), labels)
        test = read_examples(find_split(directory, "test"), labels)
        return DatasetDir(train=train, test=test, labels=labels)
    train = read_examples(find_split(directory, "train"))
    test = read_examples(find_split(directory, "test"))
    if not train and not test:
        raise DataError(f"{directory}: no {LABELS_FILE} and no examples to infer label names from")
    num_labels = max(ex.label for ex in (*train, *test)) + 1
    return DatasetDir(train=train, test=test, labels=[str(i) for i in range(num_labels)])


def _jsonl_lines(examples: Iterable[Example]) -> Iterator[str]:
    for i, ex in enumerate(examples):
        if not isinstance(ex.text, str):
            raise DataError(f"example {i}: text must be a string, got {type(ex.text).__name__}")
        _check_label(ex.label, None, f"example {i}")
        yield json.dumps({"text": ex.text, "label": ex.label}, ensure_ascii=False) + "\n"


def write_examples(path: str | Path, examples: Iterable[Example]) -> None:
    """Atomically write ``examples`` as JSON Lines, zstd-compressed (level 3) if ``path`` ends in ``.zst``.

    The zstd frame is streamed, so its header does not record the content size: read it with a
    streaming decompressor (``read_examples``, ``zstd -dc``), not ``ZstdDecompressor().decompress``.
    """
    path = Path(path)
    if _suffix_of(path) not in (".jsonl", ".jsonl.zst"):
        raise DataError(f"{path}: write_examples writes JSON Lines; use a .jsonl or .jsonl.zst path")
    with atomic.atomic_file(path) as raw:
        if path.name.lower().endswith(".zst"):
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            with compressor.stream_writer(raw, closefd=False) as writer:
                for line in _jsonl_lines(examples):
                    writer.write(line.encode("utf-8"))
        else:
            for line in _jsonl_lines(examples):
                raw.write(line.encode("utf-8"))


def write_labels(directory: str | Path, labels: Sequence[str]) -> None:
    """Atomically write ``labels`` as ``labels.json`` in ``directory``."""
    names = list(labels)
    if not names or not all(isinstance(name, str) for name in names):
        raise DataError(f"{Path(directory) / LABELS_FILE}: labels must be a non-empty list of strings")
    if len(set(names)) != len(names):
        raise DataError(f"{Path(directory) / LABELS_FILE}: duplicate label names")
    payload = json.dumps(names, ensure_ascii=False, indent=1) + "\n"
    with atomic.atomic_file(Path(directory) / LABELS_FILE) as raw:
        raw.write(payload.encode("utf-8"))
