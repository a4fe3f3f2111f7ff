"""`strata demo` builds every process's settings with the services' own settings classes (found through
the command registry): any coordinator setting is a demo flag, checked before anything starts, and each
process is started with a TOML file that reads back to exactly the validated settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ByteSize

from coordinator.settings import CoordinatorSettings
from dashboard_api.settings import DashboardSettings
from strata.cli import build_parser, settings_class
from strata.demo import FIXED, PLAINTEXT, Demo
from strata.settings import SettingsError
from worker.settings import WorkerSettings


def demo(tmp_path: Path, *flags: str) -> Demo:
    args = build_parser().parse_args(["demo", "--workdir", str(tmp_path), *flags])
    return Demo(args, tmp_path)


def parse(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["demo", *flags])


def test_the_registry_gives_each_service_its_settings_class() -> None:
    assert settings_class("coordinator") is CoordinatorSettings
    assert settings_class("worker") is WorkerSettings
    assert settings_class("dashboard") is DashboardSettings
    with pytest.raises(LookupError, match="strata probe"):
        settings_class("probe")


def test_a_coordinator_setting_the_demo_never_names_reaches_the_coordinator(tmp_path: Path) -> None:
    d = demo(tmp_path, "--aggregation", "median", "--max-norm-ratio", "3", "--no-divergence")
    s = d.coordinator
    assert isinstance(s, CoordinatorSettings)
    assert (s.aggregation, s.max_norm_ratio, s.divergence) == ("median", 3.0, False)
    # what the demo fixes, and its defaults where nothing was given
    assert (s.federation, s.listen, s.exit_when_done) == ("demo", "127.0.0.1:0", True)
    assert s.database_url == f"sqlite:///{tmp_path / 'strata.db'}" and s.worker_tokens == d.tokens
    assert (s.min_workers, s.min_updates, s.round_timeout, s.start_timeout) == (3, 3, 600.0, 300.0)
    assert (s.learning_rate, s.down_encoding) == (1e-3, "fp32")


def test_the_demo_defaults_yield_to_flags_and_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_COORDINATOR_ROUND_TIMEOUT", "100")
    monkeypatch.setenv("STRATA_COORDINATOR_BATCH_SIZE", "8")
    s = demo(
        tmp_path, "--workers", "4", "--workers-per-round", "2", "--encoding", "int8", "--lr", "0.01"
    ).coordinator
    assert isinstance(s, CoordinatorSettings)
    assert (s.round_timeout, s.batch_size, s.learning_rate) == (100.0, 8, 0.01)
    assert (s.min_workers, s.min_updates, s.down_encoding) == (4, 2, "int8")
    s = demo(tmp_path, "--round-timeout", "50", "--encoding", "int8", "--down-encoding", "bf16").coordinator
    assert isinstance(s, CoordinatorSettings)
    assert (s.round_timeout, s.down_encoding) == (50.0, "bf16")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--aggregation", "mode"], "aggregation (--aggregation / STRATA_COORDINATOR_AGGREGATION)"),
        (["--epochs", "0"], "local_epochs (--local-epochs / STRATA_COORDINATOR_LOCAL_EPOCHS)"),
        (["--over-selection", "0.3"], "over_selection invites more than workers_per_round"),
        (["--policy", "fedtlu"], "(see --policy, --blocks, --block-budget)"),
    ],
)
def test_a_bad_coordinator_setting_is_refused_with_the_settings_message(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    with pytest.raises(SettingsError, match="invalid settings") as exc:
        demo(tmp_path / "w", *flags)
    assert message in str(exc.value)
    assert not (tmp_path / "w").exists()


def test_the_settings_the_demo_sets_itself_have_no_flag(tmp_path: Path) -> None:
    assert set(demo(tmp_path).fixed_settings()) == set(FIXED)
    for name in {*FIXED, *PLAINTEXT} - {"model"}:  # --model is the demo's own flag
        with pytest.raises(SystemExit):
            parse("--" + name.replace("_", "-"), "x")
    assert parse("--db", "sqlite:///x.db").db == "sqlite:///x.db"


def test_each_process_gets_a_config_that_reads_back_to_its_settings(tmp_path: Path) -> None:
    d = demo(tmp_path, "--max-update-norm", "inf", "--policy", "random", "--block-budget", "1MB")
    files = {
        "coordinator": (d.coordinator, d.coordinator.to_toml(exclude={"worker_tokens", "parent_token"})),
        "worker": (d.workers[0], d.workers[0].to_toml(exclude={"token"})),
        "dashboard": (d.dashboard, d.dashboard.to_toml()),
    }
    for name, (settings, text) in files.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        back = type(settings).load(config_file=path)
        expected = settings.model_dump(exclude={"worker_tokens", "token", "parent_token"})
        assert back.model_dump(exclude={"worker_tokens", "token", "parent_token"}) == expected, name
    assert isinstance(d.coordinator, CoordinatorSettings)
    assert d.coordinator.block_budget == ByteSize(1_000_000)
    with pytest.raises(TypeError, match="no TOML literal"):  # a secret is never written by accident
        d.workers[0].to_toml()


def test_odd_strings_survive_the_toml_file(tmp_path: Path) -> None:
    s = CoordinatorSettings.load(
        {
            "labels": 'a "quoted", back\\slash, tab\t, new\nline, del\x7f, é, 🙂',
            "worker_tokens": ["abcdefgh1"],
        }
    )
    path = tmp_path / "c.toml"
    path.write_text(s.to_toml(exclude={"parent_token"}))
    assert CoordinatorSettings.load(config_file=path) == s
