"""Training curves: step rows in metrics.parquet and the trackers that get every row.

A tiny transfer on the CPU (random-init timm ResNets at 28 px, 256 Fashion-MNIST images, batch 64: 4 steps
an epoch, 2 epochs) with ``log_every`` 2, whose strategy reports two loss terms and a teacher mask. Checked:
the step rows tile the epochs (their means are the epoch's), logging changes no result, each built-in
tracker's output read back with its library's own reader (tensorboard's EventAccumulator, MLflow's client,
the records of W&B's offline ``.wandb`` file), a resumed run whose records hold each row once, a failing
tracker that only warns, a missing package named with the extra, and a plugin's tracker."""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

import kt
from kt.config import validate
from kt.errors import KtError
from kt.registry import Registry
from kt.schema import SCHEMA_FILE
from kt.strategies import Loss, Outputs, Strategy, kl_div
from kt.trackers import EXTRA, Tracking, check_trackers, scalars
from kt.transfer import METRIC_COLUMNS, RunFolder, TransferSettings, epoch_rows, transfer

DATASET = {"name": "fashion_mnist", "subset": {"train": 256, "eval": 200}}
SETTINGS = TransferSettings(epochs=2, batch_size=64, lr=0.01, device="cpu", log_every=2)
BUILT_IN = ["tensorboard", "mlflow", "wandb"]
RUN = "transfer/kl_ce/tiny_teacher__tiny_student"  # the run folder under the results folder


@dataclass
class KLCE(Strategy):
    """KL where the teacher is confident, cross-entropy everywhere: two named terms and a teacher mask."""

    def loss(self, out: Outputs) -> Loss:
        mask = F.softmax(out.teacher.float(), 1).max(1).values >= 0.11
        kl = (kl_div(out.student, out.teacher) * mask).mean()
        ce = F.cross_entropy(out.student.float(), out.labels)
        return Loss(kl + ce, mask, {"kl": kl, "ce": ce})


class Recorder:
    """A third-party tracker: keeps what it is given. ``fail_in``: the method that raises."""

    calls: list[tuple[str, Any]] = []

    def __init__(self, fail_in: str | None = None) -> None:
        self.fail_in = fail_in

    def _call(self, what: str, value: Any) -> None:
        Recorder.calls.append((what, value))
        if what == self.fail_in:
            raise RuntimeError(f"{what} is broken")

    def start(self, run: dict[str, Any]) -> None:
        self._call("start", run)

    def log(self, row: dict[str, Any], step: int) -> None:
        assert step == row["step"]
        self._call("log", dict(row))

    def finish(self) -> None:
        self._call("finish", None)


class Plugin:
    @kt.hookimpl
    def register_strategies(self, register):
        register("kl_ce", KLCE)

    @kt.hookimpl
    def register_trackers(self, register):
        register("recorder", Recorder)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(extra_plugins=(Plugin(),), entry_points=False)


def run(pair, registry: Registry, results: Path, **changes: Any) -> pl.DataFrame:
    Recorder.calls = []
    settings = replace(SETTINGS, results=str(results), **changes)
    return transfer(*pair, "kl_ce", DATASET, results / RUN, settings, registry=registry)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, pair, registry: Registry) -> tuple[Path, pl.DataFrame, list]:
    """A run with every built-in tracker and the plugin's: (results folder, metrics, the plugin's calls)."""
    results = tmp_path_factory.mktemp("tracked") / "results"
    metrics = run(pair, registry, results, trackers=[*BUILT_IN, "recorder"])
    return results, metrics, list(Recorder.calls)


def step_curve(metrics: pl.DataFrame, column: str, kind: str = "step") -> list[tuple[int, float]]:
    rows = metrics.filter((pl.col("kind") == kind) & pl.col(column).is_not_null())
    return list(zip(rows["step"].to_list(), rows[column].to_list(), strict=True))


# ---------------------------------------------------------------------------------------------- step rows


