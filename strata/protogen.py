"""Regenerate the committed gRPC stubs in strata/proto from protos/ (python -m strata.protogen)."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = Path(__file__).resolve().parent / "proto" / "v1"
_IMPORT = re.compile(r"^from strata\.v1 import", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every protos/strata/v1/*.proto, write flat modules into out_dir."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    sources = sorted(PROTO_ROOT.glob("strata/v1/*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(s.relative_to(PROTO_ROOT)) for s in sources],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted((Path(tmp) / "strata" / "v1").iterdir()):
            text = _IMPORT.sub("from strata.proto.v1 import", path.read_text())
            target = out_dir / path.name
            target.write_text(text)
            written.append(target)
        (out_dir / "__init__.py").write_text(
            '"""Generated from protos/strata/v1 by strata.protogen; do not edit."""\n'
        )
        return written


if __name__ == "__main__":
    for p in generate(OUT):
        print(p.relative_to(ROOT))
    sys.exit(0)
