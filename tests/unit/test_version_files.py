"""coordinator.versions.VersionFiles: what prune keeps."""

from __future__ import annotations

from pathlib import Path

from coordinator.versions import VersionFiles


def test_prune_keeps_the_current_snapshot_and_what_a_download_is_streaming(tmp_path: Path) -> None:
    vf = VersionFiles(tmp_path / "versions")
    for v in range(4):
        vf.snapshot(v).write_bytes(b"x")
        vf.update(v).write_bytes(b"x")
    with vf.pinned([vf.snapshot(0), vf.update(1)]):
        vf.prune(current=3, history=1)
        assert sorted(p.name for p in vf.dir.iterdir()) == [
            "snapshot-v000000.frames",
            "snapshot-v000003.frames",
            "update-v000001.frames",
            "update-v000003.frames",
        ]
    vf.prune(current=3, history=1)  # the stream has ended: the next prune takes them
    assert sorted(p.name for p in vf.dir.iterdir()) == ["snapshot-v000003.frames", "update-v000003.frames"]
