"""The one training loop for (teacher, student, strategy): set-up, evaluation before transfer or resume,
the epochs, and the run folder's results.

Every model sees the same augmented view (:mod:`kt.transfer.views`). Nothing in the step waits for
the device: losses stay on it and are checked for non-finite values every :data:`CHECK_EVERY` steps, and
read for a step row of ``metrics.parquet`` (and the trackers, :mod:`kt.trackers`) every
``transfer.log_every`` steps.
"""

from __future__ import annotations

import copy
import functools
import logging
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
import torch
from tqdm import tqdm

from kt.artifacts import atomic_path, logits_attrs, top1, write_logits
from kt.augment import pass_seed
from kt.data import Loader, Split, check_augment, load_split, open_dataset
from kt.device import BatchBackoff, autocast, find_batch_size, grad_scaler, pick_device
from kt.errors import KtError
from kt.extract import prepare
from kt.facts import code_record
from kt.models import Classifier, ModelSpec, create_model
from kt.registry import Registry, get_registry
from kt.settings import TransferSettings
from kt.strategies import Context, Outputs, Strategy, as_loss, make_strategy
from kt.trackers import Tracking, check_trackers, run_name
from kt.transfer.cache import FrozenLogits, load_cache
from kt.transfer.evaluation import eval_logits, initial_eval, write_run
from kt.transfer.features import FeatureTap
from kt.transfer.rows import EPOCH, Window, epoch_row, metrics_table, step_row
from kt.transfer.run_folder import RunFolder
from kt.transfer.views import reference_models, view_for

log = logging.getLogger("kt")


def as_teachers(teacher: ModelSpec | Sequence[ModelSpec] | None) -> list[ModelSpec]:
    """``transfer``'s teacher argument as a list: none, one, or a parallel group."""
    if teacher is None:
        return []
    return [teacher] if isinstance(teacher, ModelSpec) else list(teacher)


def transfer(teacher: ModelSpec | Sequence[ModelSpec] | None, student: ModelSpec, strategy_name: str,
             dataset: dict[str, Any], out_dir: str | Path, settings: TransferSettings | None = None,
             cache: str | Path | None = None, registry: Registry | None = None, before: str | Path | None = None,
             extra_config: dict[str, Any] | None = None) -> pl.DataFrame:
    """Train ``student`` from ``teacher`` with a strategy; write the run folder; return its metrics rows
    (epoch rows, and step rows every ``settings.log_every`` steps: :mod:`kt.transfer.rows`).

    ``teacher``: one spec, or several for a strategy with ``multi_teacher`` (parallel transfer: every
    teacher runs on each batch). ``before``: the student's extracted eval logits, reused as the
    before-transfer evaluation. ``extra_config``: extra entries for config.json; its ``group`` names the
    teachers in the metrics' teacher column. The folder's files: :class:`~kt.transfer.run_folder.RunFolder`.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        return _transfer(as_teachers(teacher), student, strategy_name, dataset, RunFolder(out_dir),
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
    loader: Loader  # the transfer set at the student's size, augmented
    model: Classifier
    frozen: FrozenLogits
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # loss scaling for fp16 autocast; a no-op otherwise
    lr: float
    cached: bool
    digest: str  # of the settings as configured (before an automatic batch size): what state.pt must match
    backoff: BatchBackoff  # the training step's parts: whole batches until an out-of-memory halves them
    strategy_origin: str = ""  # "strategy 'NAME' (where it comes from)", for messages
    student: FeatureTap | None = None  # the student with the features the strategy reads
    teachers: list[FeatureTap] = field(default_factory=list)  # teachers run in the step (not by ``frozen``)
    owned: torch.nn.ModuleDict = field(default_factory=torch.nn.ModuleDict)  # the strategy's modules
    teacher_opt: torch.optim.Optimizer | None = None  # for a strategy that trains the teachers

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt] if self.teacher_opt is None else [self.opt, self.teacher_opt]

    @property
    def trained(self) -> list[Classifier]:
        """The teachers that learn with the student (``Strategy.trains_teacher``)."""
        return [tap.model for tap in self.teachers] if self.strategy.trains_teacher else []


def _frozen(model: Classifier | None) -> Classifier | None:
    if model is not None:
        model.eval().requires_grad_(False)
    return model


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
    if cache and not strategy.cacheable:
        log.info("%s: the frozen-output cache is not used: %s", pair, "the strategy trains the teacher"
                 if strategy.trains_teacher else f"the strategy reads features {list(strategy.features)}")
        cache = None
    check_augment(settings.augment, open_dataset(dataset, registry), "transfer.augment")
    torch.manual_seed(settings.seed)
    dev = pick_device(settings.device)
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    train, evald = load_split(dataset, "train", registry), load_split(dataset, "eval", registry)
    model = prepare(create_model(student, train.classes, registry), dev)
    initial = _frozen(copy.deepcopy(model)) if strategy.needs_initial else None
    teach = [prepare(create_model(t, train.classes, registry), dev)
             for t in (teachers if strategy.needs_teacher else [])]
    teach = [t.requires_grad_(True) if strategy.trains_teacher else _frozen(t) for t in teach]
    cached = load_cache(cache, teachers[0], student, train, settings) if cache else None
    digest = settings.digest()
    if settings.auto_batch_size and dev.type == "cuda":
        learners = [model, *teach] if strategy.trains_teacher else [model]
        frozen = [] if cached else [m for m in (*teach, initial) if m is not None and m not in learners]
        found = find_batch_size(lambda size: _probe_step(learners, frozen, size, dev), settings.batch_size)
        log.info("%s: batch size %d (the largest power-of-two multiple of %d that fits)", pair, found,
                 settings.batch_size)
        settings = replace(settings, batch_size=found)
    where = f"strategy {strategy_name!r}"
    student_tap = FeatureTap(model, strategy.features, where)
    online = [FeatureTap(t, strategy.features, where) for t in teach] if not strategy.cacheable else []
    owned = _build_owned(strategy, train, student_tap, online, dev)
    lr = settings.learning_rate(strategy)
    opt = _sgd([*model.parameters(), *owned.parameters()], lr, settings)
    teacher_opt = (_sgd([p for t in teach for p in t.parameters()], strategy.teacher_lr or lr, settings)
                   if strategy.trains_teacher else None)
    loader = Loader(train, model.preprocess, settings.batch_size, settings.workers, settings.augment, dev,
                    reference_models(settings, [model] if cached else [model, *teach]))
    if train.decodes and not settings.workers:
        log.warning("%s: transfer.workers is 0, so images are decoded in the training process; set it to the "
                    "job's spare cores (4-8 per GPU, README 'Image folders at scale')", pair)
    frozen = FrozenLogits([] if online else teach, initial, dev, cached)
    return _Run(pair, strategy, settings, dev, train, evald, loader, model, frozen, opt, grad_scaler(dev), lr,
                cached is not None, digest, BatchBackoff(settings.batch_size, pair),
                strategy_origin=registry.who("strategies", strategy_name), student=student_tap, teachers=online,
                owned=owned, teacher_opt=teacher_opt)


def _sgd(params: list[torch.nn.Parameter], lr: float, settings: TransferSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def _build_owned(strategy: Strategy, train: Split, student: FeatureTap, teachers: list[FeatureTap],
                 device: torch.device) -> torch.nn.ModuleDict:
    """The strategy's own modules (:meth:`Strategy.build`), sized from the declared features, on ``device``."""
    dims = {"student": student.dims(student.model.preprocess.size, device)} if strategy.features else {}
    if strategy.features and teachers:
        dims["teacher"] = teachers[0].dims(teachers[0].model.preprocess.size, device)
    labels = torch.as_tensor(train.labels, dtype=torch.long)
    context = Context(len(train), student.model.num_classes, labels, dims)
    return torch.nn.ModuleDict(strategy.build(context)).to(device)


def _probe_step(learners: list[Classifier], frozen: list[Classifier], size: int, device: torch.device) -> None:
    """A training step's memory at batch ``size`` (frozen forwards, the learners' forwards and one
    backward: the student's, and the teachers' where they train) on random images, leaving the
    learners as they were (weights, batch-norm statistics)."""
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in learners]
    side = learners[0].preprocess.size
    images = torch.randint(0, 256, (size, 3, side, side), dtype=torch.uint8, device=device)
    try:
        with torch.no_grad(), autocast(device):
            for m in frozen:
                m(view_for(m, images))
        with autocast(device):
            sum(m(view_for(m, images)).float().logsumexp(1).mean() for m in learners).backward()
    finally:
        for m, state in zip(learners, states, strict=True):
            m.zero_grad(set_to_none=True)
            m.load_state_dict(state)


