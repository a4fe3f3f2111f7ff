"""Unit tests for strata.serde: domain types <-> wire messages."""

from __future__ import annotations

import dataclasses

import pytest

from strata.adapters import LoraSpec
from strata.proto.v1 import coordinator_pb2 as pb
from strata.serde import (
    RoundTask,
    TrainingConfig,
    lora_from_proto,
    lora_to_proto,
    task_from_proto,
    task_to_proto,
    training_config_from_proto,
    training_config_to_proto,
)

CONFIGS = [
    TrainingConfig(),
    TrainingConfig(
        local_epochs=3,
        max_steps=100,
        batch_size=8,
        learning_rate=1e-5,
        weight_decay=0.01,
        max_seq_len=512,
        seed=42,
        prox_mu=0.01,
    ),
    TrainingConfig(
        local_epochs=1,
        max_steps=0,
        batch_size=1,
        learning_rate=0.1234567891234,
        weight_decay=0.0,
        max_seq_len=8,
        seed=2**63,
        prox_mu=1e6,
    ),
    TrainingConfig(
        local_epochs=2**32 - 1, max_steps=2**32 - 1, batch_size=2**32 - 1, max_seq_len=8192, seed=2**64 - 1
    ),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_training_config_round_trip(config: TrainingConfig) -> None:
    message = training_config_to_proto(config)
    assert isinstance(message, pb.TrainingConfig)
    assert training_config_from_proto(message) == config
    # and through the wire bytes
    wire = pb.TrainingConfig.FromString(message.SerializeToString())
    assert training_config_from_proto(wire) == config


def test_training_config_fields_all_travel() -> None:
    config = CONFIGS[1]
    message = training_config_to_proto(config)
    for field in dataclasses.fields(TrainingConfig):
        assert getattr(message, field.name) == getattr(config, field.name), field.name


def test_training_config_refuses_negative_values() -> None:
    with pytest.raises(ValueError):
        training_config_to_proto(TrainingConfig(seed=-1))


TASKS = [
    RoundTask(
        round=1,
        model_version=0,
        model_hash="0" * 64,
        deadline_unix=1_700_000_000.25,
        config=TrainingConfig(),
        encoding="fp32",
        total_rounds=5,
    ),
    RoundTask(
        round=7,
        model_version=12,
        model_hash="ab" * 32,
        deadline_unix=0.0,
        config=CONFIGS[1],
        encoding="lowrank",
        total_rounds=7,
        lowrank_rank=16,
    ),
    RoundTask(
        round=2**32 - 1,
        model_version=2**64 - 1,
        model_hash="",
        deadline_unix=1e12 + 0.5,
        config=CONFIGS[2],
        encoding="",
        total_rounds=1,
    ),
]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"round{t.round}")
def test_round_task_round_trip(task: RoundTask) -> None:
    message = task_to_proto(task)
    assert message.kind == pb.Task.TRAIN
    assert task_from_proto(message) == task
    wire = pb.Task.FromString(message.SerializeToString())
    assert task_from_proto(wire) == task


@pytest.mark.parametrize(
    "kind", [pb.Task.KIND_UNSPECIFIED, pb.Task.WAIT, pb.Task.DONE], ids=["unspecified", "wait", "done"]
)
def test_task_from_proto_refuses_non_train(kind: int) -> None:
    message = task_to_proto(TASKS[0])
    message.kind = kind  # type: ignore[assignment]
    with pytest.raises(ValueError, match="TRAIN"):
        task_from_proto(message)


def test_a_task_without_a_rank_gets_the_default_and_an_absurd_rank_is_refused() -> None:
    message = task_to_proto(TASKS[1])
    message.lowrank_rank = 0  # a coordinator of before the low-rank encoding
    assert task_from_proto(message).lowrank_rank == 16
    message.lowrank_rank = 1025
    with pytest.raises(ValueError, match="lowrank_rank must be at most 1024"):
        task_from_proto(message)


def test_task_from_proto_refuses_empty_message() -> None:
    with pytest.raises(ValueError, match="TRAIN"):
        task_from_proto(pb.Task())


@pytest.mark.parametrize("mu", [-0.1, -1e-300, float("nan"), float("inf"), float("-inf")])
def test_a_task_with_a_bad_prox_mu_is_refused_where_it_is_decoded(mu: float) -> None:
    message = task_to_proto(dataclasses.replace(TASKS[1], config=TrainingConfig(prox_mu=mu)))
    with pytest.raises(ValueError, match="prox_mu"):
        task_from_proto(pb.Task.FromString(message.SerializeToString()))


LORA_SPECS = [
    LoraSpec(8, 16.0, 0.05, ("query", "value"), ("classifier",), "ab" * 32, "product"),
    LoraSpec(1, 0.1, 0.0, ("all-linear",), (), "0" * 64, "factors"),
    LoraSpec(
        2**32 - 1,
        1e-300,
        0.999999,
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        ("score", "x.y"),
        "h",
        "product",
    ),
]


@pytest.mark.parametrize("spec", LORA_SPECS, ids=lambda s: f"r{s.rank}-{s.aggregation}")
def test_lora_spec_round_trip(spec: LoraSpec) -> None:
    message = lora_to_proto(spec)
    assert isinstance(message, pb.LoraAdapter)
    assert lora_from_proto(message) == spec
    wire = pb.LoraAdapter.FromString(message.SerializeToString())
    assert lora_from_proto(wire) == spec
    for field in dataclasses.fields(LoraSpec):
        value = getattr(message, field.name)
        assert (tuple(value) if field.type.startswith("tuple") else value) == getattr(spec, field.name)


@pytest.mark.parametrize(
    "message",
    [pb.LoraAdapter(), lora_to_proto(dataclasses.replace(LORA_SPECS[0], rank=0))],
    ids=["empty", "rank-0"],
)
def test_rank_zero_means_no_adapter(message: pb.LoraAdapter) -> None:
    assert lora_from_proto(message) is None
    assert lora_from_proto(pb.LoraAdapter.FromString(message.SerializeToString())) is None


@pytest.mark.parametrize(
    "change",
    [
        {"alpha": 0.0},
        {"alpha": -1.0},
        {"alpha": float("nan")},
        {"alpha": float("inf")},
        {"dropout": 1.0},
        {"dropout": 1.5},
        {"dropout": -0.1},
        {"dropout": float("nan")},
        {"targets": ()},
        {"aggregation": "mean"},
        {"aggregation": ""},
        {"aggregation": "Product"},
        {"base_hash": ""},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_an_invalid_lora_adapter_is_refused(change: dict[str, object]) -> None:
    message = lora_to_proto(dataclasses.replace(LORA_SPECS[0], **change))  # type: ignore[arg-type]
    field = next(iter(change))
    with pytest.raises(ValueError, match="invalid LoRA adapter") as info:
        lora_from_proto(pb.LoraAdapter.FromString(message.SerializeToString()))
    assert field.rstrip("s").replace("_", " ") in str(info.value)
