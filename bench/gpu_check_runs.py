"""The measurements of bench.gpu_check: a plain peft training loop (the baseline), a real LoRA federation
(a `strata coordinator` process and one `strata worker` process per worker), peak memory polled while
they run, and what the coordinator's database recorded of each round and update."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select

from bench.common import ROOT
from coordinator.store import Store
from strata import synthetic
from strata.modeling import build_tokenizer, make_tiny_causal_model_dir
from strata.storage.models import Round, Update, UpdateStatus, Worker
from tests.helpers import TOKENS, CoordinatorProcess, service_env, worker_values

LLAMA_1B = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False,
)  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """What every run trains: the same adapter, batch, sequence length and steps."""

    device: str
    batch: int
    seq_len: int
    steps: int
    rounds: int
    warmup: int
    timeout: float  # seconds a federation may take, start to end
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 2e-4
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def smi(query: str) -> list[list[str]]:
    """nvidia-smi's CSV answer to one --query-* option, as rows of cells (empty when it cannot answer)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:  # "[N/A]" where the driver does not tell
        return None


class MemoryWatch:
    """Peak memory (MiB) of named processes, polled every 0.2 s: on CUDA, nvidia-smi's used_memory of each
    pid (context and caching allocator included) and the device's memory.used; on a CPU, each process's
    VmHWM (peak resident set) from /proc."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.pids: dict[str, int] = {}
        self.peak: dict[str, float] = {}
        self.idle = self._device() if cuda else 0.0  # the device's memory.used before the run
        self.device_peak = self.idle
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def _device(self) -> float:
        return sum(x for row in smi("--query-gpu=memory.used") if (x := number(row[0])) is not None)

    def _poll(self) -> None:
        while True:
            if self.cuda:
                rows = smi("--query-compute-apps=pid,used_memory")
                used = {int(r[0]): number(r[1]) for r in rows if len(r) == 2 and r[0].isdigit()}
                self.device_peak = max(self.device_peak, self._device())
            else:
                used = {pid: vm_hwm(pid) for pid in self.pids.values()}
            for name, pid in list(self.pids.items()):
                if (mib := used.get(pid)) is not None:
                    self.peak[name] = max(self.peak.get(name, 0.0), mib)
            if self.stopped.wait(0.2):
                return

    def stop(self) -> dict[str, float]:
        self.stopped.set()
        self.thread.join(15)
        return dict(self.peak)


def vm_hwm(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def make_data(work: Path, wl: Workload, workers: int = 2) -> tuple[list[Path], list[str]]:
    """Per worker a folder of JSON Lines {"text": ...}: train (4 batches) and test (4 texts). Each text joins
    enough generated sentences (8+ words each) to pass `seq_len` tokens, so no batch holds padding."""
    per_text, n_train, n_test = math.ceil(wl.seq_len / 8) + 1, 4 * wl.batch, 4
    sentences = [e.text for e in synthetic.generate(workers * (n_train + n_test) * per_text, seed=11)]
    texts = [" ".join(sentences[i : i + per_text]) for i in range(0, len(sentences), per_text)]
    folders = []
    for k in range(workers):
        mine, folder = texts[k * (n_train + n_test) : (k + 1) * (n_train + n_test)], work / f"data-{k + 1}"
        folder.mkdir(parents=True)
        for split, rows in (("train", mine[:n_train]), ("test", mine[n_train:])):
            (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
        folders.append(folder)
    return folders, texts


def build_model(folder: Path, texts: list[str], wl: Workload, smoke: bool) -> dict[str, Any]:
    """The LLaMA (LLAMA_1B, built on the device in bf16; smoke: make_tiny_causal_model_dir's), saved as
    safetensors with a tokenizer trained on `texts` ([CLS] its bos, [SEP] its eos); its size and shape."""
    from safetensors import safe_open
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if smoke:
        make_tiny_causal_model_dir(folder, texts, 0, 32, 2, 2, max_len=wl.seq_len, family="llama")
        shape = "hidden 32, 2 layers, 2 heads: make_tiny_causal_model_dir"
    else:
        tok = build_tokenizer(texts)
        tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token
        special = dict(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
        before = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device(wl.device):
                model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B, **special))  # type: ignore[arg-type]
        finally:
            torch.set_default_dtype(before)
        model.save_pretrained(folder, safe_serialization=True)
        del model
        free(wl)
        tok.model_max_length = wl.seq_len
        tok.save_pretrained(folder)
        shape = ", ".join(f"{k.removeprefix('num_').replace('_', ' ')} {v}" for k, v in LLAMA_1B.items())
    saved = AutoTokenizer.from_pretrained(folder)
    shortest = min(len(ids) for ids in saved(texts)["input_ids"])
    if shortest < wl.seq_len:
        raise RuntimeError(f"a text has {shortest} tokens, fewer than seq_len {wl.seq_len}")
    params, files = 0, sorted(folder.glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            params += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    size = sum(p.stat().st_size for p in files)
    return dict(params=params, size=size, shape=shape, vocab=len(saved), shortest=shortest)


def free(wl: Workload) -> None:
    gc.collect()
    if wl.cuda:
        torch.cuda.empty_cache()


def baseline(model_dir: Path, texts: list[str], wl: Workload, quantize: str) -> dict[str, Any]:
    """A plain peft loop: `warmup` untimed steps, then `steps` timed ones (synchronised at both ends);
    tokens are the batches' non-padding tokens (attention_mask), tokenized in the loop as a worker does."""
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dev = torch.device(wl.device)
    watch = MemoryWatch(wl.cuda)
    watch.add("self", os.getpid())
    if wl.cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    options: dict[str, Any] = {"dtype": torch.bfloat16} if wl.cuda else {}
    if quantize:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        options |= {"quantization_config": quant, "device_map": {"": wl.device}}
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "right"
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, **options)
    if quantize:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = peft.LoraConfig(
        r=wl.rank,
        lora_alpha=wl.alpha,  # type: ignore[arg-type]
        lora_dropout=wl.dropout,
        target_modules=list(wl.targets),
        bias="none",
        task_type=peft.TaskType.CAUSAL_LM,
    )
    model = peft.get_peft_model(model, lora)
    if not quantize:
        model.to(dev)
    opt: Any = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=wl.lr)
    model.train()
    batches = [texts[i : i + wl.batch] for i in range(0, len(texts) - wl.batch + 1, wl.batch)]

    def step(k: int) -> int:
        enc = tok(
            batches[k % len(batches)],
            padding=True,
            truncation=True,
            max_length=wl.seq_len,
            return_tensors="pt",
        )
        enc = {key: v.to(dev) for key, v in enc.items() if key != "token_type_ids"}
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=wl.cuda):
            loss = model(**enc, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())  # a loop that logs its loss synchronises every step, as the worker does
        return int(enc["attention_mask"].sum())

    try:
        for k in range(wl.warmup):
            step(k)
        sync(wl)
        started = time.perf_counter()
        tokens = sum(step(wl.warmup + k) for k in range(wl.steps))
        sync(wl)
        seconds = time.perf_counter() - started
        allocated = torch.cuda.max_memory_allocated(dev) / 2**20 if wl.cuda else None
        reserved = torch.cuda.max_memory_reserved(dev) / 2**20 if wl.cuda else None
    finally:
        peak = watch.stop().get("self") if wl.cuda else None
        model = opt = None  # the GPU memory goes back before the next run
        free(wl)
    return dict(
        steps=wl.steps, warmup=wl.warmup, tokens=tokens, seconds=seconds, rate=tokens / seconds,
        allocated=allocated, reserved=reserved, smi=peak,
    )  # fmt: skip


