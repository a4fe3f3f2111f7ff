"""The rank protocol of a worker that torchrun spreads over several GPUs of one organisation.

    torchrun --standalone --nproc-per-node 4 -m strata.cli worker ...

Rank 0 is the worker the coordinator sees: it joins, takes tasks, pulls versions and sends one update
per round. At each round it announces the task to the other ranks and broadcasts the version's weights;
every rank then trains the same model on its own shard of the local data under DistributedDataParallel
(gradients averaged across ranks by all-reduce, so every replica takes the same steps), and rank 0 sends
Δ for all of them, weighted by all the organisation's examples. Ranks talk over NCCL on GPUs and gloo
on CPUs. Messages between ranks are JSON and raw tensors: nothing is unpickled.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import RoundTask, task_from_proto, task_to_proto

log = logging.getLogger("strata.worker")


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    local_rank: int
    device: str

    @property
    def leader(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(requested_device: str) -> Rank:
    """Join the process group torchrun set up; each rank takes the GPU of its local rank (or the CPU)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = requested_device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    # rank 0 talks to the coordinator between rounds, which may take long: the others wait that long
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=dt.timedelta(hours=24))
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    r = Rank(dist.get_rank(), dist.get_world_size(), local_rank, device)
    log.info("rank %d of %d on %s", r.rank, r.world, device)
    return r


def finish() -> None:
    """Leave the process group before the interpreter exits: left to static destructors, gloo's threads
    could still be running and abort the process ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(items: list[Any]) -> list[Any]:
    """This rank's share of the examples (all of them outside a process group)."""
    if not active():
        return items
    return items[dist.get_rank() :: dist.get_world_size()]


def all_sum(values: list[float], device: str) -> list[float]:
    """Element-wise sum over ranks (the values themselves outside a process group)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(x) for x in t.tolist()]


def check_in_sync(model: torch.nn.Module, device: str) -> float:
    """Fail loudly if the replicas' trained weights differ across ranks (they must not under DDP);
    returns the largest difference of the ranks' weight fingerprints (0.0 outside a process group)."""
    if not active():
        return 0.0
    with torch.no_grad():
        fp = sum(
            (
                float(p.double().sum()) + float(p.double().pow(2).sum())
                for p in model.parameters()
                if p.requires_grad
            ),
            0.0,
        )
    every = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=device)
    every[dist.get_rank()] = fp
    dist.all_reduce(every)
    spread = float(every.max() - every.min())
    if spread > 1e-6 * max(1.0, abs(fp)):
        raise RuntimeError(f"the ranks' weights diverged during training (fingerprints {every.tolist()})")
    return spread


def _broadcast(message: dict[str, Any] | None, device: str) -> dict[str, Any]:
    """Broadcast a JSON message from rank 0 (which passes it) to every rank (which get it back)."""
    data = json.dumps(message).encode() if message is not None else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
        if message is not None
        else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    )
    dist.broadcast(buf, src=0)
    return json.loads(buf.cpu().numpy().tobytes().decode())  # type: ignore[no-any-return]


def start_round(rank: Rank, model: torch.nn.Module, assets: Path, task: RoundTask) -> None:
    """Every rank at the start of a round: rank 0 announces it (the others got it from `next_round`), then
    every rank takes rank 0's weights (in place, in a fixed order)."""
    if rank.leader:
        task_bytes = task_to_proto(task).SerializeToString()
        _broadcast(
            {"kind": "train", "assets": str(assets), "task": base64.b64encode(task_bytes).decode()},
            rank.device,
        )
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            dist.broadcast(state[name], src=0)


def next_round(rank: Rank) -> tuple[Path, RoundTask] | None:
    """Ranks above 0: the assets folder and task of the round rank 0 announces next; None once it is done."""
    msg = _broadcast(None, rank.device)
    if msg.get("kind") != "train":
        return None
    return Path(msg["assets"]), task_from_proto(pb.Task.FromString(base64.b64decode(msg["task"])))


def announce_done(rank: Rank) -> None:
    """Rank 0: tell the other ranks that the federation is over."""
    _broadcast({"kind": "done"}, rank.device)
