"""Unit tests for strata.settings through the three services' settings classes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from dashboard_api.settings import DashboardSettings
from strata.settings import SettingsError, StrataSettings
from worker.settings import WorkerSettings

ALL = [CoordinatorSettings, WorkerSettings, DashboardSettings]
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STRATA_* variable of the caller's environment may leak into these tests."""
    for name in list(os.environ):
        if name.startswith(("STRATA_COORDINATOR_", "STRATA_WORKER_", "STRATA_DASHBOARD_")):
            monkeypatch.delenv(name)


def _parse(cls: type[StrataSettings], argv: list[str]) -> StrataSettings:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return cls.from_args(parser.parse_args(argv))


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "strata.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- precedence

# (class, field, flag, env var, toml table, default, toml value, env value, flag value, parsed values)
PRECEDENCE = [
    (
        CoordinatorSettings,
        "rounds",
        "--rounds",
        "STRATA_COORDINATOR_ROUNDS",
        "coordinator",
        5,
        "6",
        "7",
        "8",
        (6, 7, 8),
    ),
    (
        CoordinatorSettings,
        "round_timeout",
        "--round-timeout",
        "STRATA_COORDINATOR_ROUND_TIMEOUT",
        "coordinator",
        300.0,
        "1.5",
        "2.5",
        "3.5",
        (1.5, 2.5, 3.5),
    ),
    (
        CoordinatorSettings,
        "federation",
        "--federation",
        "STRATA_COORDINATOR_FEDERATION",
        "coordinator",
        "default",
        '"fromfile"',
        "fromenv",
        "fromflag",
        ("fromfile", "fromenv", "fromflag"),
    ),
    (
        WorkerSettings,
        "poll_seconds",
        "--poll-seconds",
        "STRATA_WORKER_POLL_SECONDS",
        "worker",
        10,
        "20",
        "30",
        "40",
        (20, 30, 40),
    ),
    (
        WorkerSettings,
        "coordinator",
        "--coordinator",
        "STRATA_WORKER_COORDINATOR",
        "worker",
        "127.0.0.1:50051",
        '"file:1"',
        "env:2",
        "flag:3",
        ("file:1", "env:2", "flag:3"),
    ),
    (
        DashboardSettings,
        "port",
        "--port",
        "STRATA_DASHBOARD_PORT",
        "dashboard",
        8080,
        "9001",
        "9002",
        "9003",
        (9001, 9002, 9003),
    ),
]


@pytest.mark.parametrize(
    ("cls", "field", "flag", "env", "table", "default", "toml_value", "env_value", "flag_value", "parsed"),
    PRECEDENCE,
    ids=[f"{row[0].__name__}.{row[1]}" for row in PRECEDENCE],
)
def test_precedence_flag_env_file_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cls: type[StrataSettings],
    field: str,
    flag: str,
    env: str,
    table: str,
    default: object,
    toml_value: str,
    env_value: str,
    flag_value: str,
    parsed: tuple[object, object, object],
) -> None:
    from_file, from_env, from_flag = parsed
    config = _toml(tmp_path, f"[{table}]\n{field} = {toml_value}\n[other]\n{field} = 999\n")

    assert getattr(_parse(cls, []), field) == default
    assert getattr(cls.load(), field) == default
    assert getattr(_parse(cls, ["--config", str(config)]), field) == from_file
    monkeypatch.setenv(env, env_value)
    assert getattr(_parse(cls, ["--config", str(config)]), field) == from_env
    assert getattr(_parse(cls, []), field) == from_env
    assert getattr(_parse(cls, ["--config", str(config), flag, flag_value]), field) == from_flag
    monkeypatch.delenv(env)
    assert getattr(_parse(cls, ["--config", str(config), flag, flag_value]), field) == from_flag
    assert getattr(_parse(cls, [flag, flag_value]), field) == from_flag


def test_layers_mix_field_by_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _toml(tmp_path, "[coordinator]\nrounds = 9\nmin_workers = 4\nbatch_size = 32\n")
    monkeypatch.setenv("STRATA_COORDINATOR_MIN_WORKERS", "3")
    s = _parse(CoordinatorSettings, ["--config", str(config), "--batch-size", "4"])
    assert (s.rounds, s.min_workers, s.batch_size, s.local_epochs) == (9, 3, 4, 1)


def test_config_file_without_the_service_table_gives_defaults(tmp_path: Path) -> None:
    config = _toml(tmp_path, "[worker]\npoll_seconds = 20\n")
    assert CoordinatorSettings.load(config_file=config).rounds == 5


