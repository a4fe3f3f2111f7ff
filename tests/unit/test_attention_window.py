"""Local attention windows: the mask arithmetic, and that a windowed layer really cannot see far tokens,
under both attention implementations, with padding, and through every way Strata loads a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from strata import attention_window, synthetic
from strata.attention_window import LocalAttention, band, windowed_mask
from strata.modeling import load_model, make_tiny_model_dir, model_from_assets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [e.text for e in synthetic.generate(200, seed=0)]
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), texts, synthetic.LABELS, num_layers=2)


def test_band_marks_the_positions_within_the_window() -> None:
    b = band(5, 1)
    assert b.tolist()[0] == [True, True, False, False, False]
    assert b.tolist()[2] == [False, True, True, True, False]
    assert bool(b.equal(b.T))


def test_windowed_mask_keeps_each_kind_and_never_empties_a_row() -> None:
    none = windowed_mask(None, 4, 1, torch.float32)
    assert none.shape == (1, 1, 4, 4) and none.dtype == torch.float32
    assert bool((none[0, 0] == 0).equal(band(4, 1)))
    padded = torch.tensor([True, True, False, False])[None, None, None, :]  # two real tokens, two pads
    as_bool = windowed_mask(padded, 4, 1, torch.float32)
    assert as_bool.dtype == torch.bool
    assert as_bool[0, 0].tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [False, True, True, False],  # a padding query keeps itself: its row is never all masked
        [False, False, False, True],
    ]
    lowest = torch.finfo(torch.float32).min
    additive = torch.where(padded, 0.0, lowest)
    as_float = windowed_mask(additive, 4, 1, torch.float32)
    assert bool(((as_float[0, 0] == 0) == as_bool[0, 0]).all())


def _first_token_state(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_windowed_model_does_not_see_tokens_beyond_its_windows(tiny: Path, implementation: str) -> None:
    model, tok = load_model(tiny, synthetic.LABELS, attn_implementation=implementation)
    enc = tok(["football stadium coach referee league tennis soccer striker goalkeeper", "garlic"],
              padding="longest", return_tensors="pt")  # fmt: skip
    ids, mask = enc["input_ids"], enc["attention_mask"]
    far = ids.clone()
    far[0, 8] = tok.convert_tokens_to_ids("oven")  # token 8: out of reach of token 0 in 2 layers of window 1
    near = ids.clone()
    near[0, 2] = tok.convert_tokens_to_ids("oven")  # token 2: within reach (two hops of one)
    full_far = _first_token_state(model, far, mask) - _first_token_state(model, ids, mask)
    assert full_far[0].abs().max() > 1e-4  # full attention: token 0 sees token 8
    attention_window.apply(model, LocalAttention(layers=2, window=1))
    windowed_far = _first_token_state(model, far, mask) - _first_token_state(model, ids, mask)
    windowed_near = _first_token_state(model, near, mask) - _first_token_state(model, ids, mask)
    assert windowed_far[0].abs().max() == 0
    assert windowed_near[0].abs().max() > 1e-4
    assert torch.isfinite(_first_token_state(model, ids, mask)).all()  # the padded row stays finite


def test_only_the_early_layers_are_windowed_and_applying_twice_changes_nothing(tiny: Path) -> None:
    model, tok = load_model(tiny, synthetic.LABELS)
    enc = tok(["football stadium coach referee league tennis soccer striker goalkeeper"], return_tensors="pt")
    ids = enc["input_ids"]
    far = ids.clone()
    far[0, 8] = tok.convert_tokens_to_ids("oven")
    attention_window.apply(model, LocalAttention(layers=1, window=1))
    attention_window.apply(model, LocalAttention(layers=1, window=1))
    once = _first_token_state(model, far, enc["attention_mask"]) - _first_token_state(
        model, ids, enc["attention_mask"]
    )
    assert once.abs().max() > 1e-4  # layer 2 attends everywhere, so token 8 reaches token 0 again
    hooks = [len(layer.attention.self._forward_pre_hooks) for layer in model.bert.encoder.layer]
    assert hooks == [1, 0]


def test_windows_travel_in_the_config_to_every_load(tiny: Path, tmp_path: Path) -> None:
    model, tok = load_model(tiny, synthetic.LABELS)
    attention_window.apply(model, LocalAttention(layers=1, window=2))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = tok(["football stadium coach referee league tennis soccer striker goalkeeper"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits
    loaded, _ = load_model(tmp_path, synthetic.LABELS)
    rebuilt, _ = model_from_assets(tmp_path)  # what a worker builds from the coordinator's assets
    rebuilt.load_state_dict(loaded.state_dict())
    rebuilt.eval()
    for m in (loaded, rebuilt):
        assert attention_window.from_config(m.config) == LocalAttention(1, 2)
        with torch.no_grad():
            assert torch.allclose(m(**enc).logits, expected, atol=1e-6)


def test_bad_settings_and_unsupported_models_are_refused(tiny: Path) -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        LocalAttention(0, 4)
    with pytest.raises(ValueError, match="at least 1 token"):
        LocalAttention(1, 0)
    model, _ = load_model(tiny, synthetic.LABELS)
    with pytest.raises(ValueError, match="the model has 2"):
        attention_window.apply(model, LocalAttention(3, 4))
    model.config.strata_local_attention = {"layers": 1}
    with pytest.raises(ValueError, match="must be"):
        attention_window.from_config(model.config)
    from transformers import AlbertConfig, AlbertForSequenceClassification

    albert = AlbertForSequenceClassification(
        AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32)
    )  # fmt: skip
    with pytest.raises(ValueError, match="share one set of weights"):
        attention_window.apply(albert, LocalAttention(1, 4))
