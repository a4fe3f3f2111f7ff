"""Starting a federation, or resuming one after a stop or a crash: the version the database records,
its checkpoint, residual and optimizer state; what a crash left half-written deleted; the round it
left open reopened with every update it had accepted."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedModel

from coordinator import checkpoint, spool
from coordinator.global_model import GlobalModel
from coordinator.ingest import reload
from coordinator.round import Round
from coordinator.settings import CoordinatorSettings
from coordinator.store import Store
from coordinator.versions import VersionFiles
from strata import optimizers, tensorfile
from strata.adapters import LoraSpec, head_modules, pairs, resolve_targets, wrap
from strata.base_model import checkpoint_hash
from strata.errors import StrataError
from strata.frames import expected_of
from strata.layers import block_map
from strata.modeling import global_tensors, load_model, load_tensors, read_labels_from_config, save_assets
from strata.optimizers import ServerOptimizer
from strata.storage.models import Federation, FederationState, RoundState, UpdateStatus
from strata.targeting import RoundPlan
from strata.version import model_hash

log = logging.getLogger("strata.coordinator")


def _is_file(p: Path) -> bool:
    """Whether `p` names a file; a long comma-separated list of names is no path (ENAMETOOLONG)."""
    try:
        return p.is_file()
    except OSError:
        return False


def parse_labels(spec: str | None, model_dir: Path | None) -> list[str]:
    """Labels from a labels.json path, a comma-separated list, or the model config's id2label."""
    if spec:
        p = Path(spec)
        if _is_file(p):
            labels = json.loads(p.read_text())
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
                raise ValueError(f"{p}: labels.json must be a list of at least two names")
            return labels
        labels = [x.strip() for x in spec.split(",") if x.strip()]
        if len(labels) < 2:
            raise ValueError("labels: give at least two class names, or a labels.json file")
        return labels
    if model_dir is not None and (found := read_labels_from_config(model_dir)) and len(found) >= 2:
        return found
    raise ValueError("labels: none given and the model config has no id2label; set --labels")


def open_federation(
    s: CoordinatorSettings, store: Store, labels: list[str], ckpt_dir: Path
) -> tuple[GlobalModel, Federation]:
    """Load the model, create the federation's row or find it, and bring the model to the version the
    database records (checkpointing version 0 of a new federation)."""
    model, tokenizer = load_model(s.model, labels, seed=s.seed, task=s.task)  # type: ignore[arg-type]
    model = s.apply_design(model)  # wider layers, local attention: before the assets are written
    assets = save_assets(model, tokenizer, s.data_dir / "assets" / s.federation)
    spec = lora_spec(s, model) if s.lora_rank else None
    if spec is not None:
        model = wrap(model, spec, s.task)  # type: ignore[assignment]
        check_rank_fits(model, spec)
    tensors = global_tensors(model)
    gm = GlobalModel(model, tokenizer, assets, block_map(model), expected_of(tensors), lora=spec)
    recorded = s.record() | {"labels": labels} | ({"lora": lora_record(spec)} if spec else {})
    fed = store.get_or_create_federation(
        s.federation,
        model_name=str(s.model),
        num_labels=len(labels),
        task_kind=s.task,
        total_rounds=s.rounds,
        num_parameters=sum(t.numel() for t in tensors.values()),
        config=recorded,
    )
    if fed.task_kind != s.task:
        raise ValueError(
            f"federation {s.federation!r} was created for task {fed.task_kind}, not {s.task}; "
            "start a new federation (--federation) to change the task"
        )
    was = (fed.config or {}).get("lora")
    if (fed.model_version > 0 or checkpoint.exists(ckpt_dir, 0)) and was != recorded.get("lora"):
        raise ValueError(
            f"federation {s.federation!r} was created with LoRA adapter {was or 'none (full fine-tuning)'}, "
            f"not {recorded.get('lora') or 'none'}; keep its lora_* settings and base model, or start a new "
            "federation (--federation)"
        )
    resume_version(fed, gm, ckpt_dir, s.federation)
    store.update_federation(
        fed.id,
        model_version=gm.version,
        model_hash=gm.hash,
        total_rounds=s.rounds,
        state=FederationState.RUNNING.value,
        error=None,
        config=recorded,  # a restart may change settings: record them
    )
    return gm, fed


def lora_spec(s: CoordinatorSettings, model: PreTrainedModel) -> LoraSpec:
    """The federation's adapter for this (unwrapped) model: targets checked, the head of a classifier
    trained whole, the base checkpoint hashed (the hash is cached under the data folder)."""
    assert s.model is not None
    head = block_map(model)["head"].tensors if s.task == "sequence-classification" else ()
    return LoraSpec(
        s.lora_rank,
        s.lora_alpha,
        s.lora_dropout,
        resolve_targets(model, s.lora_target_list()),
        head_modules(model, head),
        checkpoint_hash(s.model, cache=s.data_dir / "base-hashes.json"),
        s.lora_aggregation,
    )


def check_rank_fits(model: torch.nn.Module, spec: LoraSpec) -> None:
    """Product aggregation re-factorises each adapted matrix to rank r: r may not exceed its dimensions."""
    if spec.aggregation != "product":
        return
    tensors = dict(model.named_parameters())
    for a_name, b_name in pairs(sorted(tensors)).values():
        d_in, d_out = tensors[a_name].shape[1], tensors[b_name].shape[0]
        if spec.rank > min(d_in, d_out):
            raise ValueError(
                f"lora_rank: {spec.rank} exceeds the {d_out}×{d_in} matrix {a_name.split('.lora_A.')[0]}; "
                f"product aggregation needs a rank of at most {min(d_in, d_out)}"
            )


