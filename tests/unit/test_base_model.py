"""A LoRA federation's base model (strata.base_model): the content hash of its safetensors checkpoint, its
cache, the folders refused, and the files a coordinator serves."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors.torch import save_file

from strata.base_model import checkpoint_hash, file_sha256, served_files

Tensors = dict[str, torch.Tensor]


def tensors() -> Tensors:
    g = torch.Generator().manual_seed(0)
    return {
        "embeddings.weight": torch.randn(8, 4, generator=g),
        "layer.0.weight": torch.randn(4, 4, generator=g),
        "layer.0.bias": torch.randn(4, generator=g),
        "layer.1.weight": torch.randn(4, 4, generator=g).to(torch.bfloat16),
        "positions": torch.arange(6, dtype=torch.int64),
    }


def save(folder: Path, shards: dict[str, Tensors]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in shards.items():
        save_file(part, str(folder / name))
    return folder


def one_file(folder: Path, values: Tensors, name: str = "model.safetensors") -> Path:
    return save(folder, {name: values})


def two_shards(folder: Path, values: Tensors) -> Path:
    names = sorted(values)
    first = {n: values[n] for n in names[::2]}
    second = {n: values[n] for n in names[1::2]}
    return save(
        folder, {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    )


def test_the_hash_does_not_depend_on_sharding(tmp_path: Path) -> None:
    single = checkpoint_hash(one_file(tmp_path / "one", tensors()))
    sharded = checkpoint_hash(two_shards(tmp_path / "two", tensors()))
    assert len(single) == 64 and int(single, 16) >= 0
    assert single == sharded
    # reversed shard assignment, three shards
    values = tensors()
    names = sorted(values)
    shards = {f"part{i}.safetensors": {n: values[n] for n in names[i::3]} for i in range(3)}
    assert checkpoint_hash(save(tmp_path / "three", shards)) == single


@pytest.mark.parametrize("name", ["a.safetensors", "weights.safetensors", "z-00001.safetensors"])
def test_the_hash_does_not_depend_on_file_names_or_place(tmp_path: Path, name: str) -> None:
    expected = checkpoint_hash(one_file(tmp_path / "ref", tensors()))
    assert checkpoint_hash(one_file(tmp_path / "elsewhere" / "deeper", tensors(), name)) == expected


def test_other_files_do_not_change_the_hash(tmp_path: Path) -> None:
    folder = one_file(tmp_path / "m", tensors())
    before = checkpoint_hash(folder)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "pytorch_model.bin").write_bytes(b"old weights")
    assert checkpoint_hash(folder) == before
    assert checkpoint_hash(str(folder)) == before  # a str path too


def _changed_value(v: Tensors) -> None:
    v["layer.0.weight"][1, 2] += 1e-3


def _changed_bf16_value(v: Tensors) -> None:
    v["layer.1.weight"][0, 0] += 1


def _renamed(v: Tensors) -> None:
    v["layer.0.weights"] = v.pop("layer.0.weight")


def _reshaped(v: Tensors) -> None:
    v["layer.0.weight"] = v["layer.0.weight"].reshape(2, 8).contiguous()


def _same_bytes_other_dtype(v: Tensors) -> None:
    v["layer.0.weight"] = v["layer.0.weight"].view(torch.int32).clone()


def _extra_tensor(v: Tensors) -> None:
    v["layer.2.bias"] = torch.zeros(4)


def _dropped_tensor(v: Tensors) -> None:
    del v["layer.0.bias"]


@pytest.mark.parametrize(
    "change",
    [
        _changed_value,
        _changed_bf16_value,
        _renamed,
        _reshaped,
        _same_bytes_other_dtype,
        _extra_tensor,
        _dropped_tensor,
    ],
)
def test_the_hash_changes_with_the_content(tmp_path: Path, change: Callable[[Tensors], None]) -> None:
    reference = checkpoint_hash(one_file(tmp_path / "ref", tensors()))
    values = tensors()
    change(values)
    assert checkpoint_hash(one_file(tmp_path / "changed", values)) != reference
    assert checkpoint_hash(two_shards(tmp_path / "changed-sharded", values)) != reference


def _failing_safe_open(*args: object, **kwargs: object) -> object:
    raise AssertionError("the checkpoint was read again instead of the cache")


def test_the_cache_is_written_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = two_shards(tmp_path / "m", tensors())
    cache = tmp_path / "state" / "base-hashes.json"
    digest = checkpoint_hash(folder, cache=cache)
    assert cache.is_file()
    recorded = json.loads(cache.read_text())
    assert recorded[str(folder.resolve())]["hash"] == digest
    monkeypatch.setattr(safetensors, "safe_open", _failing_safe_open)
    assert checkpoint_hash(folder, cache=cache) == digest
    assert checkpoint_hash(tmp_path / "m" / ".." / "m", cache=cache) == digest  # the same folder
    with pytest.raises(AssertionError, match="read again"):  # the patch does bite without a cache
        checkpoint_hash(folder)


def test_a_changed_file_invalidates_the_cache(tmp_path: Path) -> None:
    folder = one_file(tmp_path / "m", tensors())
    cache = tmp_path / "hashes.json"
    old = checkpoint_hash(folder, cache=cache)
    path = folder / "model.safetensors"
    stat = path.stat()
    values = tensors()
    _changed_value(values)
    save_file(values, str(path))  # same size, new content
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new = checkpoint_hash(folder, cache=cache)
    assert new != old
    assert new == checkpoint_hash(folder)
    assert json.loads(cache.read_text())[str(folder.resolve())]["hash"] == new


def test_an_added_shard_invalidates_the_cache(tmp_path: Path) -> None:
    folder = one_file(tmp_path / "m", tensors())
    cache = tmp_path / "hashes.json"
    old = checkpoint_hash(folder, cache=cache)
    save_file({"extra": torch.ones(3)}, str(folder / "extra.safetensors"))
    assert checkpoint_hash(folder, cache=cache) != old


def test_the_cache_keeps_every_folder(tmp_path: Path) -> None:
    cache = tmp_path / "hashes.json"
    values = tensors()
    a = checkpoint_hash(one_file(tmp_path / "a", values), cache=cache)
    _changed_value(values)
    b = checkpoint_hash(one_file(tmp_path / "b", values), cache=cache)
    recorded = json.loads(cache.read_text())
    assert {k: v["hash"] for k, v in recorded.items()} == {
        str((tmp_path / "a").resolve()): a,
        str((tmp_path / "b").resolve()): b,
    }


@pytest.mark.parametrize("content", ["not json", "[1, 2]", "", '{"x": 1'])
def test_an_unreadable_cache_is_ignored_and_rewritten(tmp_path: Path, content: str) -> None:
    folder = one_file(tmp_path / "m", tensors())
    cache = tmp_path / "hashes.json"
    cache.write_text(content)
    digest = checkpoint_hash(folder, cache=cache)
    assert digest == checkpoint_hash(folder)
    assert json.loads(cache.read_text())[str(folder.resolve())]["hash"] == digest


def test_a_stale_cache_entry_with_a_wrong_hash_is_not_trusted(tmp_path: Path) -> None:
    folder = one_file(tmp_path / "m", tensors())
    cache = tmp_path / "hashes.json"
    cache.write_text(
        json.dumps({str(folder.resolve()): {"files": [["model.safetensors", 1, 1]], "hash": "x"}})
    )
    assert checkpoint_hash(folder, cache=cache) == checkpoint_hash(folder)


@pytest.mark.parametrize(
    ("files", "hint"),
    [
        (["pytorch_model.bin", "config.json"], "pytorch_model.bin"),
        (["model.pt"], "model.pt"),
        (["config.json"], None),
        ([], None),
    ],
)
def test_a_folder_without_safetensors_is_refused(tmp_path: Path, files: list[str], hint: str | None) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"{}")
    for call in (checkpoint_hash, served_files):
        with pytest.raises(ValueError) as info:
            call(tmp_path)
        message = str(info.value)
        assert "safetensors" in message and "save_pretrained" in message
        if hint:
            assert hint in message
        else:
            assert "it holds" not in message


def test_a_tensor_stored_twice_is_refused(tmp_path: Path) -> None:
    values = tensors()
    folder = save(
        tmp_path / "m",
        {
            "a.safetensors": {"layer.0.weight": values["layer.0.weight"], "x": values["positions"]},
            "b.safetensors": {"layer.0.weight": values["layer.0.weight"], "y": values["layer.0.bias"]},
        },
    )
    cache = tmp_path / "hashes.json"
    with pytest.raises(ValueError, match=r"layer\.0\.weight is stored twice") as info:
        checkpoint_hash(folder, cache=cache)
    assert "a.safetensors" in str(info.value) and "b.safetensors" in str(info.value)
    assert not cache.exists()


def test_served_files_are_weights_config_and_tokenizer_at_the_top(tmp_path: Path) -> None:
    folder = one_file(tmp_path, tensors())
    save_file({"t": torch.ones(2)}, str(folder / "model-2.safetensors"))
    for name in ("config.json", "tokenizer.json", "vocab.txt", "merges.txt", "spiece.model"):
        (folder / name).write_text("x")
    for name in ("pytorch_model.bin", "training_args.bin", "README.md", "model.safetensors.partial"):
        (folder / name).write_text("x")
    (folder / "sub").mkdir()
    (folder / "sub" / "config.json").write_text("{}")
    (folder / "sub" / "inner.safetensors").write_text("x")
    (folder / "looks.json").mkdir()  # a folder, whatever its name
    assert [p.name for p in served_files(folder)] == [
        "config.json",
        "merges.txt",
        "model-2.safetensors",
        "model.safetensors",
        "spiece.model",
        "tokenizer.json",
        "vocab.txt",
    ]
    assert all(p.parent == folder for p in served_files(folder))


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64, 1000])
@pytest.mark.parametrize("piece", [1, 8, 1 << 22])
def test_file_sha256_is_hashlibs(tmp_path: Path, size: int, piece: int) -> None:
    data = bytes((i * 31 + 7) % 256 for i in range(size))
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_sha256(path, piece=piece) == hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
