"""Instruction-tuning data for causal language models: chats read, rendered and encoded, loss on responses.

A record is ``{"prompt", "response"}`` (optional ``"system"``) or ``{"messages": [...]}``; either becomes a
chat, a list of ``{"role", "content"}`` messages ending with an assistant message. A chat travels through
the pipeline as ``Example(chat_to_text(chat), NO_LABEL)``. It is rendered with the tokenizer's chat
template (``FALLBACK_TEMPLATE`` when it has none) and tokenised without added special tokens, so every
bos/eos is the template's. Labels are the input ids where a token overlaps an assistant message's content
or its end of turn (what the template writes after the content, e.g. eos; trailing whitespace excluded),
and ``IGNORE_INDEX`` elsewhere (system and user turns, role headers, padding). Assistant spans are found by
character offsets: the text rendered up to each assistant message (with the generation prompt) and up to
its end must both be prefixes of the whole chat's text, which holds for usual templates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from strata.data import NO_LABEL, DataError, Example, _open_lines, json_records
from strata.modeling import IGNORE_INDEX

__all__ = [
    "FALLBACK_TEMPLATE",
    "ROLES",
    "assistant_spans",
    "chat_from_text",
    "chat_of",
    "chat_to_text",
    "encode_chats",
    "read_chats",
    "render_chat",
]

ROLES = ("system", "user", "assistant")
Chat = list[dict[str, str]]

#: The chat template of a tokenizer without one. Each message is a "### System:", "### User:" or
#: "### Assistant:" header line, its content and a blank line; an assistant's content is followed by the
#: eos token. The text starts with the bos token (when the tokenizer has one); ``add_generation_prompt``
#: appends "### Assistant:\n". E.g. "[CLS]### User:\nhi\n\n### Assistant:\nhello[SEP]\n\n".
FALLBACK_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Assistant:\n{{ message['content'] }}{{ eos_token or '' }}\n\n"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def _string(record: dict[str, object], key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f'{where}: "{key}" must be a string, got {type(value).__name__}')
    return value


def _messages(value: object, where: str) -> Chat:
    if not isinstance(value, list):
        raise DataError(f'{where}: "messages" must be a list, got {type(value).__name__}')
    if not value:
        raise DataError(f'{where}: "messages" is empty')
    chat: Chat = []
    for i, message in enumerate(value):
        at = f"{where}: messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{at} must be an object, got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise DataError(f'{at}: missing "{key}"')
        role, content = _string(message, "role", at), _string(message, "content", at)
        if role not in ROLES:
            raise DataError(f"{at}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        chat.append({"role": role, "content": content})
    if chat[0]["role"] == "assistant":
        raise DataError(
            f"{where}: messages[0] is from the assistant; a chat opens with a system or user message"
        )
    if chat[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be from the assistant, not the {chat[-1]['role']}")
    return chat


def chat_of(record: object, where: str) -> Chat:
    """The chat of a record: ``{"prompt": str, "response": str}`` with an optional ``"system": str``, or
    ``{"messages": [{"role": ..., "content": ...}, ...]}`` (roles in ``ROLES``, the last from the assistant).

    Raises :class:`DataError` prefixed with ``where`` naming the missing key, wrong type or bad role.
    """
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        extra = sorted({"prompt", "response", "system"} & record.keys())
        if extra:
            raise DataError(f'{where}: "messages" cannot be combined with "{extra[0]}"')
        return _messages(record["messages"], where)
    if "prompt" not in record and "response" not in record:
        raise DataError(f'{where}: expected "prompt" and "response", or "messages"')
    for key in ("prompt", "response"):
        if key not in record:
            raise DataError(f'{where}: missing "{key}"')
    chat = [{"role": "system", "content": _string(record, "system", where)}] if "system" in record else []
    chat.append({"role": "user", "content": _string(record, "prompt", where)})
    chat.append({"role": "assistant", "content": _string(record, "response", where)})
    return chat


def chat_to_text(chat: Chat) -> str:
    """The canonical text of a chat (compact JSON, sorted keys), as an ``Example`` carries it."""
    return json.dumps(chat, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def chat_from_text(text: str, where: str = "chat") -> Chat:
    """The chat that ``chat_to_text`` wrote; :class:`DataError` for text that is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not a chat (invalid JSON: {exc.msg})") from None
    return _messages(value, where)


