"""The committed gRPC stubs in strata/proto/v1 must be exactly what protos/ generates."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from strata import protogen

REGENERATE = "the committed stubs are stale: run `python -m strata.protogen` and commit strata/proto/v1"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates the stubs")
    written = protogen.generate(tmp_path)
    assert written, "protogen generated nothing"
    assert all(p.parent == tmp_path for p in written)
    fresh = _files(tmp_path)
    committed = _files(protogen.OUT)
    assert set(fresh) == set(committed), (
        f"{REGENERATE}\n  only generated: {sorted(set(fresh) - set(committed))}"
        f"\n  only committed: {sorted(set(committed) - set(fresh))}"
    )
    stale = []
    for name, data in fresh.items():
        if data != committed[name]:
            diff = difflib.unified_diff(
                committed[name].decode(errors="replace").splitlines(),
                data.decode(errors="replace").splitlines(),
                f"committed/{name}",
                f"generated/{name}",
                lineterm="",
                n=1,
            )
            stale.append("\n".join(list(diff)[:20]))
    assert not stale, REGENERATE + "\n" + "\n".join(stale)


def test_every_proto_has_its_stubs() -> None:
    protos = sorted(protogen.PROTO_ROOT.glob("strata/v1/*.proto"))
    assert protos
    committed = _files(protogen.OUT)
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert proto.stem + suffix in committed, f"{proto.stem}{suffix} missing: {REGENERATE}"


def test_stubs_import_from_the_package() -> None:
    for path in protogen.OUT.glob("*.py"):
        text = path.read_text()
        assert "from strata.v1 import" not in text, f"{path.name}: {REGENERATE}"
