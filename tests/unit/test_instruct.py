"""Unit tests for instruction-tuning data: chat records read and checked, chats rendered by a chat template
(the fallback or the tokenizer's own) and encoded with the loss on assistant tokens only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import zstandard
from transformers import PreTrainedTokenizerFast

from strata.data import NO_LABEL, DataError, Example
from strata.instruct import (
    FALLBACK_TEMPLATE,
    assistant_spans,
    chat_from_text,
    chat_of,
    chat_to_text,
    encode_chats,
    read_chats,
    render_chat,
)
from strata.modeling import IGNORE_INDEX, build_tokenizer, load_model, make_tiny_causal_model_dir

# a minimal ChatML-like template: no bos, each turn closed by <|im_end|> (the eos)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYSTEM = "you are a helpful bird"
PROMPT = "what does the cat sit on"
RESPONSE = "the cat sits on the mat"
PROMPT2 = "and the dog"
RESPONSE2 = "the dog runs to the door quickly"
ONE_TURN = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": PROMPT},
    {"role": "assistant", "content": RESPONSE},
]
TWO_TURNS = [
    *ONE_TURN,
    {"role": "user", "content": PROMPT2},
    {"role": "assistant", "content": RESPONSE2},
]
# every word of the chats and the templates, so that nothing is [UNK]
CORPUS = [SYSTEM, PROMPT, RESPONSE, PROMPT2, RESPONSE2, "### system: user: assistant:"]


def _tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer with bos/eos set as make_tiny_causal_model_dir does, or (ChatML) <|im_end|>."""
    tok = build_tokenizer(CORPUS, vocab_size=300)
    tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token
    if template is not None:
        tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
        tok.eos_token = "<|im_end|>"
        tok.chat_template = template
    return tok


@pytest.fixture(scope="module", params=["fallback", "chatml"])
def tok(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return _tokenizer(None if request.param == "fallback" else CHATML)


def _ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _scored(labels: torch.Tensor, row: int = 0) -> list[int]:
    return [int(t) for t in labels[row] if t != IGNORE_INDEX]


# ---------------------------------------------------------------- records


@pytest.mark.parametrize(
    "record, chat",
    [
        (
            {"prompt": "p", "response": "r"},
            [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}],
        ),
        (
            {"system": "s", "prompt": "p", "response": "r", "id": 7},
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "p"},
                {"role": "assistant", "content": "r"},
            ],
        ),
        ({"messages": ONE_TURN}, ONE_TURN),
        ({"messages": TWO_TURNS, "source": "x"}, TWO_TURNS),
        (
            {
                "messages": [
                    {"role": "system", "content": "", "name": "n"},
                    {"role": "assistant", "content": ""},
                ]
            },
            [{"role": "system", "content": ""}, {"role": "assistant", "content": ""}],
        ),
    ],
)
def test_chat_of_accepts_both_forms(record: dict[str, Any], chat: list[dict[str, str]]) -> None:
    assert chat_of(record, "f:1") == chat