def test_step_rows_tile_the_epochs_with_their_means(tracked) -> None:
    results, metrics, _ = tracked
    assert metrics.equals(pl.read_parquet(results / RUN / "metrics.parquet"))
    assert dict(metrics.schema) == {**METRIC_COLUMNS, "loss_ce": pl.Float64, "loss_kl": pl.Float64,
                                    "strategy": pl.String, "teacher": pl.String, "student": pl.String}
    assert metrics.select("kind", "epoch", "step", "progress").rows() == [
        ("epoch", 0, 0, 0.0), ("step", 1, 2, 0.5), ("step", 1, 4, 1.0), ("epoch", 1, 4, 1.0),
        ("step", 2, 6, 1.5), ("step", 2, 8, 2.0), ("epoch", 2, 8, 2.0)]
    steps, epochs = metrics.filter(pl.col("kind") == "step"), epoch_rows(metrics)
    assert epochs["epoch"].to_list() == [0, 1, 2]
    for column in ("train_loss", "loss_kl", "loss_ce", "teacher_share"):
        means = steps.group_by("epoch").agg(pl.col(column).mean()).sort("epoch")[column].to_list()
        assert means == pytest.approx(epochs[column].to_list()[1:], rel=1e-12), column  # 2 windows of 2 steps
    # the terms add up to the loss, in every row; the share is a share
    trained = metrics.filter(pl.col("step") > 0)
    np.testing.assert_allclose(trained["loss_kl"] + trained["loss_ce"], trained["train_loss"], rtol=1e-6)  # float32 sum
    assert all(0 < s <= 1 for s in trained["teacher_share"])
    assert set(trained["lr"]) == {0.01} and all(v > 0 for v in trained["img_per_s"])
    assert steps["eval_accuracy"].null_count() == len(steps) and epochs["eval_accuracy"].null_count() == 0
    assert metrics.row(0, named=True) | {"eval_accuracy": None} == {
        **dict.fromkeys(metrics.columns), "kind": "epoch", "epoch": 0, "step": 0, "progress": 0.0, "seconds": 0.0,
        "strategy": "kl_ce", "teacher": "tiny_teacher", "student": "tiny_student"}
    assert not metrics.select(pl.selectors.float().is_nan().any()).row(0).count(True)


def test_step_rows_change_no_result(tracked, pair, registry: Registry, tmp_path: Path) -> None:
    """log_every 0 and no trackers: the same weights and epoch losses, no step row; the digest ignores both."""
    results, metrics, _ = tracked
    plain = run(pair, registry, tmp_path, log_every=0)
    assert plain["kind"].to_list() == ["epoch"] * 3
    for column in ("train_loss", "teacher_share", "loss_kl", "loss_ce", "eval_accuracy"):
        assert plain[column].to_list() == epoch_rows(metrics)[column].to_list(), column
    a = torch.load(results / RUN / "student.pth", weights_only=True)
    b = torch.load(tmp_path / RUN / "student.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert SETTINGS.digest() == replace(SETTINGS, log_every=0, trackers=["wandb"], results="x").digest()


# ---------------------------------------------------------------------------------------------- built-in trackers


def test_tensorboard_events_read_back(tracked) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    results, metrics, _ = tracked
    events = accumulator.EventAccumulator(str(results / "tensorboard" / RUN))
    events.Reload()
    for kind, column in (("step", "train_loss"), ("step", "loss_kl"), ("step", "teacher_share"),
                         ("epoch", "train_loss"), ("epoch", "eval_accuracy"), ("epoch", "img_per_s")):
        got = [(e.step, e.value) for e in events.Scalars(f"{kind}/{column}")]
        want = step_curve(metrics, column, kind)
        assert [s for s, _ in got] == [s for s, _ in want], (kind, column)
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), (kind, column)  # float32
    assert "step/eval_accuracy" not in events.Tags()["scalars"]  # nulls are not logged


