"""The ClientApp: each round, load the global weights, train one epoch on this node's partition, and
send back the whole state_dict (WORKLOAD.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from strata_flower.task import load_model, read_rows, train_epoch

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    started = time.monotonic()
    client = int(context.node_config["partition-id"])
    cfg = context.run_config
    model, tokenizer = load_model(str(cfg["model-dir"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    rows = read_rows(Path(str(cfg["data-dir"])) / f"client_{client}.jsonl")
    setup = time.monotonic() - started
    server_round = int(msg.content["config"]["server-round"])
    loss = train_epoch(model, tokenizer, rows, server_round, client)
    metrics = MetricRecord({"num-examples": len(rows), "train-loss": loss, "setup-s": setup,
                            "train-s": time.monotonic() - started - setup})  # fmt: skip
    return Message(
        content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg
    )