def test_load_overrides_ignore_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_COORDINATOR_ROUNDS", "7")
    assert CoordinatorSettings.load({"rounds": None}).rounds == 7
    assert CoordinatorSettings.load({"rounds": 2}).rounds == 2


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a1234567,b1234567", ["a1234567", "b1234567"]),
        (" a1234567 , b1234567 ,", ["a1234567", "b1234567"]),
        ("", []),
    ],
)
def test_worker_tokens_from_env_become_a_list(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("STRATA_COORDINATOR_WORKER_TOKENS", raw)
    assert CoordinatorSettings.load().worker_tokens == expected


def test_worker_tokens_from_flag_and_file(tmp_path: Path) -> None:
    assert _parse(CoordinatorSettings, ["--worker-tokens", "a1234567,b1234567"]).worker_tokens == [
        "a1234567",
        "b1234567",
    ]
    config = _toml(tmp_path, '[coordinator]\nworker_tokens = ["c1234567", "d1234567"]\n')
    assert CoordinatorSettings.load(config_file=config).worker_tokens == ["c1234567", "d1234567"]
    assert CoordinatorSettings.load().worker_tokens == []


def test_worker_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_WORKER_TOKEN", "s3cret-token")
    s = WorkerSettings.load()
    assert s.token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(s)


def test_paths_are_paths(tmp_path: Path) -> None:
    s = _parse(CoordinatorSettings, ["--data-dir", str(tmp_path), "--model", str(tmp_path / "m")])
    assert s.data_dir == tmp_path
    assert s.model == tmp_path / "m"
    assert s.port_file is None


@pytest.mark.parametrize(
    ("cls", "argv", "env", "expected"),
    [
        (CoordinatorSettings, [], {}, True),
        (CoordinatorSettings, ["--no-exit-when-done"], {}, False),
        (CoordinatorSettings, ["--exit-when-done"], {"STRATA_COORDINATOR_EXIT_WHEN_DONE": "false"}, True),
        (CoordinatorSettings, [], {"STRATA_COORDINATOR_EXIT_WHEN_DONE": "false"}, False),
        (CoordinatorSettings, ["--no-exit-when-done"], {"STRATA_COORDINATOR_EXIT_WHEN_DONE": "true"}, False),
        (WorkerSettings, ["--no-progress"], {}, False),
        (WorkerSettings, [], {"STRATA_WORKER_PROGRESS": "0"}, False),
        (WorkerSettings, ["--progress"], {"STRATA_WORKER_PROGRESS": "0"}, True),
    ],
)
def test_boolean_flags(
    monkeypatch: pytest.MonkeyPatch,
    cls: type[StrataSettings],
    argv: list[str],
    env: dict[str, str],
    expected: bool,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    field = "exit_when_done" if cls is CoordinatorSettings else "progress"
    assert getattr(_parse(cls, argv), field) is expected


def test_boolean_from_file(tmp_path: Path) -> None:
    config = _toml(tmp_path, "[coordinator]\nexit_when_done = false\n")
    assert CoordinatorSettings.load(config_file=config).exit_when_done is False
    assert _parse(CoordinatorSettings, ["--config", str(config), "--exit-when-done"]).exit_when_done is True


# ---------------------------------------------------------------------------------------------- errors

BAD_VALUES = [
    (CoordinatorSettings, "rounds", "0"),
    (CoordinatorSettings, "rounds", "many"),
    (CoordinatorSettings, "encoding", "nope"),
    (CoordinatorSettings, "federation", "bad/name"),
    (CoordinatorSettings, "round_timeout", "0"),
    (CoordinatorSettings, "max_seq_len", "4"),
    (CoordinatorSettings, "exit_when_done", "perhaps"),
    (WorkerSettings, "name", "has space"),
    (WorkerSettings, "eval_fraction", "1.0"),
    (WorkerSettings, "poll_seconds", "301"),
    (DashboardSettings, "port", "70000"),
    (DashboardSettings, "log_level", "verbose"),
]


def _flag_and_env(cls: type[StrataSettings], field: str) -> tuple[str, str]:
    prefix = cls.model_config.get("env_prefix", "")
    return "--" + field.replace("_", "-"), f"{prefix}{field.upper()}"


@pytest.mark.parametrize(
    ("cls", "field", "value"), BAD_VALUES, ids=[f"{c.__name__}.{f}={v}" for c, f, v in BAD_VALUES]
)
def test_bad_value_names_flag_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[StrataSettings], field: str, value: str
) -> None:
    flag, env = _flag_and_env(cls, field)
    # as a flag gives it (a string; switches such as exit_when_done only reach load this way)
    with pytest.raises(SettingsError) as info:
        cls.load({field: value})
    assert flag in str(info.value) and env in str(info.value), str(info.value)
    # from the environment
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        cls.load()
    assert flag in str(info.value) and env in str(info.value), str(info.value)
    monkeypatch.delenv(env)
    # from the file
    config = _toml(tmp_path, f"[{cls.toml_table}]\n{field} = {value!r}\n".replace("'", '"'))
    with pytest.raises(SettingsError) as info:
        cls.load(config_file=config)
    assert flag in str(info.value) and env in str(info.value), str(info.value)


def test_bad_flag_value_through_argparse() -> None:
    with pytest.raises(SettingsError, match="--rounds / STRATA_COORDINATOR_ROUNDS"):
        _parse(CoordinatorSettings, ["--rounds", "0"])


def test_several_bad_values_are_all_named() -> None:
    with pytest.raises(SettingsError) as info:
        CoordinatorSettings.load({"rounds": 0, "batch_size": 0})
    assert "--rounds" in str(info.value) and "--batch-size" in str(info.value)


def test_short_worker_token_is_refused() -> None:
    with pytest.raises(SettingsError, match="at least 8 characters"):
        CoordinatorSettings.load({"worker_tokens": "a1234567,abc"})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"worker_tokens": "abc"}, "worker_tokens"),
        ({"workers_per_round": 2, "min_updates": 3}, "min_updates"),
    ],
    ids=["short-token", "quorum-over-participants"],
)
def test_cross_field_error_names_flag_and_env(overrides: dict[str, object], field: str) -> None:
    flag, env = _flag_and_env(CoordinatorSettings, field)
    with pytest.raises(SettingsError) as info:
        CoordinatorSettings.load(overrides)
    assert flag in str(info.value) and env in str(info.value), str(info.value)