def sync(wl: Workload) -> None:
    if wl.cuda:
        torch.cuda.synchronize(torch.device(wl.device))


def federation(
    name: str, work: Path, model_dir: Path, data: list[Path], wl: Workload, quantize: str, hashes: Path
) -> dict[str, Any]:
    """A LoRA federation of one `strata coordinator` process and a `strata worker` process per data folder,
    all on this machine (SQLite), every worker on `wl.device` with its own copy of the base (`base_model`).
    `hashes`: the base's content-hash cache, given to every process so none hashes the 1B base again."""
    folder = work / name
    folder.mkdir(parents=True)
    shutil.copy(hashes, folder / "base-hashes.json")
    values = dict(
        federation=name, database_url=f"sqlite:///{folder / 'strata.db'}", data_dir=folder, model=model_dir,
        task="causal-lm", rounds=wl.rounds, min_workers=len(data), min_updates=len(data),
        round_timeout=wl.timeout, start_timeout=wl.timeout, worker_tokens=TOKENS[: len(data)],
        batch_size=wl.batch, learning_rate=wl.lr, max_seq_len=wl.seq_len, max_steps=wl.steps,
        local_epochs=1000, lora_rank=wl.rank, lora_alpha=wl.alpha, lora_dropout=wl.dropout,
        lora_targets=",".join(wl.targets), linger_seconds=2.0, grace_seconds=1.0, task_poll_seconds=1.0,
    )  # fmt: skip
    coord = CoordinatorProcess(values, folder, "coordinator")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    watch = MemoryWatch(wl.cuda)
    try:
        coord.start()
        for k, d in enumerate(data):
            worker = f"org-{k + 1}"
            (work / "workers" / worker).mkdir(parents=True, exist_ok=True)
            shutil.copy(hashes, work / "workers" / worker / "base-hashes.json")
            v = worker_values(coord.address, TOKENS[k], worker, d, work / "workers") | dict(
                device=wl.device, base_model=model_dir, quantize_base=quantize, poll_seconds=1
            )
            with (folder / f"{worker}.log").open("wb") as log:
                procs[worker] = subprocess.Popen(
                    [sys.executable, "-m", "strata.cli", "worker"],
                    env=service_env("WORKER", v), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                )  # fmt: skip
            watch.add(worker, procs[worker].pid)
        wait(coord, procs, folder, time.monotonic() + wl.timeout)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        coord.kill()
        memory = watch.stop()
    rounds, updates = read_db(folder, name)
    return dict(
        rounds=rounds,
        updates=updates,
        memory=memory,
        device=watch.device_peak - watch.idle if wl.cuda else None,
    )