def _resume_or_evaluate_before(run: _Run, folder: RunFolder, student: ModelSpec, dataset: dict[str, Any],
                               before: str | Path | None) -> tuple[list[dict[str, Any]], int, int]:
    """(history, first epoch to train, steps so far): from ``state.pt`` when a killed run left one,
    else a fresh start whose epoch 0 is the student evaluated before transfer (``eval_before.h5``)."""
    state = folder.load_state()
    if state is not None:
        if state["digest"] != run.digest or state["pair"] != run.pair:
            raise KtError(f"{folder.state} was written with other settings; delete it to restart {run.pair}.")
        _restore(run, state)
        log.info("resuming %s from epoch %d", run.pair, state["epoch"])
        return state["history"], state["epoch"], state["step"]
    logits = initial_eval(run.model, run.evald, run.settings, run.device, before)
    write_logits(folder.before, logits, run.evald, logits_attrs(student, run.model, run.evald, dataset, logits))
    row = epoch_row(0, 0, None, None, 0.0, logits, run.evald)
    for teacher in run.trained:  # the reverse direction's "before": each trained teacher as it came
        logits = eval_logits(teacher, run.evald, run.settings, run.device)
        write_logits(folder.trained(teacher.spec.slug).before, logits, run.evald,
                     logits_attrs(teacher.spec, teacher, run.evald, dataset, logits))
    return [row], 0, 0


