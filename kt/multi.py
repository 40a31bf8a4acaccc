"""Multi-teacher transfer (README, "Multi-teacher transfer"): ``sequential``, ``parallel`` and ``soup``.

* ``sequential``: the single-teacher strategy with one teacher after another, ordered by teacher
  accuracy (the curriculum). Each stage is an ordinary run folder under ``stages/`` whose student
  starts from the previous stage's result, so the frozen initial student is reset to the current
  student at every stage; a finished stage is not run again.
* ``parallel``: one run in which every teacher scores each batch; a data-partitioning strategy
  then takes, per sample, the most confident of {initial student, teachers}
  (:func:`kt.strategies.most_confident`).
* ``soup``: the uniform average of the weights of the single-teacher students (one per teacher,
  same architecture), buffers included; see :func:`average_state_dicts`.

Every mode writes the same run folder as a single-teacher transfer, with the group's name in the
teacher column, so evaluation and the summary treat all runs alike.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import torch

from kt.artifacts import check_model, copy_atomic, read_logits
from kt.batchnorm import recalibrate_batchnorm
from kt.data import load_split
from kt.device import pick_device
from kt.errors import KtError
from kt.extract import prepare
from kt.models import ModelSpec, create_model
from kt.registry import Registry, get_registry
from kt.schema import choices, defaults
from kt.settings import TransferSettings
from kt.transfer.evaluation import eval_logits, write_run
from kt.transfer.loop import transfer
from kt.transfer.rows import epoch_row, metrics_table
from kt.transfer.run_folder import RunFolder

ORDERS = choices("multi_teacher", "order")
SOUP_BATCHNORM = choices("multi_teacher", "soup_batchnorm")
DEFAULTS = defaults("multi_teacher")


def curriculum(teachers: Sequence[ModelSpec], accuracies: Sequence[float], order: str = DEFAULTS["order"]
               ) -> list[ModelSpec]:
    """Teachers sorted by accuracy (``ascending``: weakest first); equal accuracies keep their order."""
    if order not in ORDERS:
        raise KtError(f"unknown curriculum order {order!r} (config key multi_teacher.order); use one of {ORDERS}.")
    if len(teachers) != len(accuracies):
        raise KtError(f"{len(teachers)} teachers but {len(accuracies)} accuracies; give one per teacher.")
    ranked = sorted(range(len(teachers)), key=lambda i: accuracies[i], reverse=order == "descending")
    return [teachers[i] for i in ranked]


def teacher_accuracies(logits_files: Sequence[str | Path], teachers: Sequence[ModelSpec]) -> list[float]:
    """Each teacher's eval accuracy from its extraction file (checked to be that teacher's)."""
    if len(logits_files) != len(teachers):
        raise KtError(f"{len(teachers)} teachers but {len(logits_files)} logits files (--teacher-logits); "
                      "give one eval logits file per teacher, in the same order.")
    out = []
    for path, spec in zip(logits_files, teachers, strict=True):
        known = read_logits(path)
        check_model(known, spec.slug, "teacher")
        out.append(known.accuracy)
    return out


def sequential(teachers: Sequence[ModelSpec], student: ModelSpec, strategy: str, dataset: dict[str, Any],
               out_dir: str | Path, group: str, settings: TransferSettings | None = None,
               registry: Registry | None = None, before: str | Path | None = None,
               accuracies: Sequence[float] | None = None, order: str = DEFAULTS["order"]) -> pl.DataFrame:
    """One single-teacher transfer per teacher, in curriculum order, each starting from the last.

    Stages live in ``out_dir/stages/{k}_{teacher}/``; the group's folder gets the first stage's
    ``eval_before.h5``, the last stage's results and the metrics rows of all stages (``stage``,
    ``stage_teacher`` columns; epochs and progress counted across stages, steps within each stage)."""
    out = RunFolder(out_dir)
    registry = registry or get_registry()
    settings = settings or TransferSettings()
    stages = curriculum(teachers, accuracies, order) if accuracies is not None else list(teachers)
    extra_config = {"mode": "sequential", "group": group, "base_strategy": strategy, "order": order,
                "members": [t.slug for t in stages]}
    current, previous_after, frames = student, before, []
    for k, teacher in enumerate(stages, 1):
        stage = out.stage(k, teacher.slug)
        if finished(stage, teacher, current, settings):  # done earlier: resume after it
            metrics = pl.read_parquet(stage.metrics)
        else:  # missing, unfinished (resumes from its state.pt) or from another curriculum (redone)
            if stage.complete:
                shutil.rmtree(stage.path)
            metrics = transfer(teacher, current, strategy, dataset, stage.path, settings, registry=registry,
                               before=previous_after, extra_config={"stage": k} | extra_config)
        shift = (k - 1) * settings.epochs  # epochs count across stages; steps count within each stage
        shifted = [pl.col(c) + shift for c in ("epoch", "progress") if c in metrics.columns]  # older: no progress
        frames.append(metrics.filter(pl.col("epoch") > 0 if k > 1 else pl.lit(True)).with_columns(
            *shifted, pl.lit(k).alias("stage"), pl.lit(teacher.slug).alias("stage_teacher")))
        current = replace(student, weights=str(stage.weights))
        previous_after = stage.after
    metrics = pl.concat(frames, how="diagonal_relaxed").with_columns(pl.lit("sequential").alias("strategy"),
                                                                     pl.lit(group).alias("teacher"))
    first, last = out.stage(1, stages[0].slug), out.stage(len(stages), stages[-1].slug)
    config = last.read_config() | extra_config | {
        "teacher": None, "teachers": [t.to_dict() for t in stages], "student": student.to_dict()}
    config.pop("stage")
    copy_atomic(first.before, out.before)
    for name in ("after", "weights"):  # the last stage's result is the group's
        copy_atomic(last.file(name), out.file(name))
    out.write_record(config, metrics)
    return metrics


def finished(stage: RunFolder, teacher: ModelSpec, student: ModelSpec, settings: TransferSettings
             ) -> bool:
    """Whether ``stage`` holds a complete run of exactly this teacher, starting student and settings."""
    if not stage.complete:
        return False
    done = stage.read_config()
    return (done.get("teacher") == teacher.to_dict() and done.get("student") == student.to_dict()
            and done.get("digest") == settings.digest())


def parallel(teachers: Sequence[ModelSpec], student: ModelSpec, strategy: str, dataset: dict[str, Any],
             out_dir: str | Path, group: str, settings: TransferSettings | None = None,
             registry: Registry | None = None, before: str | Path | None = None) -> pl.DataFrame:
    """One transfer in which every teacher scores each batch (the strategy must read several)."""
    extra_config = {"mode": "parallel", "group": group, "base_strategy": strategy,
                    "members": [t.slug for t in teachers]}
    return transfer(list(teachers), student, strategy, dataset, out_dir, settings, registry=registry,
                    before=before, extra_config=extra_config)


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The arithmetic mean of state dicts, entry by entry, buffers included.

    Floating tensors (weights, batch-norm running mean and variance) are averaged in float64 and cast
    back; integer buffers (batch-norm's ``num_batches_tracked``) get their mean rounded. Averaging the
    running statistics is what model soups do; it is exact for the means and an approximation for the
    variances, which :func:`soup` can re-estimate instead (``batchnorm="recalibrate"``)."""
    if not states:
        raise KtError("a soup needs at least one member.")
    keys = list(states[0])
    for i, state in enumerate(states[1:], 1):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise KtError(f"soup member {i} has other weights than member 0 (different architecture); "
                          "a soup averages students of one architecture only.")
    out = {}
    for key in keys:
        stacked = torch.stack([s[key].detach().cpu().to(torch.float64) for s in states])
        mean = stacked.mean(0)
        dtype = states[0][key].dtype
        out[key] = mean.to(dtype) if dtype.is_floating_point else mean.round().to(dtype)
    return out


