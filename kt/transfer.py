"""The one training loop for (teacher, student, strategy): transfer, evaluation before/after,
per-epoch metrics, resumable checkpoints, and the optional frozen-output cache.

Every model sees the same augmented view: images are decoded once at the student's resolution
(uint8), augmented by a seeded :class:`~kt.augment.AugmentPlan`, resized for a teacher of another
input size, and normalised per model with its own mean/std.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from kt.artifacts import (
    atomic_path,
    check_model,
    check_same_samples,
    logits_attrs,
    open_h5,
    read_logits,
    set_attrs,
    write_logits,
    write_table,
)
from kt.augment import AugmentPlan
from kt.data import Split, check_augment, load_split, open_dataset
from kt.device import autocast, pick_device
from kt.errors import KtError
from kt.extract import predict, prepare
from kt.models import Classifier, ModelSpec, create_model
from kt.preprocess import normalize, resize_uint8
from kt.registry import Registry, get_registry
from kt.schema import default, defaults
from kt.strategies import Outputs, Strategy

log = logging.getLogger("kt")


_DEFAULTS = defaults("transfer")


@dataclass
class TransferSettings:
    """The config's ``transfer`` keys and ``device``, defaults from the schema (the paper's SGD:
    momentum 0.9, weight decay 1e-4, lr 1e-4 x batch/256)."""

    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    lr: float | None = _DEFAULTS["lr"]
    momentum: float = _DEFAULTS["momentum"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    augment: str = _DEFAULTS["augment"]
    seed: int = _DEFAULTS["seeds"][0]  # one of transfer.seeds: each seed is its own run
    eval_every: int = _DEFAULTS["eval_every"]
    cache_views: int = _DEFAULTS["cache_views"]
    device: str = default("device")
    eval_batch_size: int = 512
    options: dict[str, Any] = field(default_factory=dict)

    def learning_rate(self, strategy: Strategy) -> float:
        """Strategy's own lr (e.g. XE-KL+MCL's 1e-2), else the setting, else 1e-4 x batch / 256."""
        return strategy.lr or self.lr or 1e-4 * self.batch_size / 256

    def digest(self) -> str:
        skip = {"device", "eval_batch_size"}
        return hashlib.sha256(json.dumps({k: v for k, v in asdict(self).items() if k not in skip},
                                         sort_keys=True).encode()).hexdigest()[:16]


def make_strategy(name: str, options: dict[str, Any], registry: Registry) -> Strategy:
    factory = registry.get("strategies", name)
    try:
        return factory(**options)
    except TypeError as e:
        raise KtError(f"strategy {name!r} does not accept options {sorted(options)} "
                      f"(config key transfer.options.{name}): {e}.") from None


def view_for(model: Classifier, images: torch.Tensor) -> torch.Tensor:
    """The student-resolution view, resized for a model of another input size, normalised for it."""
    prep = model.preprocess
    if images.shape[-1] != prep.size:
        images = resize_uint8(images, prep.size, 1.0, prep.interpolation)
    return normalize(images, prep)


class FrozenLogits:
    """Logits of the frozen models (teachers, initial student) for a batch: computed online, or read
    from the frozen-output cache built by :func:`build_cache` (single teacher only)."""

    def __init__(self, teachers: list[Classifier], initial: Classifier | None, device: torch.device,
                 cache: dict[str, torch.Tensor] | None = None) -> None:
        self.teachers, self.initial = teachers, initial
        self.device, self.cache = device, cache

    def _logits(self, model: Classifier, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device):
            return model(view_for(model, images)).float()

    def __call__(self, images: torch.Tensor, pos: torch.Tensor, view: int
                 ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(teachers' logits, initial student's logits or None)."""
        if self.cache is not None:
            initial = self.cache["initial"][view, pos].to(self.device) if self.initial is not None else None
            return [self.cache["teacher"][view, pos].to(self.device)] if self.teachers else [], initial
        initial = self._logits(self.initial, images) if self.initial is not None else None
        return [self._logits(t, images) for t in self.teachers], initial


def _frozen(model: Classifier | None) -> Classifier | None:
    if model is not None:
        model.eval().requires_grad_(False)
    return model


def eval_logits(model: Classifier, data: Split, settings: TransferSettings, device: torch.device) -> np.ndarray:
    """Eval-split logits (N, C) as float32."""
    was_training = model.training
    model.eval()
    out = np.empty((len(data), model.num_classes), dtype=np.float32)
    for pos, logits, _ in predict(model, data, settings.eval_batch_size, device):
        out[pos.numpy()] = logits.numpy()
    model.train(was_training)
    return out


def build_cache(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
                out: str | Path, registry: Registry | None = None) -> None:
    """Frozen-output cache: teacher and initial-student logits on ``cache_views`` seeded views of the
    transfer set, shared by every strategy of the pair. Safe for short schedules; long schedules
    overfit to the fixed views (see README)."""
    registry = registry or get_registry()
    views = settings.cache_views
    if views < 1:
        raise KtError("transfer.cache_views must be >= 1 to build a frozen-output cache.")
    train = load_split(dataset, "train", registry)
    dev = pick_device(settings.device)
    models = {"teacher": prepare(create_model(teacher, train.classes, registry), dev),
              "initial": prepare(create_model(student, train.classes, registry), dev)}
    size = models["initial"].preprocess
    with atomic_path(out) as tmp, open_h5(tmp, "w") as f:
        arrays = {k: f.create_dataset(k, shape=(views, len(train), m.num_classes), dtype=np.float32)
                  for k, m in models.items()}
        for view in range(views):
            plan = AugmentPlan.make(settings.augment, len(train), settings.seed * 1000 + view)
            for images, _labels, pos in tqdm(train.batches(size, settings.eval_batch_size),
                                             desc=f"cache view {view}", mininterval=5):
                images = plan.apply(images, pos).to(dev)
                with torch.inference_mode(), autocast(dev):
                    for name, model in models.items():
                        arrays[name][view, pos.numpy()] = model(view_for(model, images)).float().cpu().numpy()
        set_attrs(f, {"kind": "frozen_cache", "teacher": teacher.slug, "student": student.slug,
                      "views": views, "augment": settings.augment, "seed": settings.seed,
                      "dataset_fingerprint": train.fingerprint()})


def load_cache(path: str | Path, teacher: ModelSpec, student: ModelSpec, train: Split,
               settings: TransferSettings) -> dict[str, torch.Tensor]:
    with open_h5(path) as f:
        attrs = dict(f.attrs)
        expected = {"teacher": teacher.slug, "student": student.slug, "views": settings.cache_views,
                    "augment": settings.augment, "seed": settings.seed, "dataset_fingerprint": train.fingerprint()}
        wrong = {k: (attrs.get(k), v) for k, v in expected.items() if attrs.get(k) != v}
        if wrong:
            raise KtError(f"frozen-output cache {path} does not match this transfer ({wrong}); delete it so "
                          "the workflow rebuilds it.")
        return {k: torch.from_numpy(f[k][:]) for k in ("teacher", "initial")}


def initial_eval(model: Classifier, data: Split, settings: TransferSettings, device: torch.device,
                 extracted: str | Path | None) -> np.ndarray:
    """The student's eval logits before transfer: read from its extraction file when one is given
    (the same model on the same samples: no need to run it again), else computed."""
    if extracted is None:
        return eval_logits(model, data, settings, device)
    known = read_logits(extracted)
    check_model(known, model.spec.slug, "student")
    check_same_samples(known, data, "rerun the student's extraction with the same dataset config.")
    if known.logits.shape[1] != model.num_classes:
        raise KtError(f"{extracted} holds {known.logits.shape[1]} classes, the student predicts "
                      f"{model.num_classes}; rerun its extraction.")
    return known.logits


