"""Settings helpers: every service setting comes from a flag, an environment variable or a TOML file.

Precedence, highest first: command-line flag, environment variable (`<PREFIX><NAME>`), the
service's table in the config file (`[coordinator]`, `[worker]`, `[dashboard]`), the default.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable, Collection
from pathlib import Path, PurePath
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("strata_config_file", default=None)
S = TypeVar("S", bound="StrataSettings")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting and the reason."""


class _TomlTable(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], table: str) -> None:
        super().__init__(settings_cls)
        path = _CONFIG_FILE.get()
        self._values: dict[str, Any] = {}
        if path is not None:
            try:
                with open(path, "rb") as fh:
                    doc = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"{path}: not valid TOML ({exc})") from None
            section = doc.get(table, {})
            if not isinstance(section, dict):
                raise SettingsError(f"{path}: [{table}] must be a table")
            self._values = section

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class StrataSettings(BaseSettings):
    """Base of each service's settings; subclasses set `env_prefix` and `toml_table`."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)
    toml_table: typing.ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlTable(settings_cls, cls.toml_table))

    @classmethod
    def load(
        cls: type[S], overrides: dict[str, Any] | None = None, config_file: str | Path | None = None
    ) -> S:
        """Build and validate the settings; a bad value raises SettingsError naming the setting."""
        if config_file is not None and not Path(config_file).is_file():
            raise SettingsError(f"config file {config_file} does not exist")
        token = _CONFIG_FILE.set(Path(config_file) if config_file else None)
        try:
            return cls(**{k: v for k, v in (overrides or {}).items() if v is not None})
        except ValidationError as exc:
            prefix = cls.model_config.get("env_prefix", "")
            lines = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                if not field:  # a check across several settings names them in its message
                    lines.append(f"  {err['msg']}")
                    continue
                lines.append(
                    f"  {field} (--{field.replace('_', '-')} / {prefix}{field.upper()}): {err['msg']}"
                )
            raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
        finally:
            _CONFIG_FILE.reset(token)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """`--config` and one flag per setting."""
        parser.add_argument(
            "--config", metavar="FILE", help=f"TOML config file; settings from its [{cls.toml_table}] table"
        )
        cls.add_flags(parser)

    @classmethod
    def add_flags(cls, parser: argparse._ActionsContainer, skip: Collection[str] = ()) -> list[str]:
        """One flag per setting not in `skip`, `--some-name`, with the field's description as help; a flag
        not given is None. Returns the names of the settings it added a flag for."""
        prefix = cls.model_config.get("env_prefix", "")
        names = [name for name in cls.model_fields if name not in skip]
        for name in names:
            field = cls.model_fields[name]
            flag = "--" + name.replace("_", "-")
            help_text = f"{field.description or ''} (env {prefix}{name.upper()}; default: {field.default!r})"
            if _is_bool(field.annotation):
                parser.add_argument(
                    flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
                )
            else:
                parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)
        return names

    @classmethod
    def add_command(
        cls: type[S],
        sub: argparse._SubParsersAction,
        name: str,
        help: str,
        description: str,
        run: Callable[[S], int],  # type: ignore[type-arg]
    ) -> argparse.ArgumentParser:
        """A `strata NAME` subcommand with one flag per setting; it validates them, then calls run(settings)."""
        parser = sub.add_parser(name, help=help, description=description)
        cls.add_arguments(parser)
        parser.set_defaults(func=lambda args: run(cls.from_args(args)))
        return parser

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace) -> S:
        overrides = {name: getattr(args, name, None) for name in cls.model_fields}
        return cls.load(overrides, getattr(args, "config", None))

    def to_toml(self, exclude: Collection[str] = ()) -> str:
        """These settings as the service's TOML table, which `load(config_file=...)` reads back to the same
        values. Settings that are None and those in `exclude` are left out; a secret (SecretStr) is not
        written: exclude it and pass it in the environment."""
        values = self.model_dump(exclude=set(exclude), exclude_none=True)
        return "\n".join(
            [f"[{self.toml_table}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items()), ""]
        )

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str, str]]:
        """(flag, environment variable, default, description) per setting, for the README."""
        prefix = cls.model_config.get("env_prefix", "")
        return [
            (
                "--" + name.replace("_", "-"),
                f"{prefix}{name.upper()}",
                repr(field.default),
                field.description or "",
            )
            for name, field in cls.model_fields.items()
        ]


def _toml_value(v: Any) -> str:
    """A TOML literal for a setting's value: a string, path, number, boolean or list of them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)  # inf, -inf and nan are TOML's spellings too
    if isinstance(v, (str, PurePath)):
        return json.dumps(str(v), ensure_ascii=False).replace("\x7f", "\\u007f")  # a JSON string is TOML
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML literal for {v!r}")


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return bool in typing.get_args(annotation)
    return False
