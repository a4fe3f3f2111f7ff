"""`strata COMMAND` imports only the module of the command it runs: `strata admin` and `strata logs` answer
without importing torch, while `strata --help` still lists every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from strata.cli import command_in


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["admin", "pause", "f"], "admin"),
        (["--log-level", "WARNING", "coordinator", "--rounds", "3"], "coordinator"),
        (["--log-level=DEBUG", "logs", "demo"], "logs"),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_command_is_the_first_word_that_is_no_option(argv: list[str], want: str | None) -> None:
    assert command_in(argv) == want


def loads(argv: list[str]) -> tuple[bool, str]:
    code = (
        "import sys\nfrom strata.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    *text, last = out.stdout.strip().splitlines()
    return last == "True", "\n".join(text)


def test_admin_and_logs_do_not_import_torch_and_help_lists_every_command() -> None:
    for argv in (["admin", "--help"], ["--log-level", "WARNING", "logs", "--help"]):
        torch, text = loads(argv)
        assert not torch and "usage: strata" in text, argv
    torch, text = loads(["--help"])
    for name in ("coordinator", "worker", "dashboard", "admin", "logs", "simulate", "adapt"):
        assert name in text