def check_same_student(students: Sequence[dict[str, Any]], names: Sequence[str]) -> None:
    """Refuse members whose students differ in architecture (model id, arguments, classes) or start."""
    arch = [(m["id"], json.dumps(m.get("args") or {}, sort_keys=True), m.get("num_classes")) for m in students]
    if len(set(arch)) > 1:
        listing = "; ".join(f"{n}: {a[0]} {a[1]}" for n, a in zip(names, arch, strict=True))
        raise KtError(f"a soup averages students of one architecture, these differ ({listing}); "
                      "use sequential or parallel for mixed architectures.")
    if len({json.dumps(m, sort_keys=True) for m in students}) > 1:
        raise KtError(f"soup members {list(names)} trained students that start from different weights; "
                      "a soup averages transfers into one student.")


def soup(member_runs: Sequence[str | Path], dataset: dict[str, Any], out_dir: str | Path, group: str,
         settings: TransferSettings | None = None, registry: Registry | None = None,
         batchnorm: str = DEFAULTS["soup_batchnorm"]) -> pl.DataFrame:
    """Average the students of single-teacher runs (their ``student.pth``) and evaluate the soup.

    The members must have trained one student (same architecture and initial weights); their
    common ``eval_before.h5`` becomes the soup's."""
    if batchnorm not in SOUP_BATCHNORM:
        raise KtError(f"unknown soup batch-norm handling {batchnorm!r} (config key multi_teacher.soup_batchnorm); "
                      f"use one of {SOUP_BATCHNORM}.")
    registry = registry or get_registry()
    settings = settings or TransferSettings()
    runs = [RunFolder(r) for r in member_runs]
    configs = []
    for run in runs:
        if not run.complete:
            raise KtError(f"soup member {run.path} is not a finished transfer run (no {run.config.name}); "
                          "run it first.")
        configs.append(run.read_config())
    check_same_student([c["student"] for c in configs], [str(r.path) for r in runs])
    student = ModelSpec.parse(configs[0]["student"])
    dev = pick_device(settings.device)
    evald = load_split(dataset, "eval", registry)
    model = create_model(student, evald.classes, registry)
    model.body.load_state_dict(average_state_dicts(
        [torch.load(r.weights, map_location="cpu", weights_only=True) for r in runs]))
    model = prepare(model, dev)
    if batchnorm == "recalibrate":
        train = load_split(dataset, "train", registry)
        recalibrate_batchnorm(model, train, settings.batch_size, torch.Generator().manual_seed(settings.seed))
    out = RunFolder(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    copy_atomic(runs[0].before, out.before)
    before = read_logits(out.before).logits
    after = eval_logits(model, evald, settings, dev)
    members = [ModelSpec.parse(c["teacher"]).slug if c.get("teacher") else str(r.path)
               for c, r in zip(configs, runs, strict=True)]
    base = configs[0]["strategy"]
    config = {"mode": "soup", "group": group, "members": members, "member_runs": [str(r.path) for r in runs],
              "strategy": base, "base_strategy": base, "batchnorm": batchnorm, "student": student.to_dict(),
              "dataset": dataset, "settings": configs[0]["settings"]}
    epochs = configs[0]["settings"]["epochs"]
    rows = [epoch_row(0, 0, None, None, 0.0, before, evald), epoch_row(epochs, 0, None, None, 0.0, after, evald)]
    metrics = metrics_table(rows).with_columns(pl.lit("soup").alias("strategy"), pl.lit(group).alias("teacher"),
                                              pl.lit(student.slug).alias("student"))
    write_run(out, model, student, after, evald, dataset, config, metrics)
    return metrics