def holds_chats(path: str | Path) -> bool:
    """Whether a JSON Lines file holds chat records: its first non-blank line is an object with "messages"
    or "prompt" (a file that cannot be read as such says no: the plain readers then report why)."""
    path = Path(path)
    if not path.is_file() or not path.name.lower().endswith((".jsonl", ".jsonl.zst")):
        return False
    try:
        with _open_lines(path) as lines:
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    return isinstance(record, dict) and ("messages" in record or "prompt" in record)
    except (DataError, ValueError):
        return False
    return False


def read_chats(path: str | Path) -> list[Example]:
    """Read a ``.jsonl`` or ``.jsonl.zst`` file of chat records (see ``chat_of``; blank lines skipped)
    into examples ``Example(chat_to_text(chat), NO_LABEL)``. :class:`DataError` names the file and line."""
    path = Path(path)
    if not path.name.lower().endswith((".jsonl", ".jsonl.zst")):
        raise DataError(f"{path}: unsupported file suffix; expected .jsonl or .jsonl.zst")
    return [Example(chat_to_text(chat_of(record, where)), NO_LABEL) for record, where in json_records(path)]


def render_chat(tokenizer: PreTrainedTokenizerBase, chat: Chat, add_generation_prompt: bool = False) -> str:
    """The text of ``chat`` by the tokenizer's chat template, or ``FALLBACK_TEMPLATE`` if it has none."""
    template = None if tokenizer.chat_template else FALLBACK_TEMPLATE
    text = tokenizer.apply_chat_template(
        chat, chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def assistant_spans(tokenizer: PreTrainedTokenizerBase, chat: Chat) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character span ``[start, end)`` of each assistant message in it: from
    the end of the generation prompt before it to the end of its turn, less trailing whitespace.

    Raises ``ValueError`` if the template renders a chat's beginning differently from the whole chat.
    """
    text = render_chat(tokenizer, chat)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        before = render_chat(tokenizer, chat[:i], add_generation_prompt=True)
        through = render_chat(tokenizer, chat[: i + 1])
        if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
            raise ValueError(
                f"the chat template does not render message {i} of a chat as a prefix of the whole chat; "
                "cannot tell which tokens are the assistant's"
            )
        end = len(through.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return text, spans


def _scored(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Whether each token (by its character offsets) overlaps one of the spans (both sorted)."""
    scored: list[bool] = []
    k = 0
    for start, end in offsets:
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        scored.append(k < len(spans) and end > spans[k][0] and end > start)
    return scored


def encode_chats(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Encode chat texts (``chat_to_text``) for a causal LM: ``({"input_ids", "attention_mask"}, labels)``.

    Each chat is rendered, tokenised without added special tokens, cut to ``max_len`` tokens and padded on
    the right. Labels are the input ids on assistant tokens (every assistant turn, with its end of turn)
    and ``IGNORE_INDEX`` elsewhere; a chat whose responses were cut off entirely has no scored token.
    Needs a fast tokenizer (character offsets).
    """
    if not tokenizer.is_fast:
        raise ValueError("encode_chats needs a fast tokenizer (for character offsets)")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    rows: list[tuple[list[int], list[bool]]] = []
    for i, chat_text in enumerate(texts):
        text, spans = assistant_spans(tokenizer, chat_from_text(chat_text, f"example {i}"))
        enc = tokenizer(
            text,
            add_special_tokens=False,
            truncation=True,
            max_length=max_len,
            return_offsets_mapping=True,
            return_token_type_ids=False,
        )
        rows.append((list(enc["input_ids"]), _scored(enc["offset_mapping"], spans)))
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    width = max((len(ids) for ids, _ in rows), default=0)
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, scored) in enumerate(rows):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = input_ids[row, :n].masked_fill(
            ~torch.tensor(scored, dtype=torch.bool), IGNORE_INDEX
        )
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels
