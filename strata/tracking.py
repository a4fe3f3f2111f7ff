"""Experiment tracking: what a coordinator (a federation's rounds) or a worker (its local training) logs to
MLflow and to TensorBoard event files, through the libraries' own clients (docs/tracking.md).

A `Tracker` is one run in each configured sink. What each sink has logged is kept in a small JSON file
(written atomically), so a restarted process continues the same MLflow run and logs every step once it
is recorded, even when a tracking server was down for a while: a step a sink did not take is offered
again later, and the sink that took it is not asked twice.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field, model_validator

from strata import atomic
from strata.settings import StrataSettings

log = logging.getLogger("strata.tracking")

EXTRA = "pip install 'strata-fl[tracking]'"
BATCH = 1000  # MLflow takes at most 1000 metrics per log_batch call
PARAM_CHARS = 6000  # and params of at most 6000 characters


class TrackingSettings(StrataSettings):
    """Fields shared by the coordinator's and the worker's settings; see the module docstring."""

    mlflow_tracking_uri: str = Field(
        "",
        description="Log to MLflow at this tracking URI: a server (http://HOST:5000), a local SQLite store "
        "(sqlite:///mlflow.db, no server needed) or a folder (file:./mlruns; MLflow 3 wants "
        "MLFLOW_ALLOW_FILE_STORE=true for it); empty: no MLflow",
    )
    mlflow_experiment: str = Field(
        "strata", min_length=1, max_length=256, description="MLflow experiment the runs go in"
    )
    tensorboard_dir: Path | None = Field(
        None, description="Write TensorBoard event files under this folder, a subfolder per run"
    )

    @model_validator(mode="after")
    def _check_tracking(self) -> TrackingSettings:
        for name, module, wanted in (
            ("mlflow_tracking_uri", "mlflow", bool(self.mlflow_tracking_uri)),
            ("tensorboard_dir", "tensorboard", self.tensorboard_dir is not None),
        ):
            if wanted and importlib.util.find_spec(module) is None:
                raise ValueError(f"{name}: the {module} package is not installed ({EXTRA})")
        return self

    @property
    def tracking(self) -> bool:
        return bool(self.mlflow_tracking_uri) or self.tensorboard_dir is not None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted names: {"lora": {"rank": 8}} -> {"lora.rank": 8}."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def local_artifacts(uri: str) -> str | None:
    """Where a new experiment in a local SQLite store keeps its artifacts: `mlartifacts/` beside the
    database (MLflow's own default is ./mlruns under whatever folder the process runs in). None: the
    store's default (a server's artifact root, a folder store's own folder)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db.parent / "mlartifacts").as_uri()


class Sink(Protocol):
    """One tracking backend's run."""

    name: str

    def params(self, values: Mapping[str, str]) -> None: ...
    def metrics(self, step: int, values: Mapping[str, float], wall: float) -> None: ...
    def artifacts(self, folder: Path, name: str) -> None: ...
    def end(self, status: str) -> None: ...


class MlflowSink:
    """A run in an MLflow experiment, created once and continued after a restart (its id in the state)."""

    name = "mlflow"

    def __init__(
        self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str], run_id: str | None
    ) -> None:
        # Strata retries at its own pace (the next round): MLflow's own retries, with back-off, would
        # keep a coordinator's shutdown waiting minutes for a server that is down (the user's values win)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else self.client.create_experiment(experiment, artifact_location=local_artifacts(uri))
        )
        self.logged_params: dict[str, str] = {}
        if run_id:
            try:
                run = self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                self.logged_params = dict(run.data.params)
            except MlflowException:
                log.warning("MLflow run %s of %s is gone from %s; starting a new run", run_id, run_name, uri)
                run_id = None
        if not run_id:
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags)).info.run_id
        self.run_id: str = run_id

    def params(self, values: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        # MLflow params are immutable: those a continued run holds already stay as they are
        new = {k: v[:PARAM_CHARS] for k, v in values.items() if k not in self.logged_params}
        items = [Param(k, v) for k, v in sorted(new.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
            self.logged_params.update((p.key, p.value) for p in items[i : i + 100])

    def metrics(self, step: int, values: Mapping[str, float], wall: float) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), int(wall * 1000), step) for k, v in sorted(values.items())]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + BATCH])

    def artifacts(self, folder: Path, name: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=name)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class TensorBoardSink:
    """Event files in `root/run_name` (torch's SummaryWriter); a restart appends a new event file there."""

    name = "tensorboard"

    def __init__(self, root: Path, run_name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = root / run_name
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def params(self, values: Mapping[str, str]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(values.items()))
        self.writer.add_text("settings", f"| setting | value |\n|---|---|\n{rows}")
        self.writer.flush()

    def metrics(self, step: int, values: Mapping[str, float], wall: float) -> None:
        for k, v in sorted(values.items()):
            self.writer.add_scalar(k, float(v), global_step=step, walltime=wall)
        self.writer.flush()

    def artifacts(self, folder: Path, name: str) -> None:
        """TensorBoard holds no files: it notes where the artifact was written instead."""
        self.writer.add_text(name, f"written to {folder}")
        self.writer.flush()

    def end(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class Tracker:
    """One run in every configured sink, and each sink's progress in `state_path`. A sink is opened on first
    use, and again on a later call if it could not be (a tracking server down): the others go on."""

    def __init__(
        self, settings: TrackingSettings, run_name: str, tags: Mapping[str, str], state_path: Path
    ) -> None:
        self.settings, self.run_name, self.tags = settings, run_name, dict(tags)
        self.state_path = state_path
        self.state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
        self.wanted = [
            name
            for name, on in (
                ("mlflow", bool(settings.mlflow_tracking_uri)),
                ("tensorboard", settings.tensorboard_dir is not None),
            )
            if on
        ]
        self.sinks: dict[str, Sink] = {}
        self.failing: set[str] = set()

    def _sink_state(self, name: str) -> dict[str, Any]:
        return self.state.setdefault(name, {"logged": 0})  # type: ignore[no-any-return]

    def _save(self) -> None:
        atomic.write_text(self.state_path, json.dumps(self.state, indent=1, sort_keys=True))

    def _build(self, name: str) -> Sink:
        s = self.settings
        if name == "tensorboard":
            assert s.tensorboard_dir is not None
            return TensorBoardSink(s.tensorboard_dir, self.run_name)
        run_id = self._sink_state(name).get("run_id")
        ml = MlflowSink(s.mlflow_tracking_uri, s.mlflow_experiment, self.run_name, self.tags, run_id)
        if ml.run_id != run_id:
            self._sink_state(name)["run_id"] = ml.run_id
            self._save()
        return ml

    def _open(self) -> list[Sink]:
        """The sinks open now, opening those that are not (a failure is reported, not raised)."""
        for name in self.wanted:
            if name not in self.sinks:
                try:
                    self.sinks[name] = self._build(name)
                except Exception as exc:  # noqa: BLE001 - a tracking outage must not stop a federation
                    self._failed(name, "open the run", exc)
        return list(self.sinks.values())

    def _failed(self, name: str, what: str, exc: Exception) -> None:
        if name not in self.failing:
            log.warning("%s: could not %s (%s); will retry", name, what, exc)
            self.failing.add(name)

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id, once it has one."""
        return self.state.get("mlflow", {}).get("run_id")

    def logged(self) -> int:
        """The last step every configured sink has taken (0: none)."""
        return min((self._sink_state(name)["logged"] for name in self.wanted), default=0)

    def _each(self, what: str, call: Any, skip: Any = lambda name: False) -> bool:
        """Call `call(sink)` for each configured sink `skip` does not skip; False if one is not open or
        failed (reported once per outage, not raised)."""
        ok = True
        open_ = {sink.name: sink for sink in self._open()}
        for name in self.wanted:
            if skip(name):
                continue
            if name not in open_:
                ok = False
                continue
            try:
                call(open_[name])
            except Exception as exc:  # noqa: BLE001 - a tracking outage must not stop a federation
                ok = False
                self._failed(name, f"log {what}", exc)
                continue
            if name in self.failing:
                log.info("%s: logging again", name)
                self.failing.discard(name)
        return ok

    def params(self, values: Mapping[str, Any]) -> bool:
        """Log the run's settings (as strings) to every sink that has not taken them."""
        text = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in values.items()}

        def one(sink: Sink) -> None:
            sink.params(text)
            self._sink_state(sink.name)["params"] = True
            self._save()

        return self._each("the settings", one, lambda name: self._sink_state(name).get("params"))

    def step(self, step: int, values: Mapping[str, float], wall: float | None = None) -> bool:
        """Log step `step`'s values to every sink that has not taken it; False if a sink did not (the
        caller offers the step again later)."""
        finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}

        def one(sink: Sink) -> None:
            sink.metrics(step, finite, time.time() if wall is None else wall)
            self._sink_state(sink.name)["logged"] = step
            self._save()

        return self._each(f"step {step}", one, lambda name: self._sink_state(name)["logged"] >= step)

    def artifacts(self, folder: Path, name: str) -> bool:
        return self._each(f"the artifact {name}", lambda sink: sink.artifacts(folder, name))

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED (MLflow's run states)."""
        self._each("the end of the run", lambda sink: sink.end(status))
