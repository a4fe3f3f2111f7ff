"""Small transformers models built from a config for tests, benchmarks and the demo (no download): a
WordPiece tokenizer trained on local text, a BERT-style classifier, a GPT-2 or LLaMA causal LM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import (  # type: ignore[attr-defined]
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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


def make_tiny_causal_model_dir(
    path: str | Path,
    texts: Sequence[str],
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 4000,
    max_len: int = 64,
    family: str = "gpt2",
) -> Path:
    """Write a small causal LM (``family`` "gpt2" or "llama") built from a config, with a tokenizer
    trained on `texts`: every text is read as ``[CLS] text [SEP]``, so [CLS] is its bos and [SEP] its eos.
    """
    path = Path(path)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    positions = max(max_len, 64)
    model: PreTrainedModel
    torch.manual_seed(seed)
    if family == "gpt2":
        gpt2 = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=hidden_size * 4,
            n_positions=positions,
            **ids,
        )
        model = GPT2LMHeadModel(gpt2)
    elif family == "llama":
        llama = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 4,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=positions,
            **ids,
        )
        model = LlamaForCausalLM(llama)
    else:
        raise ValueError(f"unknown causal LM family {family!r}; expected gpt2 or llama")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.model_max_length = max_len
    tokenizer.save_pretrained(path)
    return path
