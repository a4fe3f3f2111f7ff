"""Model surgery: widening keeps the function and does not leave twin units, a student keeps every other
layer, and `strata adapt` writes a model directory the coordinator can serve (or refuses clearly)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from strata import adapt, attention_window, synthetic
from strata.cli import main
from strata.modeling import load_model, make_tiny_model_dir
from strata.serde import TrainingConfig
from worker.trainer import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [e.text for e in synthetic.generate(200, seed=0)]
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), texts, synthetic.LABELS, num_layers=4)


def logits(model: torch.nn.Module, tok: object, texts: list[str]) -> torch.Tensor:
    enc = tok(texts, padding="longest", return_tensors="pt")  # type: ignore[operator]
    model.eval()
    with torch.no_grad():
        return model(**enc).logits


def test_widen_plan_copies_units_and_splits_each_one_into_shares_summing_to_one() -> None:
    source, share = adapt.widen_plan(6, 15, seed=3)
    assert source[:6].tolist() == list(range(6)) and len(source) == 15
    sums = torch.zeros(6).index_add_(0, source, share)
    assert torch.allclose(sums, torch.ones(6), atol=1e-6)
    assert share.min() > 0 and len(set(share.tolist())) > 6  # unequal shares: copies are not twins
    with pytest.raises(ValueError, match="cannot widen"):
        adapt.widen_plan(6, 5, seed=0)


def test_widening_keeps_the_function_and_the_copies_then_train_apart(tiny: Path) -> None:
    model, tok = load_model(tiny, synthetic.LABELS)
    texts = [e.text for e in synthetic.generate(16, seed=5)]
    before = logits(model, tok, texts)
    width = model.config.intermediate_size
    assert adapt.widen_ffn(model, 2.0, seed=1) == 2 * width == model.config.intermediate_size
    assert torch.allclose(logits(model, tok, texts), before, atol=1e-5)
    up = model.bert.encoder.layer[0].intermediate.dense
    source, _ = adapt.widen_plan(width, 2 * width, seed=1)
    copy = width  # the first new unit copies unit source[copy]
    assert torch.equal(up.weight[copy], up.weight[int(source[copy])])
    res = train(
        model, tok, synthetic.generate(64, seed=6), TrainingConfig(max_steps=4, learning_rate=1e-2), 1
    )
    d = res.delta["bert.encoder.layer.0.intermediate.dense.weight"]
    assert not torch.allclose(d[copy], d[int(source[copy])])  # the copies received different gradients
    with pytest.raises(ValueError, match="at least 1"):
        adapt.widen_ffn(model, 0.5)


def test_a_student_keeps_every_other_layer_with_the_teachers_weights(tiny: Path) -> None:
    teacher, _ = load_model(tiny, synthetic.LABELS)
    student, _ = load_model(tiny, synthetic.LABELS)
    assert adapt.every_other(4) == [0, 2]
    adapt.keep_layers(student, adapt.every_other(4))
    assert student.config.num_hidden_layers == 2 == len(student.bert.encoder.layer)
    for new, old in ((0, 0), (1, 2)):
        a = student.bert.encoder.layer[new].output.dense.weight
        b = teacher.bert.encoder.layer[old].output.dense.weight
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="distinct indices"):
        adapt.keep_layers(student, [0, 0])
    with pytest.raises(ValueError, match="distinct indices"):
        adapt.keep_layers(student, [5])


def test_strata_adapt_writes_a_model_the_coordinator_loads(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapted"
    argv = ["adapt", str(tiny), str(out), "--ffn-width", "1.5", "--every-other-layer",
            "--local-attention-layers", "1", "--local-attention-window", "4"]  # fmt: skip
    assert main(argv) == 0
    model, tok = load_model(out, synthetic.LABELS)
    assert model.config.num_hidden_layers == 2
    assert model.config.intermediate_size == round(1.5 * 256)
    assert attention_window.from_config(model.config) == attention_window.LocalAttention(1, 4)
    assert len(model.bert.encoder.layer[0].attention.self._forward_pre_hooks) == 1
    assert not (tmp_path / "adapted.partial").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ffn-width", "0.5"], "at least 1"),
        (["--keep-layers", "0", "--every-other-layer"], "contradict"),
        (["--local-attention-layers", "2"], "go together"),
        (["--albert", "--local-attention-layers", "1", "--local-attention-window", "2"], "shares one layer"),
    ],
)
def test_strata_adapt_refuses_contradictions_before_writing(
    tiny: Path, tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adapted"
    assert main(["adapt", str(tiny), str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_strata_adapt_never_overwrites(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").mkdir()
    assert main(["adapt", str(tiny), str(tmp_path / "taken"), "--ffn-width", "2"]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_one_layer_bert_becomes_the_same_function_as_albert(tmp_path: Path) -> None:
    texts = [e.text for e in synthetic.generate(200, seed=0)]
    one = make_tiny_model_dir(tmp_path / "one", texts, synthetic.LABELS, num_layers=1)
    bert, tok = load_model(one, synthetic.LABELS)
    albert = adapt.to_albert(bert)
    assert type(albert).__name__ == "AlbertForSequenceClassification"
    assert torch.allclose(logits(albert, tok, texts[:8]), logits(bert, tok, texts[:8]), atol=1e-5)


def test_a_deeper_bert_shares_the_mean_of_its_layers_and_strata_adapt_writes_it(
    tiny: Path, tmp_path: Path
) -> None:
    bert, _ = load_model(tiny, synthetic.LABELS)
    albert = adapt.to_albert(bert)
    shared = albert.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight
    layers = bert.bert.encoder.layer
    assert torch.allclose(shared, torch.stack([x.intermediate.dense.weight for x in layers]).mean(0))
    assert albert.config.num_hidden_layers == 4 and albert.config.num_hidden_groups == 1
    assert main(["adapt", str(tiny), str(tmp_path / "albert"), "--albert"]) == 0
    loaded, _ = load_model(tmp_path / "albert", synthetic.LABELS)
    assert loaded.config.model_type == "albert"
    assert torch.equal(loaded.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight, shared)
