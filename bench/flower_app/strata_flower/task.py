"""WORKLOAD.md's model, data, local training and evaluation, shared by the ServerApp and the ClientApp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MAX_LEN, BATCH, LR, EVAL_BATCH = 64, 32, 5e-5, 128


def load_model(model_dir: str) -> tuple[Any, Any]:
    """torch.manual_seed(0) immediately before from_pretrained: the new head is the same everywhere."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    return model, AutoTokenizer.from_pretrained(model_dir)


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def encode(tokenizer: Any, rows: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    enc = tokenizer([r["text"] for r in rows], max_length=MAX_LEN, truncation=True, padding="longest",
                    return_tensors="pt")  # fmt: skip
    return dict(enc), torch.tensor([int(r["label"]) for r in rows])


def train_epoch(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], server_round: int, client: int
) -> float:
    """1 epoch, batch 32, a fresh AdamW (lr 5e-5, no weight decay), seeds 1000·round + client."""
    seed = 1000 * server_round + client
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0)
    total, seen = 0.0, 0
    for start in range(0, len(rows), BATCH):
        batch = [rows[int(i)] for i in order[start : start + BATCH]]
        inputs, labels = encode(tokenizer, batch)
        out = model(**inputs, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        total += float(out.loss) * len(batch)
        seen += len(batch)
    return total / seen


@torch.no_grad()
def evaluate(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Accuracy and mean cross-entropy on the test rows, batches of 128."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for start in range(0, len(rows), EVAL_BATCH):
        batch = rows[start : start + EVAL_BATCH]
        inputs, labels = encode(tokenizer, batch)
        out = model(**inputs, labels=labels)
        correct += int((out.logits.argmax(-1) == labels).sum())
        loss += float(out.loss) * len(batch)
        n += len(batch)
    return correct / n, loss / n
