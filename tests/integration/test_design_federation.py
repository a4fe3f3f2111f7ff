"""A federation served with the divergence-aware settings (--ffn-width, --local-attention-*): every worker
trains the wider, windowed model it rebuilds from the coordinator's assets, and `strata export` writes
that model back; contradictory settings are refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator import checkpoint
from coordinator.settings import CoordinatorSettings
from strata import attention_window, synthetic
from strata.cli import main as strata_main
from strata.modeling import load_model
from strata.settings import SettingsError
from tests.helpers import (
    ServedCoordinator,
    coordinator_settings,
    coordinator_values,
    make_model,
    make_worker_data,
    make_workers,
    run_to_done,
)

FFN = "bert.encoder.layer.0.intermediate.dense.weight"


def test_workers_train_the_wide_windowed_model_and_export_writes_it(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    narrow = load_model(model_dir, synthetic.LABELS)[0].config.intermediate_size
    db = f"sqlite:///{tmp_path / 'c.db'}"
    design = dict(ffn_width=2.0, local_attention_layers=1, local_attention_window=2)
    s = coordinator_settings(tmp_path, db, model_dir, min_workers=2, min_updates=2, **design)
    served = ServedCoordinator(s)
    shapes: list[tuple[int, ...]] = []
    workers = make_workers(
        served.address,
        make_worker_data(tmp_path / "data", 2),
        tmp_path / "workers",
        on_update=lambda name, task, res: shapes.append(tuple(res.delta[FFN].shape)),
    )
    try:
        run_to_done(workers)
        served.wait()
    finally:
        for w in workers:
            w.close()
    assert shapes and set(shapes) == {(2 * narrow, 32)}  # every update of every round: the wide layer
    for w in workers:
        model = w.copy.replica.model
        assert attention_window.from_config(model.config) == attention_window.LocalAttention(1, 2)
        assert len(model.bert.encoder.layer[0].attention.self._forward_pre_hooks) == 1
    out = tmp_path / "export"
    argv = ["export", "--out", str(out), "--federation", "test", "--database-url", db,
            "--data-dir", str(s.data_dir), "--model", str(model_dir)]  # fmt: skip
    assert strata_main(argv) == 0
    exported, _ = load_model(out / "model", synthetic.LABELS)
    assert exported.config.intermediate_size == 2 * narrow
    assert attention_window.from_config(exported.config) == attention_window.LocalAttention(1, 2)
    last = checkpoint.load(s.data_dir / "checkpoints" / "test", 2)  # the version round 2 made
    assert torch.equal(exported.state_dict()[FFN], last[FFN])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(local_attention_layers=2), "go together"),
        (dict(ffn_width=0.5), "greater than or equal to 1"),
        (dict(ffn_width=2.0, lora_rank=4), "LoRA federation"),
    ],
)
def test_contradictory_design_settings_are_refused(tmp_path: Path, overrides: dict, message: str) -> None:
    values = coordinator_values(tmp_path, "sqlite://", make_model(tmp_path / "model"), **overrides)
    with pytest.raises(SettingsError, match=message):
        CoordinatorSettings.load(values)