def wait(
    coord: CoordinatorProcess, procs: dict[str, subprocess.Popen[bytes]], folder: Path, end: float
) -> None:
    """Until the coordinator and every worker exited; RuntimeError with the log's end when one failed."""
    assert coord.proc is not None
    while True:
        for worker, p in procs.items():
            if p.poll() not in (None, 0):
                tail = (folder / f"{worker}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker {worker} exited with {p.returncode}; its log ends:\n{tail}")
        if coord.proc.poll() not in (None, 0):
            raise RuntimeError(f"the coordinator exited with {coord.proc.returncode}:\n{coord.text(3000)}")
        if coord.proc.poll() == 0 and all(p.poll() == 0 for p in procs.values()):
            return
        if time.monotonic() > end:
            raise TimeoutError(f"the federation did not finish in time; the coordinator:\n{coord.text(2000)}")
        time.sleep(0.5)


def read_db(folder: Path, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The federation's rounds rows, and its accepted updates with each one's training interval: it ended
    `upload_seconds` before the coordinator recorded it (received_at) and lasted `train_seconds`."""
    store = Store(f"sqlite:///{folder / 'strata.db'}")
    try:
        fed = store.get_or_create_federation(name)
        rounds = [
            dict(number=r.number, state=r.state, up=r.bytes_up, down=r.bytes_down, raw_up=r.raw_bytes_up,
                 raw_down=r.raw_bytes_down, seconds=r.duration_seconds)
            for r in store.rounds(fed.id)
        ]  # fmt: skip
        with store.sessions() as s:
            rows = s.execute(
                select(Round.number, Worker.name, Update.num_steps, Update.train_seconds,
                       Update.upload_seconds, Update.received_at)
                .join(Round, Round.id == Update.round_id)
                .join(Worker, Worker.id == Update.worker_id)
                .where(Round.federation_id == fed.id, Update.status == UpdateStatus.ACCEPTED.value)
                .order_by(Round.number, Worker.name)
            ).all()  # fmt: skip
    finally:
        store.close()
    updates = []
    for number_, worker, steps, train_s, upload_s, received in rows:
        end = received.timestamp() - (upload_s or 0.0)
        updates.append(dict(round=number_, worker=worker, steps=steps, seconds=train_s or math.nan, end=end))
    return rounds, updates
