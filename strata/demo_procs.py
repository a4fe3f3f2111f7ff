"""The processes of `strata demo`: each service started as `python -m strata.cli <service> --config FILE`
with exactly the settings the demo built, stopped together, their exits checked and failures shown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from strata.settings import StrataSettings


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class Processes:
    """A demo's processes; `dir` is its work folder, `port_file` its coordinator's port file."""

    dir: Path
    port_file: Path
    procs: list[Proc]

    def start(
        self, name: str, settings: StrataSettings, threads: int, secret: dict[str, str] | None = None
    ) -> Proc:
        """Run `strata <service> --config FILE` with a TOML file of these settings. Secrets go in its
        environment, which holds no other variable of the service: it runs with exactly these settings."""
        secret = (secret or {}) | {n: v.get_secret_value() for n, v in settings if isinstance(v, SecretStr)}
        config = self.dir / "config" / f"{name}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(settings.to_toml(exclude=secret))
        prefix = settings.model_config.get("env_prefix", "")
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefix)} | {
            prefix + k.upper(): v for k, v in secret.items()
        }
        log = self.dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "wb")  # noqa: SIM115 - owned by the child process
        p = subprocess.Popen(
            [sys.executable, "-m", "strata.cli", settings.toml_table, "--config", str(config)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env
            | {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)},
            cwd=self.dir,
            start_new_session=True,
        )
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def _wait_for_port(self, coord: Proc, port_file: Path | None = None) -> int:
        port_file = port_file or self.port_file
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if port_file.is_file() and (text := port_file.read_text().strip()):
                return int(text)
            if coord.popen.poll() is not None:
                raise SystemExit(self._fail(f"{coord.name} exited during start-up"))
            time.sleep(0.1)
        raise SystemExit(self._fail(f"{coord.name} did not start within 180s"))

    def _check_exits(self) -> bool:
        ok = True
        for p in self.procs:
            if p.name.startswith("dashboard"):  # servers: they run until stopped
                continue
            try:
                code = p.popen.wait(timeout=60 if p.name != "coordinator" else 5)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                print(
                    f"{p.name} {'did not exit' if code is None else f'exited with status {code}'}",
                    file=sys.stderr,
                )
                ok = False
        return ok

    def _print_failures(self) -> None:
        for p in self.procs:
            if p.popen.poll() not in (0, None) or p.name == "coordinator":
                tail = p.log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of {p.name} ({p.log}) ---", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)

    def _fail(self, msg: str) -> int:
        print(f"strata demo: {msg}", file=sys.stderr)
        self._print_failures()
        return 1
