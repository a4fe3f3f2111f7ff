"""Run a docker-compose file's services as local processes, for the deployment tests (no Docker engine here).

What a container would get, a process gets: the compose file is interpolated from an env file the way
`docker compose` does it (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$), each service's
`command` runs with the env_file entries and its `environment` (container paths mapped to local folders
through its volumes), and its `healthcheck` test runs the same way until it passes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class ComposeError(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped, an unquoted value's ` # comment` dropped."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ComposeError(f"{path}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if value[:1] in ("'", '"') and value[-1:] == value[:1]:
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        out[key.strip()] = value
    return out


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation over a loaded YAML document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group("braced") if m.group("braced") is not None else m.group("plain")
        for op in (":-", "-", ":?", "?"):
            name, found, arg = expr.partition(op)
            if found and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                current = env.get(name)
                unset = current is None or (op.startswith(":") and current == "")
                if op.endswith("-"):
                    return arg if unset else current  # type: ignore[return-value]
                if unset:
                    raise ComposeError(f"{name}: {arg or 'required'}")
                return current  # type: ignore[return-value]
        return env.get(expr, "")

    return _VAR.sub(sub, value)


def load(path: Path, env: dict[str, str]) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    doc = {k: v for k, v in doc.items() if not k.startswith("x-")}  # extension fields hold only anchors
    return interpolate(doc, env)  # type: ignore[no-any-return]


def schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as vendored by check-jsonschema."""
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    return json.loads(text)  # type: ignore[no-any-return]


def validate(doc: dict[str, Any]) -> list[str]:
    """The schema's complaints about an interpolated compose document (none when it is valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@dataclass
class Local:
    """How one service's container paths and variables become a local process's."""

    name: str
    service: dict[str, Any]
    project_dir: Path
    volumes_root: Path
    path_map: dict[str, str] = field(default_factory=dict)  # container path -> local path

    def __post_init__(self) -> None:
        for spec in self.service.get("volumes", []):
            source, target = spec.split(":")[:2]
            if source.startswith((".", "/")):
                local = (self.project_dir / source).resolve()
            else:  # a named volume
                local = self.volumes_root / source
                local.mkdir(parents=True, exist_ok=True)
            self.path_map[target] = str(local)

    def local(self, text: str) -> str:
        for target in sorted(self.path_map, key=len, reverse=True):
            if text == target or text.startswith(target + "/"):
                return self.path_map[target] + text[len(target) :]
        return text

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "POSTGRES_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for item in self.service.get("env_file", []):
            path = self.project_dir / (item["path"] if isinstance(item, dict) else item)
            if path.is_file():  # values are as the container sees them: its paths, mapped
                env |= {k: self.local(v) for k, v in read_env_file(path).items()}
        environment = self.service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(e.split("=", 1) for e in environment)
        env |= {k: self.local(str(v)) for k, v in environment.items()}
        return env

    def command(self) -> list[str]:
        cmd = self.service["command"]
        args = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        return [self.local(a) for a in args]

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        fh = open(log, "wb")  # noqa: SIM115 - the process owns it
        return subprocess.Popen(self.command(), env=self.env(), stdout=fh, stderr=subprocess.STDOUT)

    def run(self, log: Path, timeout: float) -> int:
        with open(log, "wb") as fh:
            return subprocess.run(
                self.command(), env=self.env(), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode

    def healthy(self, extra_env: dict[str, str] | None = None) -> bool:
        """Run the service's healthcheck test once: True if it exits 0."""
        test = self.service["healthcheck"]["test"]
        kind, args = (test[0], test[1:]) if isinstance(test, list) else ("CMD-SHELL", [test])
        env = self.env() | (extra_env or {})
        if kind == "CMD-SHELL":
            argv = ["sh", "-c", self.local(args[0])]
        elif kind == "CMD":
            argv = [self.local(a) for a in args]
        else:
            raise ComposeError(f"{self.name}: healthcheck test {kind!r} is not run here")
        timeout = _seconds(self.service["healthcheck"].get("timeout", "30s"))
        try:
            return subprocess.run(argv, env=env, capture_output=True, timeout=timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, proc: subprocess.Popen[bytes] | None, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                raise ComposeError(f"{self.name} exited with {proc.returncode} before it was healthy")
            if self.healthy():
                return
            time.sleep(0.5)
        raise ComposeError(f"{self.name} was not healthy after {timeout:g}s")


def _seconds(text: str | int | float) -> float:
    if isinstance(text, int | float):
        return float(text)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


def start_order(doc: dict[str, Any]) -> list[str]:
    """Services in an order that honours depends_on."""
    services = doc["services"]
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in order:
            return
        if name in seen:
            raise ComposeError(f"depends_on cycle through {name}")
        deps = services[name].get("depends_on") or {}
        for dep in deps if isinstance(deps, list) else deps.keys():
            visit(dep, (*seen, name))
        order.append(name)

    for name in services:
        visit(name)
    return order