def lora_record(spec: LoraSpec) -> dict[str, object]:
    """What the federation records of its adapter; a restart must bring the same."""
    return dataclasses.asdict(spec) | {
        "targets": list(spec.targets),
        "modules_to_save": list(spec.modules_to_save),
    }


def resume_version(fed: Federation, gm: GlobalModel, ckpt_dir: Path, name: str) -> None:
    """Load the version the database records into `gm` (or checkpoint version 0 of a new federation)."""
    if fed.model_version > 0 or checkpoint.exists(ckpt_dir, 0):
        version = fed.model_version
        if not checkpoint.exists(ckpt_dir, version):
            raise RuntimeError(
                f"the database says version {version} but {checkpoint.path_of(ckpt_dir, version)} is missing"
            )
        load_tensors(gm.model, checkpoint.load(ckpt_dir, version))
        h = model_hash(global_tensors(gm.model))
        if fed.model_hash and h != fed.model_hash:
            raise RuntimeError(f"checkpoint v{version} does not match the hash recorded in the database")
        log.info("resuming federation %s at version %d", name, version)
    else:
        tensors = global_tensors(gm.model)
        version, h = 0, model_hash(tensors)
        checkpoint.save(ckpt_dir, 0, tensors, h)
    gm.version, gm.hash = version, h


def restore_state(
    store: Store, fed_id: int, gm: GlobalModel, ckpt_dir: Path, versions: VersionFiles, opt: ServerOptimizer
) -> None:
    """The hashes of every version, the server residual and optimizer state of the current one; files of
    versions the database never recorded (an aggregation a crash cut off) deleted."""
    for r in store.rounds(fed_id):
        gm.hashes[r.base_version] = r.base_hash
        if r.state == RoundState.COMPLETED.value and r.result_version is not None and r.result_hash:
            gm.hashes[r.result_version] = r.result_hash
    gm.hashes[gm.version] = gm.hash
    if versions.discard_after(gm.version) + checkpoint.discard_after(ckpt_dir, gm.version):
        log.info("discarded files of versions after %d that were never recorded", gm.version)
    rpath = checkpoint.residual_path(ckpt_dir, gm.version)
    gm.residual = tensorfile.load(rpath) if rpath.is_file() else {}
    opath = checkpoint.optimizer_path(ckpt_dir, gm.version)
    if opt.stateful and opath.is_file():
        gm.optimizer_state = optimizers.unflatten_state(tensorfile.load(opath))
    elif opt.stateful and gm.version > 0:
        log.warning("no %s state for version %d: the server optimizer starts from zero", opt.name, gm.version)


def reopen(
    store: Store,
    fed_id: int,
    gm: GlobalModel,
    spool_dir: Path,
    round_timeout: float,
    make_round: Callable[[int, int, RoundPlan, dict[str, str], float], Round],
) -> Round | None:
    """The round a crash or restart left open, reopened: same number, base version and participants, a
    fresh deadline, and every update it had accepted added to its sums again from the spool. Spool
    files the database never recorded as accepted (uploads cut off, or whose reply was never sent) are
    deleted: their workers send them again. None if there is no such round or it trains another
    version than the one the coordinator holds."""
    row = store.open_round_row(fed_id)
    if row is None or row.base_version != gm.version or row.base_hash != gm.hash:
        return None
    workers = {w.id: w for w in store.workers(fed_id)}
    by_name = {w.name: w for w in workers.values()}
    participants = {by_name[n].uid: n for n in row.participants if n in by_name}
    plan = RoundPlan(row.number, tuple(row.blocks) if row.blocks else tuple(gm.bmap.names), bool(row.probe))
    deadline = time.time() + round_timeout
    r = make_round(row.id, row.number, plan, participants, deadline)
    rdir = spool.round_dir(spool_dir, row.number)
    for u in store.updates(row.id):
        if u.status != UpdateStatus.ACCEPTED.value or u.worker_id not in workers:
            continue
        w = workers[u.worker_id]
        path = rdir / f"{w.name}.update"
        try:
            got = reload(path, r.sums, r.aggregator.stream_weight(u.num_samples))  # private: checks only
        except (OSError, StrataError) as exc:
            reason = f"lost when the coordinator restarted: {exc}"
            store.set_update_status(u.id, UpdateStatus.REJECTED, reason)
            log.error("round %d: the update of %s is %s", row.number, w.name, reason)
            continue
        r.admit(
            w.uid,
            w.name,
            path,
            got,
            u.num_samples,
            update_id=u.id,
            train_loss=u.train_loss or 0.0,
            train_accuracy=u.train_accuracy or 0.0,
        )
    kept = {u.path.name for u in r.accepted.values()}
    for p in rdir.iterdir() if rdir.is_dir() else ():
        if p.name not in kept:  # partial uploads, and updates that were never recorded
            p.unlink(missing_ok=True)
    store.set_round_fields(
        row.id, state=RoundState.OPEN.value, deadline_at=dt.datetime.fromtimestamp(deadline, dt.UTC)
    )
    r.check_all_in()
    log.info(
        "round %d reopened after a restart with the %d update(s) it had accepted (%s); deadline in %.0fs",
        row.number,
        len(r.accepted),
        ", ".join(sorted(u.name for u in r.accepted.values())) or "none yet",
        round_timeout,
    )
    return r
