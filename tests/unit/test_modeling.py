"""Unit tests for strata.modeling on a tiny BERT built locally (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from strata import synthetic
from strata.data import Example
from strata.modeling import (
    ASSET_SUFFIXES,
    build_tokenizer,
    evaluate,
    global_tensors,
    load_model,
    load_tensors,
    make_tiny_model_dir,
    model_from_assets,
    pick_device,
    read_labels_from_config,
    save_assets,
    write_assets,
)

TEXTS = [
    "the service was excellent and the staff were friendly",
    "terrible food, cold and late",
    "an average meal at an average price",
    "I would come back again, loved it",
    "never again: rude waiter and dirty tables",
    "the soup was fine but the bread was stale",
]
LABELS = ["negative", "neutral", "positive"]
EXAMPLES = [Example(t, i % len(LABELS)) for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model"
    return make_tiny_model_dir(
        path, TEXTS, LABELS, hidden_size=32, num_layers=1, num_heads=2, vocab_size=200, max_len=32
    )


@pytest.fixture(scope="module")
def loaded(model_dir: Path):  # type: ignore[no-untyped-def]
    return load_model(model_dir, LABELS)


def test_build_tokenizer_then_encode() -> None:
    tok = build_tokenizer(TEXTS, vocab_size=150)
    assert 5 < len(tok) <= 150
    enc = tok("the staff were friendly")
    ids = enc["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "the staff were friendly"
    assert tok("THE Staff")["input_ids"] == tok("the staff")["input_ids"]  # uncased
    unknown = tok("zzqx")["input_ids"]
    assert len(unknown) >= 3
    batch = tok(["short", "a much longer sentence here"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
    assert int(batch["attention_mask"][0].sum()) < batch["input_ids"].shape[1]


def test_build_tokenizer_special_tokens() -> None:
    tok = build_tokenizer(TEXTS, vocab_size=100)
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == 0
    assert (tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token) == (
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    )


def test_make_tiny_model_dir_writes_a_model(model_dir: Path) -> None:
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").is_file()
    assert read_labels_from_config(model_dir) == LABELS


def test_load_model_has_the_labels(loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    assert model.config.num_labels == len(LABELS)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert not model.training
    assert tokenizer.model_max_length == 32
    out = model(**tokenizer(["hello there"], return_tensors="pt"))
    assert out.logits.shape == (1, len(LABELS))


def test_load_model_with_other_labels_gets_a_new_head(model_dir: Path) -> None:
    labels = ["a", "b", "c", "d", "e"]
    model, _ = load_model(model_dir, labels, seed=1)
    assert model.config.num_labels == 5
    assert model.classifier.out_features == 5
    again, _ = load_model(model_dir, labels, seed=1)
    assert torch.equal(model.classifier.weight, again.classifier.weight), "the new head is seeded"


def test_load_model_refuses_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path, LABELS)


def test_assets_rebuild_the_same_architecture(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    files = save_assets(model, tokenizer, tmp_path / "sent")
    assert "config.json" in files
    assert all(Path(name).suffix in ASSET_SUFFIXES for name in files)
    assert not any(name.endswith(".safetensors") for name in files)
    out = write_assets(files, tmp_path / "received")
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    rebuilt, rebuilt_tok = model_from_assets(out)
    want = {n: tuple(t.shape) for n, t in global_tensors(model).items()}
    got = {n: tuple(t.shape) for n, t in global_tensors(rebuilt).items()}
    assert got == want
    assert rebuilt.config.id2label == model.config.id2label
    assert (
        rebuilt_tok("the staff were friendly")["input_ids"]
        == tokenizer("the staff were friendly")["input_ids"]
    )


def test_write_assets_overwrites_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_assets({"a.json": b"1"}, tmp_path)
    write_assets({"a.json": b"2", "b.txt": b"x"}, tmp_path)
    assert (tmp_path / "a.json").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt"]


def test_global_tensors_load_tensors_round_trip(loaded, model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    tensors = global_tensors(model)
    assert tensors and all(not t.requires_grad for t in tensors.values())
    assert set(tensors) == {n for n, _ in model.named_parameters()}
    other, _ = model_from_assets(model_dir)  # same architecture, random weights
    assert not torch.equal(global_tensors(other)["classifier.weight"], tensors["classifier.weight"])
    load_tensors(other, {n: t.clone() for n, t in tensors.items()})
    for name, t in global_tensors(other).items():
        assert torch.equal(t, tensors[name]), name


def test_load_tensors_partial_and_dtype_cast(loaded, model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    other, _ = load_model(model_dir, LABELS, seed=5)
    before = {n: t.clone() for n, t in global_tensors(other).items()}
    bias = torch.linspace(-1, 1, len(LABELS)).to(torch.bfloat16)
    load_tensors(other, {"classifier.bias": bias})
    after = global_tensors(other)
    assert after["classifier.bias"].dtype == torch.float32
    assert torch.equal(after["classifier.bias"], bias.float())
    assert all(torch.equal(after[n], before[n]) for n in before if n != "classifier.bias")


def test_load_tensors_unknown_name(loaded) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    with pytest.raises(KeyError, match="no parameter"):
        load_tensors(model, {"classifier.ghost": torch.zeros(1)})


def test_load_tensors_wrong_shape(loaded) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    with pytest.raises(ValueError, match="classifier.bias: shape"):
        load_tensors(model, {"classifier.bias": torch.zeros(len(LABELS) + 1)})


@pytest.mark.parametrize("batch_size", [4, 64])
def test_evaluate(loaded, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    model.train()
    loss, accuracy = evaluate(model, tokenizer, EXAMPLES, max_len=16, batch_size=batch_size)
    assert model.training, "evaluate restores the training mode"
    assert loss > 0 and torch.isfinite(torch.tensor(loss))
    assert 0.0 <= accuracy <= 1.0
    assert accuracy * len(EXAMPLES) == pytest.approx(round(accuracy * len(EXAMPLES)))
    model.eval()
    again = evaluate(model, tokenizer, EXAMPLES, max_len=16, batch_size=2)
    assert again[0] == pytest.approx(loss, rel=1e-5)
    assert again[1] == accuracy


def test_evaluate_nothing(loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(model, tokenizer, [])


def test_pick_device() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_pick_device_cuda_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    for requested in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device(requested)


def _tiny_classifier(tmp_path: Path, texts: list[str]):  # type: ignore[no-untyped-def]
    """A one-layer classifier for the generated topics, built from a config (no download)."""
    model_dir = make_tiny_model_dir(
        tmp_path / "m",
        texts,
        synthetic.LABELS,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        vocab_size=300,
        max_len=32,
    )
    return load_model(model_dir, synthetic.LABELS)


def test_tokenizer_and_local_training_are_reproducible(tmp_path: Path) -> None:
    """The same text gives the same vocabulary, and the same round gives the same delta."""
    from strata.serde import TrainingConfig
    from worker.trainer import train

    texts = [e.text for e in synthetic.generate(120, seed=3)]
    assert build_tokenizer(texts, 300).get_vocab() == build_tokenizer(list(reversed(texts)), 300).get_vocab()
    model, tok = _tiny_classifier(tmp_path, texts)
    examples = synthetic.generate(40, seed=4)
    cfg = TrainingConfig(batch_size=8, learning_rate=1e-3, max_seq_len=32)
    a = train(model, tok, examples, cfg, 1, progress=False, worker="org-1")
    b = train(model, tok, examples, cfg, 1, progress=False, worker="org-1")
    c = train(model, tok, examples, cfg, 1, progress=False, worker="org-2")
    assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
    assert any(not torch.equal(a.delta[k], c.delta[k]) for k in a.delta)  # workers get their own dropout


def test_workers_training_in_threads_of_one_process_stay_reproducible(tmp_path: Path) -> None:
    """Dropout draws from torch's process-wide generator: two workers training at once in threads
    (as in-process tests and benchmarks run them) must each get the delta they get alone."""
    import threading

    from strata.serde import TrainingConfig
    from worker.trainer import train

    texts = [e.text for e in synthetic.generate(120, seed=3)]
    examples = synthetic.generate(64, seed=4)
    cfg = TrainingConfig(batch_size=8, learning_rate=1e-3, max_seq_len=32)
    pairs = [_tiny_classifier(tmp_path / name, texts) for name in ("a", "b")]
    alone = {
        name: train(m, tok, examples, cfg, 1, progress=False, worker=name).delta
        for name, (m, tok) in zip(("org-1", "org-2"), pairs, strict=True)
    }
    together: dict[str, dict[str, torch.Tensor]] = {}

    def run(name: str, m, tok) -> None:  # type: ignore[no-untyped-def]
        together[name] = train(m, tok, examples, cfg, 1, progress=False, worker=name).delta

    threads = [
        threading.Thread(target=run, args=(name, m, tok))
        for name, (m, tok) in zip(("org-1", "org-2"), pairs, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in alone:
        assert all(torch.equal(alone[name][k], together[name][k]) for k in alone[name]), name


def test_only_trained_tensors_travel(tmp_path: Path) -> None:
    from strata.serde import TrainingConfig
    from worker.trainer import train

    texts = [e.text for e in synthetic.generate(60, seed=3)]
    model, tok = _tiny_classifier(tmp_path, texts)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("classifier.")
    res = train(
        model,
        tok,
        synthetic.generate(16, seed=1),
        TrainingConfig(batch_size=8, max_seq_len=32),
        1,
        progress=False,
    )
    assert set(res.delta) == {"classifier.weight", "classifier.bias"}
