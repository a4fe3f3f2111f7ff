"""The worker's own examples: training and held-out splits, checked against the federation's labels."""

from __future__ import annotations

from dataclasses import dataclass

from strata.data import DataError, Example, find_split, read_examples, read_labels
from strata.split import holdout
from worker.errors import WorkerError
from worker.settings import WorkerSettings


@dataclass
class LocalData:
    train: list[Example]
    eval: list[Example]


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
        train_set = read_examples(find_split(path, "train"), labels, require_labels=False)
        try:
            eval_set = read_examples(find_split(path, "test"), labels, require_labels=False)
        except DataError:
            eval_set = []
    else:
        train_set, eval_set = read_examples(path, require_labels=False), []
    if settings.eval_data is not None:
        eval_set = read_examples(settings.eval_data, labels, require_labels=False)
    if not eval_set and settings.eval_fraction > 0 and len(train_set) >= 2:
        keep, held = holdout(list(range(len(train_set))), settings.eval_fraction, seed=0)
        train_set, eval_set = [train_set[i] for i in keep], [train_set[i] for i in held]
    if not train_set:
        raise WorkerError(f"{path}: no training examples")
    return LocalData(train_set, eval_set), labels


def check_labels(
    data: LocalData,
    local_labels: list[str] | None,
    federation_labels: list[str],
    task: str = "sequence-classification",
) -> None:
    """Refuse local data whose classes do not match the federation's (a causal-lm federation needs text only)."""
    if task == "causal-lm":
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
