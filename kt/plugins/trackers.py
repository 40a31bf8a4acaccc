"""Built-in trackers, registered through the same hook as third-party ones: ``tensorboard`` (event files),
``mlflow`` (a file store under the results folder) and ``wandb`` (offline runs, to sync later).

Their packages are the ``trackers`` extra (``pip install 'kt[trackers]'``), imported only in ``start``:
without one, the run warns and goes on without that tracker (:class:`kt.trackers.Tracking`). Each keeps
one record per run folder: a rerun or a resumed run replaces the record of the earlier attempt and
replays the rows it had (the loop hands them over after ``start``), so a record never mixes attempts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kt
from kt.errors import KtError
from kt.trackers import require, run_dir, scalars

IDENTITY = ("pair", "strategy", "teacher", "student", "seed", "folder")  # what names a run in a tracker


def _identity(run: dict[str, Any]) -> dict[str, str]:
    return {key: str(run[key]) for key in IDENTITY}


@dataclass
class TensorBoard:
    """``tensorboard``: event files in ``DIR/RUN`` (``DIR``: the ``dir`` option, default
    ``<results>/tensorboard``; ``RUN``: the run folder under the results, e.g. ``transfer/kl/a__b``).
    View them with ``tensorboard --logdir results/tensorboard``."""

    dir: str | None = None
    writer: Any = field(default=None, init=False, repr=False)

    def start(self, run: dict[str, Any]) -> None:
        board = require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        path = run_dir(self.dir, run, "tensorboard")
        shutil.rmtree(path, ignore_errors=True)  # an earlier attempt's events: replaced by the replay
        self.writer = board.SummaryWriter(str(path))
        self.writer.add_text("run", json.dumps(_identity(run) | {"settings": run["settings"]}, indent=1))

    def log(self, row: dict[str, Any], step: int) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, step)

    def finish(self) -> None:
        self.writer.close()


@dataclass
class MLflow:
    """``mlflow``: an MLflow run per run folder in experiment ``experiment`` of the tracking store
    ``uri`` (default: the file store ``<results>/mlruns``; also ``sqlite:///PATH`` with the full
    ``mlflow`` package, or a server's URL), tagged with pair, strategy, teacher, student, seed and folder,
    the settings as parameters. View it with ``mlflow ui --backend-store-uri results/mlruns``."""

    uri: str | None = None
    experiment: str = "kt"
    client: Any = field(default=None, init=False, repr=False)
    run_id: str | None = field(default=None, init=False)

    def start(self, run: dict[str, Any]) -> None:
        uri = self.uri or (Path(run["results"]) / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps the file store only on request; it needs no database and takes concurrent
            # jobs (a folder per run), which suits a cluster's shared file system
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        tracking = require("mlflow.tracking", "mlflow-skinny", "mlflow")
        self.client = tracking.MlflowClient(tracking_uri=uri)
        experiment = self._experiment()
        folder = run["folder"].replace("'", "\\'")
        for earlier in self.client.search_runs([experiment], filter_string=f"tags.`kt.folder` = '{folder}'"):
            self.client.delete_run(earlier.info.run_id)  # a rerun or resumed run replaces its record
        tags = {f"kt.{key}": value for key, value in _identity(run).items()}
        self.run_id = self.client.create_run(experiment, run_name=run["name"], tags=tags).info.run_id
        entities = require("mlflow.entities", "mlflow-skinny", "mlflow")
        params = {key: json.dumps(value) for key, value in run["settings"].items()}
        self.client.log_batch(self.run_id, params=[entities.Param(k, v) for k, v in sorted(params.items())])

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except Exception:  # noqa: BLE001 - another job created it first
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def log(self, row: dict[str, Any], step: int) -> None:
        entities = require("mlflow.entities", "mlflow-skinny", "mlflow")
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[entities.Metric(key, value, now, step)
                                                    for key, value in scalars(row).items()])

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


@dataclass
class WandB:
    """``wandb``: a W&B run per run folder, written offline (``mode``) to ``DIR/RUN/wandb/offline-run-*``
    (``DIR``: the ``dir`` option, default ``<results>/wandb``), in project ``project``, grouped by pair.
    Upload later from a machine with network: ``wandb sync results/wandb/transfer/*/*/wandb/offline-run-*``."""

    project: str = "kt"
    dir: str | None = None
    mode: str = "offline"
    run: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online", "disabled"):
            raise KtError(f"tracker 'wandb': mode {self.mode!r} is none of offline, online, disabled.")

    def start(self, run: dict[str, Any]) -> None:
        wandb = require("wandb", "wandb", "wandb")
        path = run_dir(self.dir, run, "wandb")
        shutil.rmtree(path, ignore_errors=True)  # an earlier attempt's offline run: replaced by the replay
        path.mkdir(parents=True)
        quiet = wandb.Settings(console="off", silent=True, x_disable_stats=True, x_disable_machine_info=True,
                               disable_git=True, save_code=False, disable_job_creation=True)
        self.run = wandb.init(project=self.project, dir=str(path), mode=self.mode, name=run["name"],
                              group=run["pair"], tags=[run["strategy"]], reinit="create_new", settings=quiet,
                              config=_identity(run) | {"settings": run["settings"]})

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(scalars(row), step=step)

    def finish(self) -> None:
        self.run.finish()


@kt.hookimpl
def register_trackers(register):
    register("tensorboard", TensorBoard)
    register("mlflow", MLflow)
    register("wandb", WandB)
