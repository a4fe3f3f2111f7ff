"""The worker's own examples: training and held-out splits, checked against the federation's labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from strata.data import DataError, Example, find_split, read_examples, read_labels
from strata.instruct import holds_chats, read_chats
from strata.names import LANGUAGE_TASKS
from strata.split import holdout
from worker.errors import WorkerError
from worker.settings import WorkerSettings


@dataclass
class LocalData:
    train: list[Example]
    eval: list[Example]
    chats: bool = False  # instruction data: each example a chat (strata.instruct)


def read_split(path: Path, labels: list[str] | None) -> tuple[list[Example], bool]:
    """A split's examples, and whether they are chats (prompt/response or messages records)."""
    if holds_chats(path):
        return read_chats(path), True
    return read_examples(path, labels, require_labels=False), False


def load_local_data(settings: WorkerSettings) -> tuple[LocalData, list[str] | None]:
    """The worker's own examples: a data folder (train + test splits, labels.json) or one file plus a
    hold-out. Returns the data and the folder's label names, if it has them."""
    if settings.data is None:
        raise WorkerError("data: give the local training data (--data FILE or folder)")
    path = settings.data
    labels: list[str] | None = None
    # unlabelled lines are read (label -1) so a causal-lm federation can use plain text; a classification
    # federation refuses them after joining (check_labels), when the worker knows the task
    if path.is_dir():
        if (path / "labels.json").is_file():
            labels = read_labels(path)
        train_set, chats = read_split(find_split(path, "train"), labels)
        try:
            eval_set, _ = read_split(find_split(path, "test"), labels)
        except DataError:
            eval_set = []
    else:
        (train_set, chats), eval_set = read_split(path, None), []
    if settings.eval_data is not None:
        eval_set, _ = read_split(settings.eval_data, labels)
    if not eval_set and settings.eval_fraction > 0 and len(train_set) >= 2:
        keep, held = holdout(list(range(len(train_set))), settings.eval_fraction, seed=0)
        train_set, eval_set = [train_set[i] for i in keep], [train_set[i] for i in held]
    if not train_set:
        raise WorkerError(f"{path}: no training examples")
    return LocalData(train_set, eval_set, chats), labels


def check_labels(
    data: LocalData,
    local_labels: list[str] | None,
    federation_labels: list[str],
    task: str = "sequence-classification",
) -> None:
    """Refuse local data whose classes do not match the federation's (a causal-lm federation needs text only,
    an instruction federation chats)."""
    if (task == "instruction") != data.chats:
        need = "prompt/response (or messages) records" if task == "instruction" else "text records"
        raise WorkerError(f"a {task} federation trains on {need}; this worker's data holds the other kind")
    if task in LANGUAGE_TASKS:
        return
    unlabelled = sum(1 for ex in data.train + data.eval if ex.label < 0)
    if unlabelled:
        raise WorkerError(
            f"{unlabelled} local example(s) have no label; a {task} federation needs a label on every example"
        )
    if local_labels is not None and local_labels != federation_labels:
        raise WorkerError(
            f"local labels {local_labels} differ from the federation's labels {federation_labels}"
        )
    top = max(ex.label for ex in data.train + data.eval)
    if top >= len(federation_labels):
        raise WorkerError(
            f"label {top} is out of range for the federation's {len(federation_labels)} classes"
        )
