"""The ServerApp: FedAvg over all 8 nodes for 5 rounds with server-side evaluation of the initial model
and of every round's model (WORKLOAD.md); per round it records accuracy, loss, wall seconds (sending the
round's train messages → end of its evaluation) and the bytes of the arrays each way, and writes them to
the run config's `results` file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from strata_flower.task import evaluate, load_model, read_rows

app = ServerApp()


def nbytes(arrays: ArrayRecord) -> int:
    return sum(a.numpy().nbytes for a in arrays.values())


class MeasuredFedAvg(FedAvg):
    """FedAvg that counts the arrays it sends and receives and when each round starts."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, dict[str, float]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.rounds[server_round] = {
            "start": time.monotonic(),
            "down": nbytes(arrays) * len(messages),
            "up": 0.0,
        }
        self.sent = {k: v.numpy().copy() for k, v in arrays.items()}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        r = self.rounds[server_round]
        r["up"] = float(sum(nbytes(m.content["arrays"]) for m in replies if m.has_content()))
        losses = [m.content["metrics"]["train-loss"] for m in replies if m.has_content()]
        r["train_loss"] = sum(losses) / max(len(losses), 1)
        r["replies"] = len(replies)
        agg, metrics = super().aggregate_train(server_round, replies)
        if agg is not None:  # how far the new global model moved: a check that the round changed it
            r["moved"] = float(sum(np.abs(v.numpy() - self.sent[k]).sum() for k, v in agg.items()))
        return agg, metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    torch.set_num_threads(2)
    cfg = context.run_config
    started = time.monotonic()
    model, tokenizer = load_model(str(cfg["model-dir"]))
    test = read_rows(Path(str(cfg["data-dir"])) / "test.jsonl")
    strategy = MeasuredFedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=8, min_available_nodes=8
    )
    evals: dict[int, dict[str, float]] = {}

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        t = time.monotonic()
        model.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = evaluate(model, tokenizer, test)
        evals[server_round] = {
            "accuracy": acc,
            "loss": loss,
            "eval_s": time.monotonic() - t,
            "end": time.monotonic(),
        }
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=int(cfg["num-server-rounds"]),
                   evaluate_fn=central)  # fmt: skip
    rounds = []
    for t in sorted(strategy.rounds):
        r, e = strategy.rounds[t], evals[t]
        rounds.append({"round": t, "accuracy": e["accuracy"], "loss": e["loss"], "seconds": e["end"] - r["start"],
                       "eval_s": e["eval_s"], "down": r["down"], "up": r["up"], "train_loss": r.get("train_loss"),
                       "replies": r.get("replies"), "moved": r.get("moved")})  # fmt: skip
    out = {"initial": evals.get(0), "rounds": rounds, "serverapp_seconds": time.monotonic() - started}
    Path(str(cfg["results"])).write_text(json.dumps(out, indent=1))
