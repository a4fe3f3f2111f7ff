"""The coordinator's --labels: a labels.json file, a comma-separated list, or the model config's."""

import json
from pathlib import Path

import pytest

from coordinator.recovery import parse_labels


def test_a_long_comma_separated_list_is_names_not_a_path() -> None:
    # 50 authors' names run past the file system's 255-byte name limit: stat() fails with ENAMETOOLONG
    names = [f"Author{k:02d}Surname{'x' * 10}" for k in range(50)]
    assert parse_labels(",".join(names), None) == names


def test_a_labels_file_and_its_checks(tmp_path: Path) -> None:
    f = tmp_path / "labels.json"
    f.write_text(json.dumps(["neg", "pos"]))
    assert parse_labels(str(f), None) == ["neg", "pos"]
    f.write_text(json.dumps(["only"]))
    with pytest.raises(ValueError, match="at least two"):
        parse_labels(str(f), None)
    with pytest.raises(ValueError, match="at least two"):
        parse_labels("only,", None)
    with pytest.raises(ValueError, match="none given"):
        parse_labels(None, None)
