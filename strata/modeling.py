"""Transformers models for Strata: build, load, tokenize, batch, evaluate; the tensors that travel."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from transformers import (  # type: ignore[attr-defined]
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from strata.data import Example

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: files of a model directory that travel to workers (everything but weights)
ASSET_SUFFIXES = (".json", ".txt", ".model")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tokenizer(texts: Iterator[str] | Sequence[str], vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """A small uncased WordPiece tokenizer for local text (no download), deterministic for its input.

    The vocabulary is the special tokens, every character seen (alone and as a `##` continuation, so
    any word can be spelled), then the most frequent words (ties broken alphabetically).
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    base = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    taken = set(base)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in taken]
    vocab = base + words[: max(0, vocab_size - len(base))]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
    )


def make_tiny_model_dir(
    path: str | Path,
    texts: Sequence[str],
    labels: Sequence[str],
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 4000,
    max_len: int = 64,
) -> Path:
    """Write a small BERT-style classifier built from a config, with a tokenizer trained on `texts`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    config = BertConfig(  # type: ignore[call-arg]
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 4,
        max_position_embeddings=max(max_len, 64),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.model_max_length = max_len
    tokenizer.save_pretrained(path)
    return path


def load_model(
    model_dir: str | Path, labels: Sequence[str], seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a sequence classifier from a local transformers directory, with a head for `labels`.

    A directory holding only an encoder (e.g. a sentence-transformers checkpoint) gets a freshly
    initialised classification head (seeded, so the coordinator's initial version is reproducible).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a transformers model directory (no config.json)")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, config=config, local_files_only=True, ignore_mismatched_sizes=True
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    return model, tokenizer


def model_from_assets(assets_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build the architecture (random weights) and tokenizer from the assets a coordinator sent."""
    config = AutoConfig.from_pretrained(assets_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(assets_dir, local_files_only=True)
    return model, tokenizer


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
        tmp = out_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out_dir / name)
    return out_dir


def global_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that make up a model version: every parameter (tied weights once), detached."""
    return {name: p.detach() for name, p in model.named_parameters()}


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


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_len: int = 128,
    batch_size: int = 64,
    device: str = "cpu",
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of the model on `examples`."""
    if not examples:
        raise ValueError("nothing to evaluate")
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for batch in batches(examples, batch_size):
        enc = {k: v.to(device) for k, v in encode_batch(tokenizer, [e.text for e in batch], max_len).items()}
        labels = torch.tensor([e.label for e in batch], device=device)
        with autocast(device):
            out = model(**enc, labels=labels)
        total_loss += float(out.loss) * len(batch)
        correct += int((out.logits.argmax(-1) == labels).sum())
    model.train(was_training)
    return total_loss / len(examples), correct / len(examples)


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