def _msgs(*pairs: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


@pytest.mark.parametrize(
    "record, message",
    [
        ([], "expected a JSON object, got list"),
        ("text", "expected a JSON object, got str"),
        ({}, 'expected "prompt" and "response", or "messages"'),
        ({"text": "t"}, 'expected "prompt" and "response", or "messages"'),
        ({"prompt": "p"}, 'missing "response"'),
        ({"response": "r"}, 'missing "prompt"'),
        ({"prompt": 1, "response": "r"}, '"prompt" must be a string, got int'),
        ({"prompt": "p", "response": ["r"]}, '"response" must be a string, got list'),
        ({"prompt": "p", "response": "r", "system": None}, '"system" must be a string, got NoneType'),
        ({"messages": ONE_TURN, "prompt": "p"}, '"messages" cannot be combined with "prompt"'),
        ({"messages": "hi"}, '"messages" must be a list, got str'),
        ({"messages": []}, '"messages" is empty'),
        ({"messages": ["hi"]}, "messages[0] must be an object, got str"),
        ({"messages": [{"content": "c"}]}, 'messages[0]: missing "role"'),
        ({"messages": [{"role": "user"}]}, 'messages[0]: missing "content"'),
        (_msgs(("user", "p"), ("assistant", 3)), 'messages[1]: "content" must be a string, got int'),
        (_msgs(("user", "p"), (None, "r")), 'messages[1]: "role" must be a string, got NoneType'),
        (_msgs(("user", "p"), ("bot", "r")), "messages[1]: unknown role 'bot'; expected one of system, user"),
        (_msgs(("user", "p")), "the last message must be from the assistant, not the user"),
        (_msgs(("user", "p"), ("assistant", "r"), ("user", "q")), "must be from the assistant, not the user"),
        (_msgs(("system", "s")), "the last message must be from the assistant, not the system"),
        (_msgs(("assistant", "r")), "messages[0] is from the assistant"),
    ],
)
def test_chat_of_refuses_bad_records(record: object, message: str) -> None:
    with pytest.raises(DataError) as info:
        chat_of(record, "data.jsonl:3")
    assert str(info.value).startswith("data.jsonl:3: ")
    assert message in str(info.value)


def test_chat_text_round_trip_is_canonical() -> None:
    text = chat_to_text(TWO_TURNS)
    assert chat_from_text(text) == TWO_TURNS
    assert text == json.dumps(TWO_TURNS, sort_keys=True, separators=(",", ":"))
    assert chat_to_text([{"content": "é", "role": "user"}]) == '[{"content":"é","role":"user"}]'
    with pytest.raises(DataError, match="example 2: not a chat"):
        chat_from_text("plain text", "example 2")
    with pytest.raises(DataError, match="the last message must be from the assistant"):
        chat_from_text(chat_to_text(ONE_TURN[:2]))


# ---------------------------------------------------------------- files

RECORDS = [{"prompt": PROMPT, "response": RESPONSE}, {"messages": TWO_TURNS}]
EXPECTED = [
    Example(
        chat_to_text([{"role": "user", "content": PROMPT}, {"role": "assistant", "content": RESPONSE}]),
        NO_LABEL,
    ),
    Example(chat_to_text(TWO_TURNS), NO_LABEL),
]


def _write(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if path.suffix == ".zst" else data)
    return path


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.zst"])
def test_read_chats(tmp_path: Path, name: str) -> None:
    lines = [json.dumps(RECORDS[0]), "", "  ", json.dumps(RECORDS[1], ensure_ascii=False)]
    assert read_chats(_write(tmp_path / name, lines)) == EXPECTED


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.zst"])
def test_read_chats_reports_file_and_line(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, [json.dumps(RECORDS[0]), "", '{"prompt": "p",'])
    with pytest.raises(DataError, match=rf"^{path}:3: invalid JSON: "):
        read_chats(path)
    path = _write(tmp_path / name, ["", json.dumps({"prompt": "p"})])
    with pytest.raises(DataError, match=rf'^{path}:2: missing "response"$'):
        read_chats(path)
    path = _write(tmp_path / name, [json.dumps(_msgs(("user", "p"), ("robot", "r")))])
    with pytest.raises(DataError, match=rf"^{path}:1: messages\[1\]: unknown role 'robot'"):
        read_chats(path)


def test_read_chats_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported file suffix"):
        read_chats(_write(tmp_path / "train.csv", ["prompt,response"]))
    with pytest.raises(DataError, match="file not found"):
        read_chats(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- rendering and loss masking


def test_fallback_template_text() -> None:
    tok = _tokenizer(None)
    assert tok.chat_template is None
    assert render_chat(tok, ONE_TURN) == (
        f"[CLS]### System:\n{SYSTEM}\n\n### User:\n{PROMPT}\n\n### Assistant:\n{RESPONSE}[SEP]\n\n"
    )
    assert render_chat(tok, ONE_TURN[:2], add_generation_prompt=True) == (
        f"[CLS]### System:\n{SYSTEM}\n\n### User:\n{PROMPT}\n\n### Assistant:\n"
    )
    text, spans = assistant_spans(tok, TWO_TURNS)
    assert [text[a:b] for a, b in spans] == [f"{RESPONSE}[SEP]", f"{RESPONSE2}[SEP]"]
    assert "{{ eos_token or '' }}" in FALLBACK_TEMPLATE


def test_custom_template_is_used() -> None:
    tok = _tokenizer(CHATML)
    text, spans = assistant_spans(tok, ONE_TURN)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    assert [text[a:b] for a, b in spans] == [f"{RESPONSE}<|im_end|>"]


def test_only_the_response_is_scored(tok: PreTrainedTokenizerFast) -> None:
    enc, labels = encode_chats(tok, [chat_to_text(ONE_TURN)], max_len=128)
    assert set(enc) == {"input_ids", "attention_mask"}
    assert _scored(labels) == _ids(tok, RESPONSE) + [tok.eos_token_id]
    assert tok.decode(_scored(labels), skip_special_tokens=True) == RESPONSE
    ids = enc["input_ids"][0].tolist()
    # bos and eos are where the template writes them, and no [CLS]/[SEP] pair is added around the text
    assert ids[0] == (
        tok.bos_token_id if tok.chat_template is None else tok.convert_tokens_to_ids("<|im_start|>")
    )
    assert ids.count(tok.cls_token_id) == (1 if tok.chat_template is None else 0)
    assert ids[-1] == tok.eos_token_id


def test_every_assistant_turn_is_scored(tok: PreTrainedTokenizerFast) -> None:
    enc, labels = encode_chats(tok, [chat_to_text(TWO_TURNS)], max_len=128)
    expected = _ids(tok, RESPONSE) + [tok.eos_token_id] + _ids(tok, RESPONSE2) + [tok.eos_token_id]
    assert _scored(labels) == expected
    scored_at = [i for i, t in enumerate(labels[0].tolist()) if t != IGNORE_INDEX]
    ids = enc["input_ids"][0].tolist()
    # the user's second turn lies between the two responses, unscored
    gap = ids[scored_at[len(_ids(tok, RESPONSE))] + 1 : scored_at[len(_ids(tok, RESPONSE)) + 1]]
    prompt2 = _ids(tok, PROMPT2)
    assert any(gap[i : i + len(prompt2)] == prompt2 for i in range(len(gap)))
    assert (labels[0] == enc["input_ids"][0]).sum() == len(expected)


def test_truncation(tok: PreTrainedTokenizerFast) -> None:
    text = chat_to_text(ONE_TURN)
    _, labels = encode_chats(tok, [text], max_len=128)
    first = next(i for i, t in enumerate(labels[0].tolist()) if t != IGNORE_INDEX)
    enc, cut = encode_chats(tok, [text], max_len=first + 2)
    assert enc["input_ids"].shape == (1, first + 2)
    assert _scored(cut) == _ids(tok, RESPONSE)[:2]
    enc, cut = encode_chats(tok, [text], max_len=first - 1)
    assert enc["input_ids"].shape == (1, first - 1)
    assert (cut == IGNORE_INDEX).all()


def test_padding_is_ignored(tok: PreTrainedTokenizerFast) -> None:
    short = [{"role": "user", "content": "and"}, {"role": "assistant", "content": "the"}]
    enc, labels = encode_chats(tok, [chat_to_text(TWO_TURNS), chat_to_text(short)], max_len=128)
    mask = enc["attention_mask"]
    assert mask[0].all()
    n = int(mask[1].sum())
    assert 0 < n < mask.shape[1]
    assert mask[1, :n].all()  # padding on the right
    assert (labels[1, n:] == IGNORE_INDEX).all()
    assert (enc["input_ids"][1, n:] == tok.pad_token_id).all()
    assert _scored(labels, 1) == _ids(tok, "the") + [tok.eos_token_id]


def test_template_that_is_not_prefix_stable_is_refused() -> None:
    tok = _tokenizer("{{ messages|length }}" + CHATML)
    with pytest.raises(ValueError, match="does not render message 2 of a chat as a prefix"):
        encode_chats(tok, [chat_to_text(ONE_TURN)], max_len=64)


def test_slow_or_bad_input_is_refused() -> None:
    tok = _tokenizer(None)
    with pytest.raises(DataError, match="example 1: not a chat"):
        encode_chats(tok, [chat_to_text(ONE_TURN), "the cat"], max_len=64)
    with pytest.raises(ValueError, match="max_len must be positive"):
        encode_chats(tok, [chat_to_text(ONE_TURN)], max_len=0)


# ---------------------------------------------------------------- end to end


def test_llama_loss_covers_responses_only(tmp_path: Path) -> None:
    model_dir = make_tiny_causal_model_dir(
        tmp_path / "llama", CORPUS, family="llama", hidden_size=32, num_layers=1, vocab_size=300, max_len=64
    )
    model, tok = load_model(model_dir, [], task="causal-lm")
    texts = [chat_to_text(TWO_TURNS), chat_to_text(ONE_TURN)]
    enc, labels = encode_chats(tok, texts, max_len=64)
    with torch.no_grad():
        out = model(**enc, labels=labels)
        assert math.isfinite(float(out.loss))
        # manual cross-entropy over the response tokens alone, found without the labels
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        losses = []
        for row in range(len(texts)):
            ids = enc["input_ids"][row].tolist()
            for response in [RESPONSE, RESPONSE2] if row == 0 else [RESPONSE]:
                target = _ids(tok, response) + [tok.eos_token_id]
                start = next(i for i in range(len(ids)) if ids[i : i + len(target)] == target)
                losses += [-logp[row, t - 1, ids[t]] for t in range(start, start + len(target))]
        assert float(out.loss) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)
        # scoring one prompt token as well changes the loss: masked tokens really are excluded
        unmasked = labels.clone()
        unmasked[0, 3] = enc["input_ids"][0, 3]
        assert float(model(**enc, labels=unmasked).loss) != pytest.approx(float(out.loss), rel=1e-6)
