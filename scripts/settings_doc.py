"""Rewrite README.md's configuration reference from the settings classes (python scripts/settings_doc.py)."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.settings import CoordinatorSettings
from dashboard_api.settings import DashboardSettings
from worker.settings import WorkerSettings

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"
SECTIONS = [
    ("Coordinator (`strata coordinator`, TOML table `[coordinator]`)", CoordinatorSettings),
    ("Worker (`strata worker`, TOML table `[worker]`)", WorkerSettings),
    ("Dashboard API (`strata dashboard`, TOML table `[dashboard]`)", DashboardSettings),
]


def tables() -> str:
    out = []
    for title, cls in SECTIONS:
        out += [
            f"### {title}",
            "",
            "| flag | environment variable | default | meaning |",
            "|---|---|---|---|",
        ]
        for flag, env, default, desc in cls.documentation():
            if "SecretStr" in default or default == "PydanticUndefined":
                default = "(none)"
            default = re.sub(r"PosixPath\('([^']*)'\)", r"'\1'", default)
            out.append(f"| `{flag}` | `{env}` | `{default}` | {desc} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n\n{tables()}\n{END}{tail}")


if __name__ == "__main__":
    main()