def as_teachers(teacher: ModelSpec | Sequence[ModelSpec] | None) -> list[ModelSpec]:
    if teacher is None:
        return []
    return [teacher] if isinstance(teacher, ModelSpec) else list(teacher)


def transfer(teacher: ModelSpec | Sequence[ModelSpec] | None, student: ModelSpec, strategy_name: str,
             dataset: dict[str, Any], out_dir: str | Path, settings: TransferSettings | None = None,
             cache: str | Path | None = None, registry: Registry | None = None, before: str | Path | None = None,
             extra_config: dict[str, Any] | None = None) -> pl.DataFrame:
    """Train ``student`` from ``teacher`` with a strategy; write the run folder; return per-epoch metrics.

    ``teacher``: one spec, or several for a strategy with ``multi_teacher`` (parallel transfer: every
    teacher runs on each batch). ``before``: the student's extracted eval logits, reused as the
    before-transfer evaluation. ``extra_config``: extra entries for config.json; its ``group`` names the
    teachers in the metrics' teacher column.

    Folder: ``student.pth`` (weights evaluated), ``eval_before.h5``/``eval_after.h5`` (logits layout),
    ``metrics.parquet`` (per epoch), ``config.json`` (written last: the run is complete); ``state.pt``
    (resume point) while running.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        return _transfer(as_teachers(teacher), student, strategy_name, dataset, Path(out_dir),
                         settings or TransferSettings(), cache, registry or get_registry(), before, extra_config or {})
    finally:  # deterministic mode (on CPU) is for this run only
        torch.use_deterministic_algorithms(previous)


@dataclass
class _Run:
    """What one transfer run trains with, built once by :func:`_set_up`."""

    pair: str  # "teacher(s) -> student [strategy]", for messages
    strategy: Strategy
    settings: TransferSettings
    device: torch.device
    train: Split
    evald: Split
    labels: torch.Tensor  # the transfer set's labels, indexed by position
    model: Classifier
    frozen: FrozenLogits
    opt: torch.optim.Optimizer
    lr: float
    cached: bool


def _set_up(teachers: list[ModelSpec], student: ModelSpec, strategy_name: str, dataset: dict[str, Any],
            settings: TransferSettings, cache: str | Path | None, registry: Registry) -> _Run:
    """Check the combination, then build data, models and optimiser (seeded: the same every time)."""
    strategy = make_strategy(strategy_name, settings.options, registry)
    names = "+".join(t.slug for t in teachers) or "-"
    pair = f"{names} -> {student.slug} [{strategy_name}]"
    if strategy.needs_teacher and not teachers:
        raise KtError(f"strategy {strategy_name!r} needs a teacher; give one.")
    if len(teachers) > 1 and not strategy.multi_teacher:
        raise KtError(f"strategy {strategy_name!r} learns from one teacher, {len(teachers)} were given ({names}); "
                      "parallel multi-teacher transfer needs a strategy that reads several (kl_dp, kl_dp_unsup).")
    if len(teachers) > 1 and cache:
        raise KtError("the frozen-output cache holds one teacher; run multi-teacher transfer without --cache.")
    check_augment(settings.augment, open_dataset(dataset, registry), "transfer.augment")
    torch.manual_seed(settings.seed)
    dev = pick_device(settings.device)
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)
    train, evald = load_split(dataset, "train", registry), load_split(dataset, "eval", registry)
    model = prepare(create_model(student, train.classes, registry), dev)
    initial = _frozen(copy.deepcopy(model)) if strategy.needs_initial else None
    teach = [_frozen(prepare(create_model(t, train.classes, registry), dev))
             for t in (teachers if strategy.needs_teacher else [])]
    cached = load_cache(cache, teachers[0], student, train, settings) if cache else None
    lr = settings.learning_rate(strategy)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return _Run(pair, strategy, settings, dev, train, evald, torch.as_tensor(train.labels), model,
                FrozenLogits(teach, initial, dev, cached), opt, lr, cached is not None)


def _resume_or_evaluate_before(run: _Run, state_path: Path, out: Path, student: ModelSpec, dataset: dict[str, Any],
                               before: str | Path | None) -> tuple[list[dict[str, Any]], int, int]:
    """(history, first epoch to train, steps so far): from ``state.pt`` when a killed run left one,
    else a fresh start whose epoch 0 is the student evaluated before transfer (``eval_before.h5``)."""
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["digest"] != run.settings.digest() or state["pair"] != run.pair:
            raise KtError(f"{state_path} was written with other settings; delete it to restart {run.pair}.")
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        run.strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng"])
        log.info("resuming %s from epoch %d", run.pair, state["epoch"])
        return state["history"], state["epoch"], state["step"]
    logits = initial_eval(run.model, run.evald, run.settings, run.device, before)
    attrs = logits_attrs(student, run.model, run.evald, dataset, logits)
    write_logits(out / "eval_before.h5", logits, run.evald, attrs)
    return [epoch_row(0, 0, [], [], 0.0, logits, run.evald)], 0, 0


def _train_epoch(run: _Run, epoch: int, step: int) -> tuple[list[float], list[float], int]:
    """One pass over the transfer set in a seeded order and on the epoch's seeded view: (losses,
    shares of samples taught by a teacher, steps so far)."""
    settings, model, strategy = run.settings, run.model, run.strategy
    gen = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
    order = torch.randperm(len(run.train), generator=gen).numpy()
    view = epoch % settings.cache_views if run.cached else epoch
    plan = AugmentPlan.make(settings.augment, len(run.train), settings.seed * 1000 + view)
    model.train()
    losses, shares = [], []
    for images, _labels, pos in tqdm(run.train.batches(model.preprocess, settings.batch_size, positions=order),
                                     desc=f"{run.pair} epoch {epoch + 1}", mininterval=5,
                                     total=-(-len(run.train) // settings.batch_size)):
        images = plan.apply(images, pos).to(run.device, non_blocking=True)
        teacher_logits, initial_logits = run.frozen(images, pos, view)
        outputs = Outputs(student=None, teachers=teacher_logits, initial=initial_logits,
                          labels=run.labels[pos].to(run.device))
        with autocast(run.device):
            outputs.student = model(view_for(model, images))
        loss = strategy.loss(outputs)
        if not torch.isfinite(loss):
            raise KtError(f"non-finite loss ({loss.item()}) in {run.pair} at epoch {epoch + 1}, step {step + 1}; "
                          f"lower the learning rate (now {run.lr:g}) or check the models' logits.")
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        step += 1
        strategy.after_step(model, step)
        losses.append(loss.item())
        if strategy.last_mask is not None:
            shares.append(float(strategy.last_mask.float().mean()))
    return losses, shares, step


def _transfer(teachers: list[ModelSpec], student: ModelSpec, strategy_name: str, dataset: dict[str, Any],
              out: Path, settings: TransferSettings, cache: str | Path | None, registry: Registry,
              before: str | Path | None, extra_config: dict[str, Any]) -> pl.DataFrame:
    run = _set_up(teachers, student, strategy_name, dataset, settings, cache, registry)
    out.mkdir(parents=True, exist_ok=True)
    config = {"teacher": teachers[0].to_dict() if len(teachers) == 1 else None,
              "teachers": [t.to_dict() for t in teachers], "student": student.to_dict(),
              "strategy": strategy_name, "settings": asdict(settings), "lr": run.lr, "dataset": dataset,
              "cache": str(cache) if cache else None, "digest": settings.digest()} | extra_config
    state_path = out / "state.pt"
    history, start_epoch, step = _resume_or_evaluate_before(run, state_path, out, student, dataset, before)
    run.strategy.setup(run.model)
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.perf_counter()
        losses, shares, step = _train_epoch(run, epoch, step)
        logits = None
        if settings.eval_every and ((epoch + 1) % settings.eval_every == 0) and epoch + 1 < settings.epochs:
            logits = eval_logits(run.strategy.eval_model(run.model), run.evald, settings, run.device)
        history.append(epoch_row(epoch + 1, step, losses, shares, time.perf_counter() - t0, logits, run.evald))
        evaluated = history[-1]["eval_accuracy"]
        log.info("%s epoch %d: loss %.4f%s", run.pair, epoch + 1, history[-1]["train_loss"],
                 "" if evaluated is None else f", eval {evaluated:.2f} %")
        save_state(state_path, {"digest": settings.digest(), "pair": run.pair, "model": run.model.state_dict(),
                                "optimizer": run.opt.state_dict(), "strategy": run.strategy.state_dict(),
                                "rng": torch.get_rng_state(), "history": history, "epoch": epoch + 1, "step": step})

    final = run.strategy.eval_model(run.model)
    after = eval_logits(final, run.evald, settings, run.device)
    history[-1]["eval_accuracy"] = accuracy(after, run.evald)
    log.info("%s: eval %.2f %% after transfer (%.2f %% before)", run.pair, history[-1]["eval_accuracy"],
             history[0]["eval_accuracy"])
    names = "+".join(t.slug for t in teachers)
    label = extra_config.get("group", names if teachers else None)
    metrics = epoch_table(history).with_columns(pl.lit(strategy_name).alias("strategy"),
                                                 pl.lit(label).alias("teacher"), pl.lit(student.slug).alias("student"))
    write_run(out, final, student, after, run.evald, dataset, config, metrics)
    state_path.unlink(missing_ok=True)
    return metrics


def accuracy(logits: np.ndarray, data: Split) -> float:
    return float((logits.argmax(1) == data.labels).mean() * 100)


# metrics.parquet, one row per epoch (epoch 0: before training); null where a value does not exist
EPOCH_COLUMNS = {
    "epoch": pl.Int64,            # epochs finished (0: the initial student)
    "step": pl.Int64,             # optimiser steps so far
    "train_loss": pl.Float64,     # mean strategy loss over the epoch's steps (null at epoch 0)
    "teacher_share": pl.Float64,  # share of samples whose target was a teacher (strategies that
                                  # partition: kl_dp, kl_dp_unsup; null for the others)
    "eval_accuracy": pl.Float64,  # top-1 % on the eval split (null on epochs not evaluated: eval_every)
    "seconds": pl.Float64,        # wall time of the epoch
}


def epoch_row(epoch: int, step: int, losses: list[float], shares: list[float], seconds: float,
              logits: np.ndarray | None, evald: Split) -> dict[str, Any]:
    """One row of metrics.parquet (see :data:`EPOCH_COLUMNS`)."""
    return {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)) if losses else None,
            "teacher_share": float(np.mean(shares)) if shares else None,
            "eval_accuracy": accuracy(logits, evald) if logits is not None else None, "seconds": seconds}


def epoch_table(history: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(history, schema=EPOCH_COLUMNS)


def write_run(out: Path, final: Classifier, student: ModelSpec, after: np.ndarray, evald: Split,
              dataset: dict[str, Any], config: dict[str, Any], metrics: pl.DataFrame) -> None:
    """The run folder's results, each written atomically; config.json last marks the run complete."""
    write_logits(out / "eval_after.h5", after, evald, logits_attrs(student, final, evald, dataset, after)
                 | {"transfer": json.dumps(config)})
    with atomic_path(out / "student.pth") as tmp:
        torch.save(final.body.state_dict(), tmp)
    write_record(out, config, metrics)


def write_record(out: Path, config: dict[str, Any], metrics: pl.DataFrame) -> None:
    """``metrics.parquet``, then ``config.json``, whose presence marks the run folder complete."""
    write_table(metrics, out / "metrics.parquet")
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))


def save_state(path: Path, state: dict[str, Any]) -> None:
    """The resume point, written atomically once per epoch."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
