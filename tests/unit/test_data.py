"""Unit tests for strata.data: reading, writing and validating text-classification splits."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import zstandard

from strata.data import (
    DataError,
    DatasetDir,
    Example,
    find_split,
    load_dataset_dir,
    read_examples,
    read_labels,
    write_examples,
    write_labels,
)

EXAMPLES = [
    Example("hello world", 0),
    Example('ünïcödé — ok, "quoted", comma', 1),
    Example("line\nbreak inside", 2),
    Example("", 0),
]
LABELS = ["neg", "pos", "neutral"]


def _write_bytes(path: Path, data: bytes) -> Path:
    if path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor(level=3).compress(data)
    path.write_bytes(data)
    return path


def _write_text(path: Path, text: str) -> Path:
    return _write_bytes(path, text.encode("utf-8"))


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.zst"])
def test_write_read_roundtrip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_examples(path, EXAMPLES)
    assert read_examples(path) == EXAMPLES
    assert read_examples(str(path), LABELS) == EXAMPLES
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind


def test_write_zst_is_compressed_and_plain_is_utf8(tmp_path: Path) -> None:
    write_examples(tmp_path / "a.jsonl.zst", EXAMPLES)
    write_examples(tmp_path / "a.jsonl", EXAMPLES)
    plain = (tmp_path / "a.jsonl").read_bytes()
    assert (
        zstandard.ZstdDecompressor().decompressobj().decompress((tmp_path / "a.jsonl.zst").read_bytes())
        == plain
    )
    assert "ünïcödé".encode() in plain  # ensure_ascii=False
    assert plain.count(b"\n") == len(EXAMPLES)


def test_write_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_examples(path, EXAMPLES)
    write_examples(path, EXAMPLES[:1])
    assert read_examples(path) == EXAMPLES[:1]


def test_write_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl.zst"
    write_examples(path, EXAMPLES)
    with pytest.raises(DataError, match="example 1: label must be an int"):
        write_examples(path, [Example("a", 0), Example("b", True)])
    assert read_examples(path) == EXAMPLES
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_rejects_non_jsonl_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\.jsonl or \.jsonl\.zst"):
        write_examples(tmp_path / "s.csv", EXAMPLES)


def test_write_creates_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "train.jsonl"
    write_examples(path, EXAMPLES)
    assert read_examples(path) == EXAMPLES


@pytest.mark.parametrize("name", ["s.csv", "s.csv.zst"])
def test_csv_roundtrip_with_quoting(tmp_path: Path, name: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["label", "text"])
    for ex in EXAMPLES:
        writer.writerow([ex.label, ex.text])
    path = _write_text(tmp_path / name, buf.getvalue())
    assert read_examples(path) == EXAMPLES


@pytest.mark.parametrize(
    ("content", "labels", "expected"),
    [
        ("text,label\na,0\nb,1\n", None, [Example("a", 0), Example("b", 1)]),
        ("sentence,label\na,1\n", None, [Example("a", 1)]),
        ("Text,Label\r\na,1\r\n", None, [Example("a", 1)]),
        ("\ufefftext,label\na,1\n", None, [Example("a", 1)]),
        ("idx,text,label\n7,a,pos\n8,b,neg\n", ["neg", "pos"], [Example("a", 1), Example("b", 0)]),
        ("text,label\na, 1 \n\n,\nb,neg\n", ["neg", "pos"], [Example("a", 1), Example("b", 0)]),
    ],
    ids=["ints", "sentence-column", "crlf-uppercase", "bom", "names-extra-column", "blank-rows-spaces"],
)
def test_read_csv_variants(
    tmp_path: Path, content: str, labels: list[str] | None, expected: list[Example]
) -> None:
    assert read_examples(_write_text(tmp_path / "s.csv", content), labels) == expected


def test_read_jsonl_skips_blank_lines_and_accepts_extra_keys(tmp_path: Path) -> None:
    content = '\n{"text": "a", "label": 0, "id": 5}\n   \n{"label": 1, "text": "b"}\n\n'
    path = _write_text(tmp_path / "s.jsonl", content)
    assert read_examples(path) == [Example("a", 0), Example("b", 1)]


def test_read_jsonl_zst_multiple_frames(tmp_path: Path) -> None:
    cctx = zstandard.ZstdCompressor()
    data = cctx.compress(b'{"text": "a", "label": 0}\n') + cctx.compress(b'{"text": "b", "label": 1}\n')
    (tmp_path / "s.jsonl.zst").write_bytes(data)
    assert read_examples(tmp_path / "s.jsonl.zst") == [Example("a", 0), Example("b", 1)]


def test_example_is_frozen() -> None:
    ex = Example("a", 0)
    with pytest.raises(AttributeError):
        ex.label = 1  # type: ignore[misc]


# --- read_examples error paths ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.zst"])
@pytest.mark.parametrize(
    ("content", "labels", "message"),
    [
        ('{"text": "a", "label": 0}\n{"text": "b", "label": 1\n', None, r":2: invalid JSON"),
        ('{"text": "a", "label": 0}\n\n[1, 2]\n', None, r":3: expected a JSON object, got list"),
        ('{"label": 0}\n', None, r':1: missing "text"'),
        ('{"text": "a", "label": 0}\n{"text": "a"}\n', None, r':2: missing "label"'),
        ('{"text": 5, "label": 0}\n', None, r":1: text must be a string, got int"),
        ('{"text": null, "label": 0}\n', None, r":1: text must be a string, got NoneType"),
        ('{"text": "a", "label": true}\n', None, r":1: label must be an int, got bool"),
        ('{"text": "a", "label": 1.0}\n', None, r":1: label must be an int, got float"),
        ('{"text": "a", "label": "1"}\n', None, r":1: label must be an int, got str"),
        ('{"text": "a", "label": -1}\n', None, r":1: label -1 is negative"),
        (
            '{"text": "a", "label": 0}\n{"text": "b", "label": 2}\n',
            ["x", "y"],
            r":2: label 2 out of range for 2 labels",
        ),
    ],
    ids=[
        "bad-json",
        "not-object",
        "no-text",
        "no-label",
        "text-int",
        "text-null",
        "label-bool",
        "label-float",
        "label-str",
        "label-negative",
        "label-out-of-range",
    ],
)
def test_read_jsonl_errors(
    tmp_path: Path, name: str, content: str, labels: list[str] | None, message: str
) -> None:
    path = _write_text(tmp_path / name, content)
    with pytest.raises(DataError, match=rf"^{_re(path)}{message}"):
        read_examples(path, labels)


@pytest.mark.parametrize("name", ["s.csv", "s.csv.zst"])
@pytest.mark.parametrize(
    ("content", "labels", "message"),
    [
        ("", None, r":1: empty CSV file"),
        ("body,label\na,0\n", None, r':1: CSV header has no "text" \(or "sentence\"\) column'),
        ("text,lbl\na,0\n", None, r':1: CSV header has no "label" column'),
        ("text,label\na,0\nb\n", None, r':3: missing "label"'),
        ("label,text\n0,a\n1\n", None, r':3: missing "text"'),
        ("text,label\na,0\nb,pos\n", None, r":3: label 'pos' is not an int"),
        ("text,label\na,neg\nb,maybe\n", ["neg", "pos"], r":3: unknown label name 'maybe'; known: neg, pos"),
        ("text,label\na,0\nb,5\n", ["neg", "pos"], r":3: label 5 out of range for 2 labels"),
        ("text,label\na,-1\n", None, r":2: label -1 is negative"),
        ('text,label\n"a\nb",0\n"c,1\n', None, r":4: malformed CSV"),
    ],
    ids=[
        "empty",
        "no-text-column",
        "no-label-column",
        "short-row-label",
        "short-row-text",
        "name-without-labels",
        "unknown-name",
        "int-out-of-range",
        "negative",
        "unterminated-quote",
    ],
)
def test_read_csv_errors(
    tmp_path: Path, name: str, content: str, labels: list[str] | None, message: str
) -> None:
    path = _write_text(tmp_path / name, content)
    with pytest.raises(DataError, match=rf"^{_re(path)}{message}"):
        read_examples(path, labels)


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.zst", "s.csv"])
def test_read_invalid_utf8_names_line(tmp_path: Path, name: str) -> None:
    header = b"text,label\n" if name.endswith(".csv") else b""
    row = b"ok,0\n" if header else b'{"text": "ok", "label": 0}\n'
    path = _write_bytes(tmp_path / name, header + row + b"\xff\xfe bad\n")
    line = 3 if header else 2
    with pytest.raises(DataError, match=rf"^{_re(path)}:{line}: not valid UTF-8"):
        read_examples(path)


def test_read_corrupt_zstd(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl.zst"
    path.write_bytes(b"this is not zstd data at all")
    with pytest.raises(DataError, match=rf"^{_re(path)}: corrupt zstd data"):
        read_examples(path)


@pytest.mark.parametrize("name", ["s.txt", "s.json", "s.zst", "s.tsv.zst", "jsonl"])
def test_read_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = _write_text(tmp_path / name, "x")
    with pytest.raises(DataError, match=rf"^{_re(path)}: unsupported file suffix"):
        read_examples(path)


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.csv.zst"])
def test_read_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=rf"^{_re(tmp_path / name)}: file not found"):
        read_examples(tmp_path / name)


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


# --- labels ----------------------------------------------------------------------------------


def test_labels_roundtrip(tmp_path: Path) -> None:
    write_labels(tmp_path, ["négatif", "positive"])
    assert read_labels(tmp_path) == ["négatif", "positive"]
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('["a", "b"', r":1: invalid JSON"),
        ('{"a": 0}', r": expected a JSON list of strings"),
        ('["a", 1]', r": expected a JSON list of strings"),
        ("[]", r": label list is empty"),
        ('["a", "b", "a"]', r": duplicate label names: a"),
    ],
    ids=["bad-json", "object", "non-string", "empty", "duplicates"],
)
def test_read_labels_errors(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "labels.json").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{_re(tmp_path / 'labels.json')}{message}"):
        read_labels(tmp_path)


def test_read_labels_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="labels.json: file not found"):
        read_labels(tmp_path)


@pytest.mark.parametrize("labels", [[], ["a", "a"], ["a", 1]], ids=["empty", "duplicates", "non-string"])
def test_write_labels_rejects_bad_lists(tmp_path: Path, labels: list[str]) -> None:
    with pytest.raises(DataError):
        write_labels(tmp_path, labels)
    assert not (tmp_path / "labels.json").exists()


# --- find_split / load_dataset_dir -------------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (["train.jsonl", "train.jsonl.zst", "train.csv"], "train.jsonl"),
        (["train.jsonl.zst", "train.csv"], "train.jsonl.zst"),
        (["train.csv.zst", "train.csv"], "train.csv"),
        (["train.csv.zst", "test.jsonl"], "train.csv.zst"),
    ],
)
def test_find_split_order(tmp_path: Path, present: list[str], expected: str) -> None:
    for name in present:
        (tmp_path / name).write_text("")
    assert find_split(tmp_path, "train") == tmp_path / expected


def test_find_split_missing_lists_candidates(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(
        DataError,
        match=r"no 'train' split found \(looked for train\.jsonl, train\.jsonl\.zst, train\.csv, train\.csv\.zst\)",
    ):
        find_split(tmp_path, "train")


def test_load_dataset_dir_with_labels(tmp_path: Path) -> None:
    write_examples(tmp_path / "train.jsonl.zst", EXAMPLES)
    _write_text(tmp_path / "test.csv", "text,label\nx,pos\ny,2\n")
    write_labels(tmp_path, LABELS)
    ds = load_dataset_dir(tmp_path)
    assert ds == DatasetDir(train=EXAMPLES, test=[Example("x", 1), Example("y", 2)], labels=LABELS)


def test_load_dataset_dir_checks_range_against_labels(tmp_path: Path) -> None:
    write_examples(tmp_path / "train.jsonl", EXAMPLES)  # uses label 2
    write_examples(tmp_path / "test.jsonl", EXAMPLES[:1])
    write_labels(tmp_path, ["neg", "pos"])
    with pytest.raises(DataError, match=r"train\.jsonl:3: label 2 out of range for 2 labels"):
        load_dataset_dir(tmp_path)


def test_load_dataset_dir_without_labels_json_infers_names(tmp_path: Path) -> None:
    write_examples(tmp_path / "train.jsonl", [Example("a", 0), Example("b", 1)])
    write_examples(tmp_path / "test.jsonl", [Example("c", 3)])
    ds = load_dataset_dir(tmp_path)
    assert ds.labels == ["0", "1", "2", "3"]
    assert ds.train == [Example("a", 0), Example("b", 1)]
    assert ds.test == [Example("c", 3)]


def test_load_dataset_dir_without_labels_json_rejects_names(tmp_path: Path) -> None:
    _write_text(tmp_path / "train.csv", "text,label\na,pos\n")
    write_examples(tmp_path / "test.jsonl", [Example("c", 0)])
    with pytest.raises(DataError, match=r"train\.csv:2: label 'pos' is not an int"):
        load_dataset_dir(tmp_path)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("nothing", "data-set folder not found"),
        ("no-test", "no 'test' split found"),
        ("no-train", "no 'train' split found"),
        ("empty", "no labels.json and no examples"),
        ("bad-labels", "labels.json: expected a JSON list of strings"),
    ],
)
def test_load_dataset_dir_errors(tmp_path: Path, setup: str, message: str) -> None:
    directory = tmp_path / "ds"
    if setup != "nothing":
        directory.mkdir()
    if setup in ("no-test", "empty", "bad-labels"):
        write_examples(directory / "train.jsonl", [] if setup == "empty" else EXAMPLES)
    if setup in ("no-train", "empty", "bad-labels"):
        write_examples(directory / "test.jsonl", [] if setup == "empty" else EXAMPLES)
    if setup == "bad-labels":
        (directory / "labels.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(DataError, match=message):
        load_dataset_dir(directory)


def _re(path: Path) -> str:
    return re.escape(str(path))
