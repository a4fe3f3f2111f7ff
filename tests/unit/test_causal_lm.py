"""Unit tests for causal language modelling: tiny GPT-2 and LLaMA models built locally (no download),
their loading and assets, next-token training and evaluation, perplexity, and text-only data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from strata.data import NO_LABEL, DataError, Example, read_examples
from strata.modeling import (
    IGNORE_INDEX,
    TASKS,
    count_correct,
    evaluate,
    global_tensors,
    load_model,
    load_tensors,
    make_tiny_causal_model_dir,
    make_tiny_model_dir,
    model_from_assets,
    model_inputs,
    perplexity,
    save_assets,
    task_of,
    write_assets,
)
from strata.serde import TrainingConfig
from worker.trainer import train

FAMILIES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
# a small, very regular corpus: a model this size learns it within a few steps
TEXTS = [
    f"{s} {v} {o} ."
    for s in ("the cat", "the dog", "a bird", "my friend")
    for v in ("sat on", "ran to", "looked at")
    for o in ("the mat", "the door", "the tree")
]
EXAMPLES = [Example(t, NO_LABEL) for t in TEXTS]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_model_dir(
        tmp_path_factory.mktemp(request.param) / "model",
        TEXTS,
        family=request.param,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        vocab_size=200,
        max_len=32,
    )


def _family(model_dir: Path) -> str:
    return str(json.loads((model_dir / "config.json").read_text())["model_type"])


# --- building, loading, assets ------------------------------------------------------------------


def test_tiny_causal_dir_loads_as_a_causal_lm(model_dir: Path) -> None:
    assert (model_dir / "model.safetensors").is_file()
    model, tok = load_model(model_dir, [], task="causal-lm")
    assert type(model).__name__ == FAMILIES[_family(model_dir)]
    assert not model.training
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("[CLS]", "[SEP]", "[PAD]")
    assert tok.padding_side == "right" and tok.model_max_length == 32
    cfg = model.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    ids = tok("the cat sat on the mat .")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    out = model(**tok(["the cat sat"], return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)


def test_load_model_is_seeded_and_reads_the_saved_weights(model_dir: Path) -> None:
    a, _ = load_model(model_dir, [], seed=1, task="causal-lm")
    b, _ = load_model(model_dir, ["ignored"], seed=2, task="causal-lm")
    ta, tb = global_tensors(a), global_tensors(b)
    assert set(ta) == set(tb) and all(torch.equal(ta[n], tb[n]) for n in ta)


def test_make_tiny_causal_model_dir_is_deterministic_and_refuses_unknown_family(tmp_path: Path) -> None:
    one = make_tiny_causal_model_dir(tmp_path / "a", TEXTS, hidden_size=16, num_layers=1, vocab_size=100)
    two = make_tiny_causal_model_dir(tmp_path / "b", TEXTS, hidden_size=16, num_layers=1, vocab_size=100)
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="gpt2 or llama"):
        make_tiny_causal_model_dir(tmp_path / "c", TEXTS, family="bert")
    assert not (tmp_path / "c").exists()


def test_assets_rebuild_the_causal_lm(model_dir: Path, tmp_path: Path) -> None:
    model, tok = load_model(model_dir, [], task="causal-lm")
    out = write_assets(save_assets(model, tok, tmp_path / "sent"), tmp_path / "received")
    rebuilt, rebuilt_tok = model_from_assets(out)
    assert type(rebuilt) is type(model)
    assert task_of(rebuilt) == "causal-lm"
    want = {n: tuple(t.shape) for n, t in global_tensors(model).items()}
    assert {n: tuple(t.shape) for n, t in global_tensors(rebuilt).items()} == want
    assert rebuilt_tok.pad_token_id == tok.pad_token_id and rebuilt_tok.padding_side == "right"
    assert rebuilt_tok(TEXTS[0])["input_ids"] == tok(TEXTS[0])["input_ids"]
    load_tensors(rebuilt, {n: t.clone() for n, t in global_tensors(model).items()})
    assert evaluate(rebuilt, rebuilt_tok, EXAMPLES, max_len=32) == pytest.approx(
        evaluate(model, tok, EXAMPLES, max_len=32), rel=1e-5
    )


def test_a_causal_checkpoint_loaded_as_a_classifier_stays_a_classifier(
    model_dir: Path, tmp_path: Path
) -> None:
    """The config records the class loaded, so the workers' assets rebuild a classifier too."""
    model, tok = load_model(model_dir, ["neg", "pos"])
    assert task_of(model) == task_of(model.config) == "sequence-classification"
    rebuilt, _ = model_from_assets(write_assets(save_assets(model, tok, tmp_path / "s"), tmp_path / "r"))
    assert type(rebuilt) is type(model)
    assert rebuilt.config.num_labels == 2


