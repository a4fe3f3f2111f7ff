"""Loading and preparing a LoRA federation's base model on a worker: bf16 on a GPU, a 4- or 8-bit frozen
base through bitsandbytes (QLoRA), gradient checkpointing; each refused with a clear message where it
cannot work (quantization on a CPU, or without bitsandbytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from strata.adapters import LoraSpec, travels, wrap
from strata.layers import block_map
from strata.member.replica import Replica
from strata.modeling import load_model
from worker.errors import WorkerError


def load_options(device: str, quantize: str) -> dict[str, Any]:
    """The keyword arguments `from_pretrained` loads the base with on `device`."""
    cuda = torch.device(device).type == "cuda"
    if quantize and not cuda:
        raise WorkerError(
            f"quantize_base {quantize}: a quantized base (QLoRA) needs a CUDA GPU and bitsandbytes; this worker "
            f"runs on {device}: leave --quantize-base unset (the base then loads in float32) or run on a GPU"
        )
    if not cuda:
        return {}
    options: dict[str, Any] = {"dtype": torch.bfloat16}
    if quantize:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise WorkerError(
                f"quantize_base {quantize}: bitsandbytes is not installed; pip install bitsandbytes"
            ) from None
        from transformers import BitsAndBytesConfig

        if quantize == "4bit":
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        else:
            config = BitsAndBytesConfig(load_in_8bit=True)
        options |= {"quantization_config": config, "device_map": {"": device}}
    return options


def prepare(model: torch.nn.Module, quantize: str, checkpointing: bool) -> torch.nn.Module:
    """The base made ready for adapters: k-bit preparation for a quantized base, gradient checkpointing."""
    if quantize:
        import peft

        return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)  # type: ignore[no-any-return]
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
        model.enable_input_require_grads()  # type: ignore[operator]
    return model


def float32_travellers(model: torch.nn.Module) -> None:
    """Keep the tensors that travel in float32 whatever the base's dtype, so the version's hash and every
    update mean the same bits on every worker."""
    for name, p in model.named_parameters():
        if travels(name) and p.dtype != torch.float32:
            p.data = p.data.float()


def adapted_replica(
    base_dir: Path,
    spec: LoraSpec,
    labels: list[str],
    task: str,
    device: str,
    quantize: str = "",
    checkpointing: bool = False,
) -> Replica:
    """The model a worker of a LoRA federation trains: its base (checked by hash beforehand) loaded for
    `device`, prepared, wrapped with the federation's adapter at the federation's rank."""
    model, tokenizer = load_model(base_dir, labels, task=task, **load_options(device, quantize))
    wrapped = wrap(prepare(model, quantize, checkpointing), spec, task)
    float32_travellers(wrapped)
    if not quantize:  # a quantized base is already placed by its device map
        wrapped.to(device)  # type: ignore[arg-type]
    return Replica(wrapped, tokenizer, block_map(wrapped), device)  # type: ignore[arg-type]