def test_mlflow_store_reads_back(tracked) -> None:
    tracking = pytest.importorskip("mlflow.tracking")
    results, metrics, _ = tracked
    client = tracking.MlflowClient(tracking_uri=(results / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("kt")
    (found,) = client.search_runs([experiment.experiment_id])
    tags = found.data.tags
    assert (tags["kt.strategy"], tags["kt.teacher"], tags["kt.student"], tags["kt.seed"]) == (
        "kl_ce", "tiny_teacher", "tiny_student", "0")
    assert tags["kt.folder"] == str((results / RUN).resolve()) and found.info.run_name == RUN
    assert found.info.status == "FINISHED" and json.loads(found.data.params["log_every"]) == 2
    for kind, column in (("step", "train_loss"), ("step", "loss_ce"), ("epoch", "eval_accuracy")):
        history = client.get_metric_history(found.info.run_id, f"{kind}/{column}")
        assert sorted((m.step, m.value) for m in history) == step_curve(metrics, column, kind), (kind, column)


def wandb_records(path: Path) -> list[Any]:
    """The records of a W&B ``.wandb`` file (a LevelDB-style log of ``wandb_internal_pb2.Record``: a
    7-byte header, then 32 KiB blocks of chunks, each with a 7-byte header: CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_offline_run_reads_back(tracked) -> None:
    pytest.importorskip("wandb")
    results, metrics, _ = tracked
    (file,) = (results / "wandb" / RUN / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(file)
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.display_name == RUN and list(started.tags) == ["kl_ce"]
    by_step: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            by_step.setdefault(items["_step"], {}).update(items)
    assert sorted(by_step) == [0, 2, 4, 6, 8]
    for kind, column in (("step", "train_loss"), ("step", "loss_kl"), ("epoch", "eval_accuracy")):
        got = [(s, values[f"{kind}/{column}"]) for s, values in sorted(by_step.items()) if f"{kind}/{column}" in values]
        assert got == step_curve(metrics, column, kind), (kind, column)
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished


# ---------------------------------------------------------------------------------------------- plugin tracker


def test_a_plugin_tracker_gets_every_row_in_order(tracked) -> None:
    results, metrics, calls = tracked
    assert [what for what, _ in calls] == ["start"] + ["log"] * len(metrics) + ["finish"]
    started = calls[0][1]
    assert {k: started[k] for k in ("name", "strategy", "teacher", "student", "seed", "start_step")} == {
        "name": RUN, "strategy": "kl_ce", "teacher": "tiny_teacher", "student": "tiny_student", "seed": 0,
        "start_step": 0}
    assert started["folder"] == str((results / RUN).resolve()) and started["settings"]["log_every"] == 2
    rows = metrics.drop("strategy", "teacher", "student").to_dicts()
    logged = [value for what, value in calls if what == "log"]
    assert [{k: row.get(k) for k in rows[0]} for row in logged] == rows  # the last with its final evaluation
    assert scalars(logged[1]) == {f"step/{k}": v for k, v in rows[1].items()
                                  if k not in ("kind", "epoch", "step") and v is not None}


def test_a_failing_tracker_warns_once_and_the_run_is_the_same(tracked, pair, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    class Failing(Plugin):
        @kt.hookimpl
        def register_trackers(self, register):
            register("recorder", lambda: Recorder(fail_in="log"))

    results, metrics, _ = tracked
    caplog.set_level(logging.WARNING, logger="kt")
    failing = run(pair, Registry(extra_plugins=(Failing(),), entry_points=False), tmp_path, trackers=["recorder"])
    assert [what for what, _ in Recorder.calls] == ["start", "log"]  # off after its first failure: no finish
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "tracker 'recorder'" in warnings[0] and "failed in log()" in warnings[0]
    assert "RuntimeError: log is broken" in warnings[0] and "which goes on" in warnings[0]
    timing = ["seconds", "img_per_s"]
    assert failing.drop(timing).equals(metrics.drop(timing))
    assert (tmp_path / RUN / "config.json").exists()


def test_a_missing_package_warns_with_the_extra_to_install(registry: Registry, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    for module in ("wandb", "mlflow", "mlflow.tracking", "torch.utils.tensorboard"):
        monkeypatch.setitem(__import__("sys").modules, module, None)  # `import X` raises ImportError
    caplog.set_level(logging.WARNING, logger="kt")
    identity = {"name": "r", "folder": str(tmp_path), "results": str(tmp_path), "pair": "a -> b [kl]",
                "strategy": "kl", "teacher": "a", "student": "b", "seed": 0, "start_step": 0, "settings": {}}
    tracking = Tracking.open([*BUILT_IN, "recorder"], registry, identity, [{"kind": "epoch", "epoch": 0, "step": 0}])
    assert [name for name, _ in tracking.trackers] == ["recorder"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    for name, package in zip(BUILT_IN, ["tensorboard", "mlflow-skinny", "wandb"], strict=True):
        (message,) = [m for m in messages if f"tracker {name!r} (plugin 'kt.plugins.trackers'" in m]
        assert f"needs the Python package {package!r}" in message and EXTRA in message


# ---------------------------------------------------------------------------------------------- resume


class Died(Exception):
    """Stands for the job being killed right after a checkpoint."""


def test_a_resumed_run_keeps_its_step_rows_and_replaces_its_records(tracked, pair, registry: Registry,
                                                                    tmp_path: Path, monkeypatch) -> None:
    results, metrics, _ = tracked
    save_state = RunFolder.save_state

    def die_after_first_checkpoint(folder, state):
        save_state(folder, state)
        raise Died

    with monkeypatch.context() as m:
        m.setattr(RunFolder, "save_state", die_after_first_checkpoint)
        with pytest.raises(Died):
            run(pair, registry, tmp_path, trackers=[*BUILT_IN, "recorder"])
    assert [w for w, _ in Recorder.calls][-1] == "finish"  # a failed run's trackers are closed too
    resumed = run(pair, registry, tmp_path, trackers=[*BUILT_IN, "recorder"])
    timing = ["seconds", "img_per_s"]
    assert resumed.drop(timing).equals(metrics.drop(timing))  # epoch 1's step rows came from state.pt
    start = Recorder.calls[0][1]
    assert start["start_step"] == 4
    logged = [v for w, v in Recorder.calls if w == "log"]
    assert [(r["kind"], r["step"]) for r in logged] == resumed.select("kind", "step").rows()  # replayed, then new

    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard" / RUN))
    events.Reload()
    assert [e.step for e in events.Scalars("step/train_loss")] == [2, 4, 6, 8]  # the first attempt's are gone
    tracking = pytest.importorskip("mlflow.tracking")
    client = tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (active,) = client.search_runs([client.get_experiment_by_name("kt").experiment_id])
    assert [m.step for m in client.get_metric_history(active.info.run_id, "step/train_loss")] == [2, 4, 6, 8]
    pytest.importorskip("wandb")
    assert len(list((tmp_path / "wandb" / RUN / "wandb").glob("offline-run-*"))) == 1


# ---------------------------------------------------------------------------------------------- config


def test_tracker_names_and_options_are_checked_like_strategies(registry: Registry) -> None:
    check_trackers(["tensorboard", {"name": "mlflow", "uri": "sqlite:///x.db"}, {"name": "wandb", "mode": "online"}],
                   registry)
    with pytest.raises(KtError, match=r"config key transfer.trackers\[1\]: unknown tracker 'tensorbord'. "
                                      r"Did you mean: tensorboard\? Known: mlflow, recorder, tensorboard, wandb."):
        check_trackers(["mlflow", "tensorbord"], registry)
    with pytest.raises(KtError, match=r"transfer.trackers\[0\].experment: tracker 'mlflow' has no option "
                                      r"'experment'. Did you mean: experiment\? Its options: uri, experiment"):
        check_trackers([{"name": "mlflow", "experment": "x"}], registry)
    with pytest.raises(KtError, match=r"transfer.trackers\[0\]: tracker 'wandb': mode 'offlin' is none of"):
        check_trackers([{"name": "wandb", "mode": "offlin"}], registry)
    with pytest.raises(KtError, match=r"transfer.trackers.0: .* is not valid"):
        validate({"transfer": {"trackers": [{"dir": "x"}]}}, SCHEMA_FILE)  # an entry without a name
    config = {}
    validate(config, SCHEMA_FILE)
    assert config["transfer"]["trackers"] == [] and config["transfer"]["log_every"] == 50


def test_kt_plugins_lists_the_built_in_trackers_with_their_options() -> None:
    records = {r["name"]: r for r in Registry(entry_points=False).plugin_records()}
    record = records["kt.plugins.trackers"]
    assert record["hooks"] == ["register_trackers"]
    assert record["registered"] == {"trackers": ["mlflow", "tensorboard", "wandb"]}
    assert record["options"]["trackers"] == {"mlflow": {"uri": None, "experiment": "kt"},
                                             "tensorboard": {"dir": None},
                                             "wandb": {"project": "kt", "dir": None, "mode": "offline"}}