def test_load_model_pads_with_eos_when_the_tokenizer_has_no_pad(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "nopad"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    cfg_path = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["pad_token"]
    cfg_path.write_text(json.dumps(cfg))
    config = json.loads((copy / "config.json").read_text())
    config["pad_token_id"] = None
    (copy / "config.json").write_text(json.dumps(config))
    model, tok = load_model(copy, [], task="causal-lm")
    assert tok.pad_token == "[SEP]" and tok.pad_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.eos_token_id
    loss, _ = evaluate(model, tok, EXAMPLES[:4], max_len=32)  # a padded batch works
    assert math.isfinite(loss)


def test_load_model_refuses_an_unknown_task(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'translation'") as err:
        load_model(model_dir, [], task="translation")
    assert all(task in str(err.value) for task in TASKS)


def test_task_of(model_dir: Path, tmp_path: Path) -> None:
    assert TASKS == ("sequence-classification", "causal-lm", "instruction")
    model, _ = load_model(model_dir, [], task="causal-lm")
    assert task_of(model) == task_of(model.config) == "causal-lm"
    # instruction tuning loads the same causal LM, marked in its config so the assets rebuild the task
    tuned, _ = load_model(model_dir, [], task="instruction")
    assert task_of(tuned) == task_of(tuned.config) == "instruction"
    bert_dir = make_tiny_model_dir(tmp_path / "bert", TEXTS, ["a", "b"], hidden_size=16, num_layers=1)
    bert, _ = load_model(bert_dir, ["a", "b"])
    assert task_of(bert) == task_of(bert.config) == "sequence-classification"
    from transformers import AutoConfig

    for architectures, task in [
        (["GPT2LMHeadModel"], "causal-lm"),
        (["LlamaForCausalLM"], "causal-lm"),
        (["BertForSequenceClassification"], "sequence-classification"),
        (["GPT2Model"], "sequence-classification"),
        (None, "sequence-classification"),
    ]:
        config = AutoConfig.for_model("gpt2")
        config.architectures = architectures
        assert task_of(config) == task, architectures


# --- batches, evaluation, perplexity ------------------------------------------------------------


def test_model_inputs_mask_padding_out_of_the_labels(model_dir: Path) -> None:
    _, tok = load_model(model_dir, [], task="causal-lm")
    batch = [Example("the cat", NO_LABEL), Example("my friend looked at the tree .", NO_LABEL)]
    enc, labels = model_inputs("causal-lm", tok, batch, 32, "cpu")
    mask = enc["attention_mask"]
    assert int(mask[0].sum()) < mask.shape[1], "the short text is padded"
    assert torch.equal(labels[mask == 1], enc["input_ids"][mask == 1])
    assert bool((labels[mask == 0] == IGNORE_INDEX).all())
    # next-token predictions: one per real token after the first
    logits = torch.zeros(*labels.shape, len(tok))
    assert count_correct("causal-lm", logits, labels)[1] == int(mask.sum()) - len(batch)


def test_evaluate_is_finite_and_perplexity_is_exp(model_dir: Path) -> None:
    model, tok = load_model(model_dir, [], task="causal-lm")
    model.train()
    loss, accuracy = evaluate(model, tok, EXAMPLES, max_len=32, batch_size=8)
    assert model.training, "evaluate restores the training mode"
    assert math.isfinite(loss) and loss > 0
    assert 0.0 <= accuracy <= 1.0
    # an untrained model is close to uniform over the vocabulary
    assert abs(loss - math.log(len(tok))) < 1.0
    assert perplexity(loss) == pytest.approx(math.exp(loss))
    assert evaluate(model, tok, EXAMPLES, max_len=32, batch_size=5) == pytest.approx(
        (loss, accuracy), rel=1e-5
    )


def test_perplexity() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert perplexity(700.0) == pytest.approx(math.exp(700.0))
    assert perplexity(701.0) == math.inf
    assert perplexity(math.inf) == math.inf


def test_padding_is_ignored(model_dir: Path) -> None:
    """A text's loss is the same alone (no padding) and beside a longer one (padded)."""
    model, tok = load_model(model_dir, [], task="causal-lm")
    short, long = Example("the cat", NO_LABEL), Example("my friend looked at the door . the end .", NO_LABEL)

    def tokens(e: Example) -> int:
        return len(tok(e.text)["input_ids"]) - 1  # predicted positions

    alone = [evaluate(model, tok, [e], max_len=32, batch_size=1) for e in (short, long)]
    together = evaluate(model, tok, [short, long], max_len=32, batch_size=2)
    n = [tokens(short), tokens(long)]
    assert n[0] < n[1]
    want_loss = (alone[0][0] * n[0] + alone[1][0] * n[1]) / sum(n)
    want_acc = (alone[0][1] * n[0] + alone[1][1] * n[1]) / sum(n)
    assert together[0] == pytest.approx(want_loss, rel=1e-4)
    assert together[1] == pytest.approx(want_acc)
    # across batches too, each token weighs the same (not each batch or each text)
    assert evaluate(model, tok, [short, long], max_len=32, batch_size=1) == pytest.approx(together, rel=1e-4)


def test_evaluate_refuses_texts_with_nothing_to_predict(model_dir: Path) -> None:
    from tokenizers import processors

    model, tok = load_model(model_dir, [], task="causal-lm")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A")  # no bos/eos
    one_token = [Example("the", NO_LABEL), Example("cat", NO_LABEL)]
    assert [len(tok(e.text)["input_ids"]) for e in one_token] == [1, 1]
    with pytest.raises(ValueError, match="nothing to evaluate: no text is long enough"):
        evaluate(model, tok, one_token, batch_size=1)
    loss, _ = evaluate(model, tok, [*one_token, Example("the cat sat", NO_LABEL)], batch_size=1)
    assert math.isfinite(loss), "a batch with nothing to predict is skipped, not averaged in as NaN"
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(model, tok, [])


# --- training -----------------------------------------------------------------------------------


def test_training_lowers_the_next_token_loss(model_dir: Path) -> None:
    model, tok = load_model(model_dir, [], task="causal-lm")
    before, before_acc = evaluate(model, tok, EXAMPLES, max_len=32)
    cfg = TrainingConfig(local_epochs=4, batch_size=8, learning_rate=1e-2, max_seq_len=32, seed=3)
    res = train(model, tok, EXAMPLES, cfg, 1, progress=False, worker="org-1")
    assert res.num_steps == 4 * math.ceil(len(EXAMPLES) / 8) and res.num_samples == len(EXAMPLES)
    assert math.isfinite(res.loss) and 0.0 <= res.accuracy <= 1.0
    assert res.loss < before, "the mean training loss is below the untrained loss"
    assert evaluate(model, tok, EXAMPLES, max_len=32)[0] == before, "the model is handed back unchanged"
    assert set(res.delta) == {n for n, p in model.named_parameters() if p.requires_grad}
    load_tensors(model, {n: t + res.delta[n] for n, t in global_tensors(model).items()})
    after, after_acc = evaluate(model, tok, EXAMPLES, max_len=32)
    assert after < 0.5 * before
    assert perplexity(after) < 0.25 * perplexity(before)
    assert after_acc > before_acc + 0.3
    again = train(model, tok, EXAMPLES, cfg, 1, progress=False, worker="org-1")
    assert again.loss < res.loss  # trained further from the better weights


def test_causal_training_sends_only_trained_tensors(model_dir: Path) -> None:
    model, tok = load_model(model_dir, [], task="causal-lm")
    names = [n for n, _ in model.named_parameters()]
    trained = {n for n in names if ".0." in n}  # the one transformer layer only
    assert trained and trained != set(names)
    for name, p in model.named_parameters():
        p.requires_grad = name in trained
    res = train(
        model, tok, EXAMPLES, TrainingConfig(batch_size=8, max_steps=2, max_seq_len=32), 1, progress=False
    )
    assert set(res.delta) == trained
    assert any(bool(d.abs().sum() > 0) for d in res.delta.values())


# --- text-only data ------------------------------------------------------------------------------


def test_read_examples_text_only_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "the cat sat"}\n\n{"text": "a dog", "label": 1}\n')
    assert read_examples(path, require_labels=False) == [Example("the cat sat", -1), Example("a dog", 1)]
    with pytest.raises(DataError, match=r'train.jsonl:1: missing "label"'):
        read_examples(path)  # labels are required by default
    path.write_text('{"label": 0}\n')
    with pytest.raises(DataError, match=r':1: missing "text"'):
        read_examples(path, require_labels=False)
    path.write_text('{"text": "x", "label": 5}\n')
    with pytest.raises(DataError, match="out of range"):
        read_examples(path, ["a", "b"], require_labels=False)  # a given label is still checked


def test_read_examples_text_only_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('text\nthe cat sat\n"a, dog"\n')
    assert read_examples(path, require_labels=False) == [Example("the cat sat", -1), Example("a, dog", -1)]
    with pytest.raises(DataError, match='no "label" column'):
        read_examples(path)
    path.write_text("text,label\na,1\nb,\nc\n")
    assert read_examples(path, require_labels=False) == [Example("a", 1), Example("b", -1), Example("c", -1)]
    path.write_text("text,label\na,1\nc\n")
    with pytest.raises(DataError, match=r':3: missing "label"'):
        read_examples(path)  # a short row is still refused by default
