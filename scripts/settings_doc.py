"""Rewrite README.md's configuration reference from the settings classes (python scripts/settings_doc.py)."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.settings import CoordinatorSettings
from dashboard_api.settings import DashboardSettings
from worker.settings import WorkerSettings
from worker.simulate_cli import SimulateSettings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
COMPOSE = [ROOT / "deploy" / "compose.site.yaml", ROOT / "deploy" / "compose.worker.yaml"]
START, END = "<!-- settings:start -->", "<!-- settings:end -->"
SECTIONS = [
    ("Coordinator (`strata coordinator`, TOML table `[coordinator]`)", CoordinatorSettings),
    ("Worker (`strata worker`, TOML table `[worker]`)", WorkerSettings),
    ("Dashboard API (`strata dashboard`, TOML table `[dashboard]`)", DashboardSettings),
]


SIMULATE = (
    "Simulation (`strata simulate`, TOML table `[simulate]`; also every worker setting, as STRATA_SIMULATE_*)",
    SimulateSettings,
)


def own_settings(cls: type, base: type) -> set[str]:
    """The settings `cls` adds to `base`, or whose default or meaning it changes."""
    theirs = base.model_fields  # type: ignore[attr-defined]
    return {
        name
        for name, field in cls.model_fields.items()  # type: ignore[attr-defined]
        if name not in theirs
        or (field.default, field.description) != (theirs[name].default, theirs[name].description)
    }


def tables() -> str:
    out = []
    for title, cls in [*SECTIONS, SIMULATE]:
        keep = own_settings(cls, WorkerSettings) if cls is SimulateSettings else None
        out += [
            f"### {title}",
            "",
            "| flag | environment variable | default | meaning |",
            "|---|---|---|---|",
        ]
        for flag, env, default, desc in cls.documentation():
            if keep is not None and flag[2:].replace("-", "_") not in keep:
                continue
            if "SecretStr" in default or default == "PydanticUndefined":
                default = "(none)"
            default = re.sub(r"PosixPath\('([^']*)'\)", r"'\1'", default)
            out.append(f"| `{flag}` | `{env}` | `{default}` | {desc} |")
        out.append("")
    return "\n".join(out)


def set_by_compose() -> dict[str, str]:
    """Variables a compose file sets itself (container paths, listen addresses): variable -> file name."""
    import yaml

    out: dict[str, str] = {}
    for path in COMPOSE:
        for service in yaml.safe_load(path.read_text())["services"].values():
            for name in service.get("environment") or {}:
                out.setdefault(name, path.name)
    return out


def env_block() -> str:
    """Every setting as a commented line of deploy/.env.example: its default and meaning, or the compose
    file that sets it."""
    fixed = set_by_compose()
    out = []
    for title, cls in SECTIONS:
        out += ["#", f"# {title}"]
        for _, env, default, desc in cls.documentation():
            if env in fixed:
                out.append(f"#   {env}: set by {fixed[env]}")
                continue
            if "SecretStr" in default or default == "PydanticUndefined" or default == "None":
                default = ""
            default = re.sub(r"PosixPath\('([^']*)'\)", r"\1", default).strip("'")
            out.append(f"# {env}={default}  # {desc}")
    return "\n".join(out)


def replace_block(path: Path, start: str, end: str, body: str) -> None:
    text = path.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")


def main() -> None:
    replace_block(README, START, END, f"\n{tables()}")
    replace_block(ENV_EXAMPLE, "# settings:start", "# settings:end", env_block())


if __name__ == "__main__":
    main()
