"""Transformers models for Strata: build, load, tokenize, batch, evaluate; the tensors that travel.

Two tasks: sequence classification (a label per text) and causal language modelling (next-token
prediction over the text itself; the metric is perplexity, ``exp`` of the mean token loss).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (  # type: ignore[attr-defined]
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from strata import atomic, attention_window
from strata.adapters import is_adapted, travels
from strata.data import Example

#: files of a model directory that travel to workers (everything but weights)
ASSET_SUFFIXES = (".json", ".txt", ".model")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: what a model can be fine-tuned for; the first is the default
from strata.names import LANGUAGE_TASKS, TASKS  # noqa: E402 - re-exported
from strata.tiny_models import (  # noqa: E402, F401 - re-exported: tests, benches and the demo build them here
    SPECIAL_TOKENS,
    build_tokenizer,
    make_tiny_causal_model_dir,
    make_tiny_model_dir,
)

#: how transformers names its causal LM classes (GPT2LMHeadModel, LlamaForCausalLM, ...)
_CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
#: the label of a token that is not predicted (padding), as transformers' losses expect
IGNORE_INDEX = -100


def task_of(model_or_config: torch.nn.Module | PretrainedConfig) -> str:
    """The task a model is for: "instruction" for a causal LM loaded for instruction tuning (its config says
    so in ``strata_task``), "causal-lm" for another causal language model, else "sequence-classification".

    A model is judged by its class (and its base classes, so wrappers such as peft's count); a config
    by the architecture it names (``architectures``, written when a model is saved).
    """
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "strata_task", None) == "instruction":
        return "instruction"
    if isinstance(model_or_config, torch.nn.Module):
        names = [cls.__name__ for cls in type(model_or_config).__mro__]
    else:
        names = list(getattr(model_or_config, "architectures", None) or [])
    return TASKS[1] if any(n.endswith(_CAUSAL_LM_SUFFIXES) for n in names) else TASKS[0]


def load_model(
    model_dir: str | Path, labels: Sequence[str], seed: int = 0, task: str = TASKS[0], **options: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model for `task` (one of TASKS) from a local transformers directory.

    "sequence-classification": a classifier with a head for `labels`. A directory holding only an
    encoder (e.g. a sentence-transformers checkpoint) gets a freshly initialised classification head
    (seeded, so the coordinator's initial version is reproducible).
    "causal-lm": a causal language model; `labels` are ignored (may be empty). A tokenizer without a
    pad token pads with its eos (or unk) token; padding goes on the right.

    The config records the class loaded (``architectures``), so the assets rebuild the same task.
    `options` go to ``from_pretrained`` (dtype, a quantization config, a device map).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks are {', '.join(TASKS)}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a transformers model directory (no config.json)")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    torch.manual_seed(seed)
    if task in LANGUAGE_TASKS:
        if task == "instruction":  # recorded in the config, so the assets rebuild the same task
            config.strata_task = "instruction"
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, config=config, local_files_only=True, **options
        )
        _prepare_causal_tokenizer(model, tokenizer)
    else:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, config=config, local_files_only=True, ignore_mismatched_sizes=True, **options
        )
    model.config.architectures = [type(model).__name__]
    attention_window.apply(model)  # the config's local attention windows, if it has any
    model.eval()
    return model, tokenizer


def model_from_assets(assets_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build the architecture (random weights) and tokenizer from the assets a coordinator sent.

    A config whose ``architectures`` names a causal LM builds one; any other a sequence classifier.
    """
    config = AutoConfig.from_pretrained(assets_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(assets_dir, local_files_only=True)
    if task_of(config) in LANGUAGE_TASKS:
        model = AutoModelForCausalLM.from_config(config)
        _prepare_causal_tokenizer(model, tokenizer)
    else:
        model = AutoModelForSequenceClassification.from_config(config)
    attention_window.apply(model)
    return model, tokenizer


def _prepare_causal_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Let a causal LM's batches be padded: a pad token (eos, else unk, when it has none), on the right
    (absolute positions then match an unpadded text's), and the model's config told its id."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad causal LM batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def save_assets(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path
) -> dict[str, bytes]:
    """Write config and tokenizer files to out_dir; return them by name (what travels to workers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        p.name: p.read_bytes()
        for p in sorted(out_dir.iterdir())
        if p.is_file() and p.suffix in ASSET_SUFFIXES
    }


def write_assets(files: Mapping[str, bytes], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic.write_bytes(out_dir / name, data)
    return out_dir


def global_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that make up a model version: every parameter (tied weights once), detached; of a LoRA
    model (strata.adapters), only the adapters and the modules it trains whole (the base never travels)."""
    params = model.named_parameters()
    if is_adapted(model):
        return {name: p.detach() for name, p in params if travels(name)}
    return {name: p.detach() for name, p in params}


@torch.no_grad()
def load_tensors(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy `tensors` into the model's parameters in place; every name must exist with its shape."""
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        p = params.get(name)
        if p is None:
            raise KeyError(f"model has no parameter {name}")
        if p.shape != value.shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} does not match {tuple(p.shape)}")
        p.copy_(value.to(p.dtype))


def encode_batch(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int
) -> dict[str, torch.Tensor]:
    return dict(
        tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    )


def batches(
    examples: Sequence[Example], batch_size: int, order: Sequence[int] | None = None
) -> Iterator[list[Example]]:
    idx = list(order) if order is not None else list(range(len(examples)))
    for start in range(0, len(idx), batch_size):
        yield [examples[i] for i in idx[start : start + batch_size]]


def model_inputs(
    task: str, tokenizer: PreTrainedTokenizerBase, batch: Sequence[Example], max_len: int, device: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The encoded batch and the labels to call the model with, on `device`.

    Classification: the examples' labels. Causal LM: the input ids with padding set to IGNORE_INDEX
    (the model shifts them: the token at t+1 is the target of position t); example labels are unused.
    Instruction: each example a chat (strata.instruct), every token but the responses' set to IGNORE_INDEX.
    """
    if task == "instruction":
        from strata.instruct import encode_chats

        chat_enc, chat_labels = encode_chats(tokenizer, [e.text for e in batch], max_len)
        return {k: v.to(device) for k, v in chat_enc.items()}, chat_labels.to(device)
    enc = {k: v.to(device) for k, v in encode_batch(tokenizer, [e.text for e in batch], max_len).items()}
    if task == TASKS[0]:
        return enc, torch.tensor([e.label for e in batch], device=device)
    enc.pop("token_type_ids", None)  # an encoder-style tokenizer's; decoders take none
    return enc, enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)


def count_correct(task: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct predictions, predictions) in a batch: one per example for classification; for a
    causal LM one per predicted token (the next token of each position whose target is not padding)."""
    if task == TASKS[0]:
        return int((logits.argmax(-1) == labels).sum()), len(labels)
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    hits = (logits[:, :-1].argmax(-1) == targets) & scored
    return int(hits.sum()), int(scored.sum())


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_len: int = 128,
    batch_size: int = 64,
    device: str = "cpu",
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of the model on `examples`.

    For a causal LM both are per predicted token (next-token loss weighted by tokens, and next-token
    accuracy); ``perplexity(loss)`` is then the usual perplexity.
    """
    if not examples:
        raise ValueError("nothing to evaluate")
    task = task_of(model)
    was_training = model.training
    model.eval()
    total_loss, correct, total = 0.0, 0, 0
    for batch in batches(examples, batch_size):
        enc, labels = model_inputs(task, tokenizer, batch, max_len, device)
        with autocast(device):
            out = model(**enc, labels=labels)
        hits, count = count_correct(task, out.logits, labels)
        if count:  # a causal LM batch of one-token texts predicts nothing (its loss is NaN)
            total_loss += float(out.loss) * count
            correct, total = correct + hits, total + count
    model.train(was_training)
    if not total:
        raise ValueError("nothing to evaluate: no text is long enough to predict a next token")
    return total_loss / total, correct / total


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); inf where that would overflow a float."""
    return math.inf if loss > 700 else math.exp(loss)


def autocast(device: str) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context on the CPU."""
    dev = torch.device(device).type
    return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dev == "cuda")


def pick_device(requested: str = "auto") -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested} requested but CUDA is not available")
    return requested


def read_labels_from_config(model_dir: str | Path) -> list[str] | None:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    id2label = cfg.get("id2label")
    if not id2label:
        return None
    return [id2label[str(i)] for i in range(len(id2label))]