def _state(run: _Run, history: list[dict[str, Any]], epoch: int, step: int) -> dict[str, Any]:
    """The resume point after ``epoch``: everything that changes while training, restored bit for bit."""
    return {"digest": run.digest, "pair": run.pair, "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
            "strategy": run.strategy.state_dict(), "modules": run.owned.state_dict(),
            "teachers": [t.state_dict() for t in run.trained],
            "teacher_optimizer": run.teacher_opt.state_dict() if run.teacher_opt else None,
            "rng": torch.get_rng_state(), "history": history, "epoch": epoch, "step": step}


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Load what :func:`_state` saved into a freshly set-up run."""
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.strategy.load_state_dict(state["strategy"])
    run.owned.load_state_dict(state.get("modules", {}))
    for teacher, weights in zip(run.trained, state.get("teachers", []), strict=True):
        teacher.load_state_dict(weights)
    if run.teacher_opt is not None:
        run.teacher_opt.load_state_dict(state["teacher_optimizer"])
    torch.set_rng_state(state["rng"])


CHECK_EVERY = 50  # steps between checks for a non-finite loss: the only time the loop waits for the device


def _train_epoch(run: _Run, epoch: int, step: int, emit: Callable[[dict[str, Any]], None] | None = None
                 ) -> tuple[dict[str, float | None], int]:
    """One pass over the transfer set in a seeded order and on the epoch's seeded view: (the epoch's
    :meth:`~kt.transfer.rows.Window.means`: loss, teacher share or None, loss terms, lr, images/s; steps
    so far). After every ``log_every`` steps of the epoch, ``emit`` gets a step row of those steps: read
    from the device there only, like the non-finite check (the epoch's last steps are in its row alone)."""
    settings, model, strategy = run.settings, run.model, run.strategy
    gen = torch.Generator().manual_seed(pass_seed(settings.seed, epoch))
    order = torch.randperm(len(run.train), generator=gen).numpy()
    view = epoch % settings.cache_views if run.cached else epoch
    for learner in (model, *run.trained):
        learner.train()
    window = _LossWindow(run, epoch, step)
    whole, recent = Window(), Window()  # the epoch; the steps since the last step row
    batches = run.loader.batches(order, pass_seed(settings.seed, view))
    per_epoch = -(-len(run.train) // settings.batch_size)
    for images, labels, pos in tqdm(batches, desc=f"{run.pair} epoch {epoch + 1}", mininterval=5, total=per_epoch):
        loss, share, terms = _backward(run, images, labels.to(run.device, non_blocking=True), pos, view)
        for opt in run.optimizers:
            run.scaler.step(opt)
        run.scaler.update()
        step += 1
        strategy.after_step(model, step)
        whole.add(loss, share, terms, len(pos))
        recent.add(loss, share, terms, len(pos))
        logs = emit is not None and settings.log_every and len(whole) % settings.log_every == 0
        if step % CHECK_EVERY == 0 or logs:
            window.check(whole.losses, step)  # before a row: a non-finite loss stops the run, never reaches a row
        if logs:
            emit(step_row(epoch + 1, step, epoch + len(whole) / per_epoch, recent.means(_lr(run))))
            recent = Window()
    window.check(whole.losses, step)
    return whole.means(_lr(run)), step


def _lr(run: _Run) -> float:
    return run.opt.param_groups[0]["lr"]


def _backward(run: _Run, images: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor, view: int
              ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Gradients of one batch: (loss, teacher share, loss terms), all on the device. On GPU out-of-memory the
    run's :class:`~kt.device.BatchBackoff` splits the batch into parts of half the size (for the rest
    of the run), their losses weighted by their share of the batch: the same gradient up to rounding,
    except that batch norm then normalises over each part."""

    def part(rows: slice) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        return _part_backward(run, images[rows], labels[rows], pos[rows], view, len(pos))

    def reset() -> None:  # the failed parts' gradients
        for opt in run.optimizers:
            opt.zero_grad(set_to_none=True)

    reset()
    try:
        parts = run.backoff.over(len(pos), part, reset)
    except torch.OutOfMemoryError:
        raise KtError(f"{run.pair}: out of GPU memory even for one image; use a smaller model, a GPU "
                      "with more memory, or the frozen-output cache (transfer.cache_views).") from None
    total = functools.reduce(operator.add, [loss for loss, _, _ in parts])
    counts = [count for _, count, _ in parts if count is not None]
    terms = {name: functools.reduce(operator.add, [t[name] for _, _, t in parts]) for name in parts[0][2]}
    return total, functools.reduce(operator.add, counts) / len(pos) if counts else None, terms


def _part_backward(run: _Run, images: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor, view: int,
                   batch: int) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Forwards and backward of a part of a batch of ``batch`` samples: (its weighted loss, the number
    of its samples taught by a teacher, or None when the strategy returns no teacher mask, its loss
    terms weighted like the loss)."""
    teacher_logits, initial_logits = run.frozen(images, pos, view)
    teacher_features = []
    with autocast(run.device):
        student, student_features = run.student(view_for(run.model, images))
        with torch.set_grad_enabled(run.strategy.trains_teacher):  # teachers run here: trained, or read for features
            for tap in run.teachers:
                logits, features = tap(view_for(tap.model, images))
                teacher_logits.append(logits.float())
                teacher_features.append(features)
    outputs = Outputs(student=student, teachers=teacher_logits, initial=initial_logits, labels=labels,
                      student_features=student_features, teacher_features=teacher_features, positions=pos)
    result = as_loss(run.strategy.loss(outputs), run.strategy)
    value, mask = result.value, result.teacher_mask
    weight = len(outputs.labels) / batch
    loss = value * weight
    run.scaler.scale(loss).backward()
    terms = {name: term.detach().float() * weight for name, term in (result.terms or {}).items()}
    return loss.detach(), None if mask is None else mask.float().sum(), terms


def _write_learned(run: _Run, folder: RunFolder, dataset: dict[str, Any]) -> None:
    """What the run trained besides the student: the strategy's modules (``strategy.pt``) and each
    trained teacher's weights and eval logits after transfer (``trained/{teacher}/``, a run folder of
    the reverse direction without its own record), all before ``config.json`` marks the run complete."""
    if len(run.owned):
        with atomic_path(folder.strategy_modules) as tmp:
            torch.save(run.owned.state_dict(), tmp)
    for teacher in run.trained:
        write_run(folder.trained(teacher.spec.slug), teacher, teacher.spec,
                  eval_logits(teacher, run.evald, run.settings, run.device), run.evald, dataset, None, None)


class _LossWindow:
    """Checks the losses of the steps since the last check, naming the first non-finite one."""

    def __init__(self, run: _Run, epoch: int, step: int) -> None:
        self.run, self.epoch, self.first, self.checked = run, epoch, step, 0

    def check(self, losses: list[torch.Tensor], step: int) -> None:
        recent = torch.stack(losses[self.checked:]) if len(losses) > self.checked else None
        self.checked = len(losses)
        if recent is None or bool(torch.isfinite(recent).all()):
            return
        at = int((~torch.isfinite(recent)).nonzero()[0])
        bad_step = step - len(recent) + at + 1
        where = (f"non-finite loss ({recent[at].item()}) in {self.run.pair} at epoch {self.epoch + 1}, "
                 f"step {bad_step}, from {self.run.strategy_origin or 'its strategy'}")
        if bad_step == 1:  # before the first optimiser step: the learning rate played no part
            raise KtError(f"{where}, on the untrained student: a bug in the strategy's loss (e.g. a log of 0, "
                          "a 0/0 or a mean over no samples), or non-finite logits from one of the models.")
        if bad_step <= CHECK_EVERY:  # the run's first check window
            raise KtError(f"{where}, within the first {CHECK_EVERY} steps: most likely a bug in the strategy's "
                          "loss (e.g. a log of 0, a 0/0 or a mean over no samples on some batch); if the loss is "
                          f"sound, the learning rate (now {self.run.lr:g}) is far too high.")
        raise KtError(f"{where}: the run diverged; lower the learning rate (now {self.run.lr:g}: transfer.lr, or "
                      "the strategy's own lr option) or check the models' logits.")


def _tracking(run: _Run, folder: RunFolder, strategy_name: str, label: str | None, teachers: list[ModelSpec],
              student: ModelSpec, history: list[dict[str, Any]], step: int, registry: Registry) -> Tracking:
    """The run's trackers (``transfer.trackers``), started and handed the rows so far: the initial
    evaluation, or a resumed run's earlier rows, so that each tracker's record is whole (a finished last
    epoch's row waits for the final evaluation)."""
    settings = run.settings
    results = Path(settings.results) if settings.results else folder.path
    identity = {"name": run_name(folder.path, results), "folder": str(folder.path.resolve()),
                "results": str(results.resolve()), "pair": run.pair, "strategy": strategy_name, "teacher": label,
                "teachers": [t.slug for t in teachers], "student": student.slug, "seed": settings.seed,
                "start_step": step, "settings": asdict(settings)}
    done = [r for r in history if not (r.get("kind", EPOCH) == EPOCH and r["epoch"] == settings.epochs)]
    return Tracking.open(settings.trackers, registry, identity, done)


def _transfer(teachers: list[ModelSpec], student: ModelSpec, strategy_name: str, dataset: dict[str, Any],
              folder: RunFolder, settings: TransferSettings, cache: str | Path | None, registry: Registry,
              before: str | Path | None, extra_config: dict[str, Any]) -> pl.DataFrame:
    check_trackers(settings.trackers, registry, build=False)  # a misspelt tracker: before any work
    run = _set_up(teachers, student, strategy_name, dataset, settings, cache, registry)
    folder.path.mkdir(parents=True, exist_ok=True)
    config = {"teacher": teachers[0].to_dict() if len(teachers) == 1 else None,
              "teachers": [t.to_dict() for t in teachers], "student": student.to_dict(),
              "strategy": strategy_name, "settings": asdict(settings), "lr": run.lr, "dataset": dataset,
              "cache": str(cache) if cache else None, "digest": settings.digest(),
              "code": code_record(registry.code_table(), [m.source for m in (*teachers, student)], dataset["name"],
                                  [strategy_name])} | extra_config
    history, start_epoch, step = _resume_or_evaluate_before(run, folder, student, dataset, before)
    run.strategy.setup(run.model)
    config["batch_size"] = run.settings.batch_size  # the one found when auto_batch_size is on
    names = "+".join(t.slug for t in teachers)
    label = extra_config.get("group", names if teachers else None)
    tracking = _tracking(run, folder, strategy_name, label, teachers, student, history, step, registry)

    def record(row: dict[str, Any]) -> None:  # a step row: into the history (saved with state.pt) and out
        history.append(row)
        tracking.log(row)

    try:
        for epoch in range(start_epoch, settings.epochs):
            t0 = time.perf_counter()
            means, step = _train_epoch(run, epoch, step, record if settings.log_every else None)
            logits = None
            if settings.eval_every and ((epoch + 1) % settings.eval_every == 0) and epoch + 1 < settings.epochs:
                logits = eval_logits(run.strategy.eval_model(run.model), run.evald, settings, run.device)
            history.append(epoch_row(epoch + 1, step, means["train_loss"], means["teacher_share"],
                                     time.perf_counter() - t0, logits, run.evald, means))
            evaluated = history[-1]["eval_accuracy"]
            log.info("%s epoch %d: loss %.4f%s", run.pair, epoch + 1, history[-1]["train_loss"],
                     "" if evaluated is None else f", eval {evaluated:.2f} %")
            if epoch + 1 < settings.epochs:  # the last epoch's row goes out with the final evaluation
                tracking.log(history[-1])
            folder.save_state(_state(run, history, epoch + 1, step))

        if run.frozen.cache is not None:
            run.frozen.cache.close()
        final = run.strategy.eval_model(run.model)
        after = eval_logits(final, run.evald, settings, run.device)
        history[-1]["eval_accuracy"] = top1(after, run.evald.labels)
        tracking.log(history[-1])
    finally:  # also a failed run's trackers: its curves up to the failure (a divergence) are kept
        tracking.finish()
    log.info("%s: eval %.2f %% after transfer (%.2f %% before)", run.pair, history[-1]["eval_accuracy"],
             history[0]["eval_accuracy"])
    metrics = metrics_table(history).with_columns(pl.lit(strategy_name).alias("strategy"),
                                                 pl.lit(label).alias("teacher"), pl.lit(student.slug).alias("student"))
    _write_learned(run, folder, dataset)
    write_run(folder, final, student, after, run.evald, dataset, config, metrics)
    folder.clear_state()
    return metrics
