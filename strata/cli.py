"""The `strata` command. Subcommands are plugged in by the service packages through the
`strata.commands` entry-point group, so this shared core imports none of the services."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

from strata import __version__
from strata.settings import SettingsError, StrataSettings

#: a command module exposes `register(subparsers) -> None`; its parser sets `func(args) -> int`
Register = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]
ORDER = ("coordinator", "migrate", "worker", "dashboard", "demo")


def commands() -> dict[str, EntryPoint]:
    """The subcommands the installed packages register, by name."""
    return {ep.name: ep for ep in entry_points(group="strata.commands")}


def settings_class(command: str) -> type[StrataSettings]:
    """The settings class of the service `strata COMMAND` runs: the StrataSettings subclass in the
    command's module whose TOML table is named COMMAND. This is how the shared core reaches a service's
    settings (its flags, defaults and checks) without importing the service."""
    module = importlib.import_module(commands()[command].module)
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, StrataSettings) and value.toml_table == command:
            return value
    raise LookupError(
        f"the module of `strata {command}` ({module.__name__}) has no [{command}] settings class"
    )


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names (its first word that is neither an option nor --log-level's value)."""
    rest = list(argv)
    while rest:
        word = rest.pop(0)
        if word == "--log-level":
            rest = rest[1:]
        elif not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` one subcommand's: each command's module is imported to
    register it, and some import torch, so `strata admin ...` loads only what it runs."""
    parser = argparse.ArgumentParser(
        prog="strata",
        description="Strata: federated fine-tuning of transformer language models.",
        epilog="Every setting may also come from an environment variable or a TOML file (--config); see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"strata {__version__}")
    parser.add_argument(
        "--log-level",
        dest="cli_log_level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    found = commands()
    if only in found:
        found = {only: found[only]}
    for name in sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        register: Register = found[name].load()
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_in(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.cli_log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"strata {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
