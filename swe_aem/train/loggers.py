"""The experiment trackers a run reports to besides metrics.jsonl (`run.loggers`).

metrics.jsonl is always written (the viewer, `swe-aem plot` and the tests read it); each
name in `run.loggers` adds one tracker, registered here by name and imported only when
named, so none is a dependency of a run that does not use it:

- `tensorboard`: event files under RUN/tensorboard (the default);
- `wandb`: Weights & Biases, offline unless WANDB_MODE says otherwise (files under
  RUN/wandb; `wandb sync` uploads them later), project `swe-aem`, the run's name;
- `mlflow`: MLflow (`mlflow-skinny` is enough), to MLFLOW_TRACKING_URI or else the local
  file store RUN/mlruns.

Each gets the resolved config once, every metrics row (rows of another kind than a training
step, such as `heldout_before`, under `KIND/metric`), and a table of each step's episodes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from swe_aem.errors import InputError


class LoggerError(InputError, ValueError):
    """A `run.loggers` name that is not a tracker here, or one whose package is missing."""


class Tracker(Protocol):
    """One experiment tracker a run reports to."""

    def log(self, step: int, metrics: Mapping[str, float], kind: str) -> None: ...
    def table(self, step: int, name: str, rows: Sequence[Mapping[str, Any]]) -> None: ...
    def close(self) -> None: ...


def _finite(metrics: Mapping[str, float], kind: str) -> dict[str, float]:
    prefix = "" if kind == "train" else f"{kind}/"
    return {prefix + k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


class TensorBoardTracker:
    def __init__(self, run_dir: Path, name: str, config: Mapping[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, float], kind: str) -> None:
        for key, value in _finite(metrics, kind).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, step: int, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        pass  # TensorBoard has no tables; the viewer shows them

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, name: str, config: Mapping[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "swe-aem"), name=name,
                              dir=str(run_dir), config=dict(config),
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")

    def log(self, step: int, metrics: Mapping[str, float], kind: str) -> None:
        # W&B's own step must grow: a held-out row of the same step goes in with it
        self.run.log(_finite(metrics, kind), step=step)

    def table(self, step: int, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            columns = list(rows[0])
            self.run.log({name: self.wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])},
                         step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, run_dir: Path, name: str, config: Mapping[str, Any]):
        import mlflow

        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:  # the local file store (MLflow 3 keeps it in maintenance mode, behind this switch)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name("swe-aem")
        eid = experiment.experiment_id if experiment else self.client.create_experiment("swe-aem")
        self.run_id = self.client.create_run(eid, run_name=name).info.run_id
        flat = _flatten(config)
        for i in range(0, len(flat), 100):  # MLflow takes at most 100 params a batch
            params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in list(flat.items())[i:i + 100]]
            self.client.log_batch(self.run_id, params=params)

    def log(self, step: int, metrics: Mapping[str, float], kind: str) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [self.mlflow.entities.Metric(k.replace("/", "."), v, now, step)
                 for k, v in _finite(metrics, kind).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def table(self, step: int, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.client.log_dict(self.run_id, {"rows": list(rows)}, f"{name}/step-{step:06d}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# name -> (constructor, the package to install when it is missing)
TRACKERS: dict[str, tuple[Callable[[Path, str, Mapping[str, Any]], Tracker], str]] = {
    "tensorboard": (TensorBoardTracker, "tensorboard"),
    "wandb": (WandbTracker, "wandb"),
    "mlflow": (MlflowTracker, "mlflow-skinny"),
}


def check_loggers(names: Sequence[str]) -> None:
    """A clear error for a name that is not a tracker (the config's own check)."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise LoggerError(f"run.loggers names {unknown}: the trackers here are {sorted(TRACKERS)}")


def open_trackers(names: Sequence[str], run_dir: Path, name: str, config: Mapping[str, Any]) -> list[Tracker]:
    """The trackers `names` asks for, each opened on the run (its package imported now)."""
    check_loggers(names)
    out = []
    for tracker in dict.fromkeys(names):
        make, package = TRACKERS[tracker]
        try:
            out.append(make(Path(run_dir), name, config))
        except ModuleNotFoundError as exc:
            for t in out:
                t.close()
            raise LoggerError(f"run.loggers names {tracker!r}, whose package is not installed "
                              f"({exc.name}): pip install {package}") from exc
    return out