def test_negative_seed_is_refused() -> None:
    with pytest.raises(SettingsError, match="--seed"):
        CoordinatorSettings.load({"seed": -1})


def test_min_updates_over_workers_per_round_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"min_updates \(3\) cannot exceed workers_per_round \(2\)"):
        CoordinatorSettings.load({"workers_per_round": 2, "min_updates": 3})


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = _toml(tmp_path, "[coordinator]\nround = 3\n")
    with pytest.raises(SettingsError, match="round"):
        CoordinatorSettings.load(config_file=config)


def test_service_entry_that_is_not_a_table(tmp_path: Path) -> None:
    config = _toml(tmp_path, "coordinator = 5\n")
    with pytest.raises(SettingsError, match=r"\[coordinator\] must be a table"):
        CoordinatorSettings.load(config_file=config)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match="does not exist"):
        CoordinatorSettings.load(config_file=missing)
    with pytest.raises(SettingsError, match="does not exist"):
        _parse(WorkerSettings, ["--config", str(missing)])
    with pytest.raises(SettingsError, match="does not exist"):
        DashboardSettings.load(config_file=tmp_path)  # a folder is not a config file


def test_malformed_config_file(tmp_path: Path) -> None:
    config = _toml(tmp_path, "[coordinator\nrounds = \n")
    with pytest.raises(SettingsError):
        CoordinatorSettings.load(config_file=config)


# ---------------------------------------------------------------------------------------------- documentation


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_documentation_lists_every_field(cls: type[StrataSettings]) -> None:
    doc = cls.documentation()
    assert len(doc) == len(cls.model_fields)
    prefix = cls.model_config.get("env_prefix", "")
    for (flag, env, default, description), (name, field) in zip(doc, cls.model_fields.items(), strict=True):
        assert flag == "--" + name.replace("_", "-")
        assert env == f"{prefix}{name.upper()}"
        assert default == repr(field.default)
        assert description, f"{name} has no description"


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_add_arguments_adds_one_flag_per_field(cls: type[StrataSettings]) -> None:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    flags = {opt for action in parser._actions for opt in action.option_strings}
    assert "--config" in flags
    for flag, *_ in cls.documentation():
        assert flag in flags


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_env_prefixes_are_distinct_and_defaults_valid(cls: type[StrataSettings]) -> None:
    assert cls.model_config.get("env_prefix", "").startswith("STRATA_")
    assert cls.toml_table
    cls.load()  # every default validates


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_readme_mentions_every_environment_variable(cls: type[StrataSettings]) -> None:
    assert README.is_file(), "README.md is missing"
    text = README.read_text(encoding="utf-8")
    missing = [env for _, env, _, _ in cls.documentation() if env not in text]
    assert not missing, f"README.md does not mention {', '.join(missing)}"


def test_over_selection_without_workers_per_round_and_unknown_failure_policy_are_refused() -> None:
    with pytest.raises(SettingsError, match="over_selection invites more than workers_per_round"):
        CoordinatorSettings.load({"over_selection": 0.3})
    assert CoordinatorSettings.load({"over_selection": 0.3, "workers_per_round": 10}).over_selection == 0.3
    with pytest.raises(SettingsError, match="STRATA_COORDINATOR_ON_FAILED_ROUNDS"):
        CoordinatorSettings.load({"on_failed_rounds": "retry-forever"})
