"""The one training loop for (teacher, student, strategy): transfer, evaluation before/after,
per-epoch metrics, resumable checkpoints, and the optional frozen-output cache.

Every model sees the same augmented view: images are decoded once at the student's resolution
(uint8) by a :class:`~kt.data.Loader` (its workers decode and apply sample augmentations; batch
augmentations run on the device), resized for a teacher of another input size, and normalised per
model with its own mean/std. Nothing in the step waits for the device: losses stay on it and are
checked for non-finite values every :data:`CHECK_EVERY` steps.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from kt.allocator import release
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
from kt.augment import pass_seed
from kt.data import Loader, Split, Views, check_augment, load_split, open_dataset
from kt.device import autocast, find_batch_size, grad_scaler, pick_device
from kt.errors import KtError
from kt.extract import predict, prepare
from kt.facts import code_record
from kt.models import Classifier, ModelSpec, create_model
from kt.preprocess import normalize, resize_uint8
from kt.registry import Registry, get_registry
from kt.settings import TransferSettings, make_strategy  # re-exported: the loop's settings
from kt.strategies import Outputs, Strategy

log = logging.getLogger("kt")


def view_for(model: Classifier, images: torch.Tensor | Views) -> torch.Tensor:
    """The model's own view where the loader made one (un-augmented reference views), else the
    student-resolution view, resized for a model of another input size; normalised for the model."""
    prep = model.preprocess
    if isinstance(images, Views):
        own = images.get(model.view_key)
        images = own if own is not None else images.primary
    if images.shape[-1] != prep.size:
        images = resize_uint8(images, prep.size, 1.0, prep.interpolation)
    x = normalize(images, prep)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x  # as the model (kt.extract.prepare)


class FrozenLogits:
    """Logits of the frozen models (teachers, initial student) for a batch: computed online, or read
    from the frozen-output cache built by :func:`build_cache` (single teacher only)."""

    def __init__(self, teachers: list[Classifier], initial: Classifier | None, device: torch.device,
                 cache: FrozenCache | None = None) -> None:
        self.teachers, self.initial = teachers, initial
        self.device, self.cache = device, cache

    def _logits(self, model: Classifier, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device):
            return model(view_for(model, images)).float()

    def __call__(self, images: torch.Tensor, pos: torch.Tensor, view: int
                 ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(teachers' logits, initial student's logits or None)."""
        if self.cache is not None:
            initial = self.cache.read("initial", view, pos, self.device) if self.initial is not None else None
            return [self.cache.read("teacher", view, pos, self.device)] if self.teachers else [], initial
        initial = self._logits(self.initial, images) if self.initial is not None else None
        return [self._logits(t, images) for t in self.teachers], initial


def _frozen(model: Classifier | None) -> Classifier | None:
    if model is not None:
        model.eval().requires_grad_(False)
    return model


def reference_models(settings: TransferSettings, models: list[Classifier]) -> list[Classifier] | None:
    """The models that see their own reference views of the transfer set: all of them on un-augmented
    passes with ``decode: reference`` (so a frozen-output cache holds what their extraction would);
    augmented passes share the student's view."""
    return models if settings.decode == "reference" and settings.augment == "none" else None


def eval_logits(model: Classifier, data: Split, settings: TransferSettings, device: torch.device) -> np.ndarray:
    """Eval-split logits (N, C) as float32. A phase of its own between training epochs: the free heap is
    handed back before and after it (:func:`kt.allocator.release`), so the two peaks do not add up."""
    was_training = model.training
    model.eval()
    release()
    out = np.empty((len(data), model.num_classes), dtype=np.float32)
    for pos, logits, _ in predict(model, data, settings.eval_batch_size, device, workers=settings.workers,
                                  decode=settings.decode):
        out[pos.numpy()] = logits.numpy()
    release()
    model.train(was_training)
    return out


CACHE_FLUSH_EVERY = 20  # batches between resume points of a cache build
COPY_ROWS = 8192  # rows per block when the partial arrays are copied into the HDF5 file (O(block) memory)
CACHE_NAMES = ("teacher", "initial")


def build_cache(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
                out: str | Path, registry: Registry | None = None) -> None:
    """Frozen-output cache: teacher and initial-student logits on ``cache_views`` seeded views of the
    transfer set, shared by every strategy of the pair (README: when it pays, and for how long a
    schedule fixed views are safe).

    The disk it needs is checked first. A killed build resumes from its last flushed batch: rows
    go to memory-mapped arrays in ``<out>.partial/`` (they survive SIGKILL) with a progress file,
    then into the HDF5 file, written atomically."""
    registry = registry or get_registry()
    if settings.cache_views < 1:
        raise KtError("transfer.cache_views must be >= 1 to build a frozen-output cache.")
    out = Path(out)
    train = load_split(dataset, "train", registry)
    dev = pick_device(settings.device)
    models = {"teacher": prepare(create_model(teacher, train.classes, registry), dev),
              "initial": prepare(create_model(student, train.classes, registry), dev)}
    attrs = cache_attrs(teacher, student, train, settings)
    shapes = {k: (settings.cache_views, len(train), m.num_classes) for k, m in models.items()}
    check_cache_space(out, shapes, settings, f"{teacher.slug} -> {student.slug}")
    partial = _PartialCache(out, attrs, shapes, settings.cache_dtype)
    loader = Loader(train, models["initial"].preprocess, settings.eval_batch_size, settings.workers,
                    settings.augment, dev, reference_models(settings, [models["initial"], models["teacher"]]))
    first_view, row = partial.resume_point()
    for view in range(first_view, settings.cache_views):
        positions = np.arange(row, len(train))
        batches = loader.batches(positions, pass_seed(settings.seed, view))
        for i, (images, _labels, pos) in enumerate(tqdm(batches, desc=f"cache view {view}", mininterval=5,
                                                        total=-(-len(positions) // settings.eval_batch_size))):
            with torch.inference_mode(), autocast(dev):
                for name, model in models.items():
                    partial.arrays[name][view, pos.numpy()] = model(view_for(model, images)).float().cpu().numpy()
            if (i + 1) % CACHE_FLUSH_EVERY == 0:
                partial.mark(view, int(pos[-1]) + 1)
        row = 0
        partial.mark(view + 1, 0)
    partial.finish()


def cache_attrs(teacher: ModelSpec, student: ModelSpec, train: Split, settings: TransferSettings) -> dict[str, Any]:
    """What a frozen-output cache was built from; a transfer refuses a cache whose attrs differ.
    Un-augmented views do not depend on the seed, so such a cache serves every seed (seed -1)."""
    seed = settings.seed if settings.augment != "none" else -1
    return {"kind": "frozen_cache", "teacher": teacher.slug, "student": student.slug,
            "views": settings.cache_views, "augment": settings.augment, "seed": seed,
            "dtype": settings.cache_dtype, "decode": settings.decode, "dataset_fingerprint": train.fingerprint()}


def check_cache_space(out: Path, shapes: dict[str, tuple[int, ...]], settings: TransferSettings, pair: str) -> None:
    """Refuse a build that would not fit the disk: the partial arrays and the HDF5 file coexist
    while the file is written, so twice the cache's size must be free."""
    size = sum(int(np.prod(shape)) for shape in shapes.values()) * np.dtype(settings.cache_dtype).itemsize
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if 2 * size > free:
        raise KtError(f"the frozen-output cache of {pair} needs {size / 1e9:.1f} GB ({shapes['teacher'][0]} views x "
                      f"{shapes['teacher'][1]} images x {shapes['teacher'][2]} classes x 2 models, "
                      f"{settings.cache_dtype}), twice that while it is written, but {out.parent} has "
                      f"{free / 1e9:.1f} GB free. Set transfer.cache_dtype: float16, fewer transfer.cache_views, "
                      "or transfer.cache_views: 0 (frozen models run online).")


class _PartialCache:
    """A cache build's resumable state: memory-mapped ``.npy`` arrays and ``progress.json``
    (attrs, next view and row), in ``<out>.partial/``."""

    def __init__(self, out: Path, attrs: dict[str, Any], shapes: dict[str, tuple[int, ...]], dtype: str) -> None:
        self.out, self.attrs, self.folder = out, attrs, out.with_name(out.name + ".partial")
        self.progress = self.folder / "progress.json"
        known = json.loads(self.progress.read_text()) if self.progress.exists() else None
        if known is None or known["attrs"] != attrs:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            known = None
        mode = "r+" if known else "w+"
        self.arrays = {k: np.lib.format.open_memmap(self.folder / f"{k}.npy", mode=mode, dtype=dtype, shape=shape)
                       for k, shape in shapes.items()}
        self.next = (known["view"], known["row"]) if known else (0, 0)
        if known:
            log.info("resuming the cache build of %s at view %d, row %d", out, *self.next)

    def resume_point(self) -> tuple[int, int]:
        return self.next

    def mark(self, view: int, row: int) -> None:
        """Rows before (view, row) are on disk: flush them, then record the resume point."""
        for array in self.arrays.values():
            array.flush()
        tmp = self.progress.with_suffix(".tmp")
        tmp.write_text(json.dumps({"attrs": self.attrs, "view": view, "row": row}))
        os.replace(tmp, self.progress)

    def finish(self) -> None:
        """The HDF5 cache, copied in blocks of rows (row-chunked for per-batch reads), then no partial."""
        with atomic_path(self.out) as tmp, open_h5(tmp, "w") as f:
            for name, array in self.arrays.items():
                views, n, classes = array.shape
                data = f.create_dataset(name, shape=array.shape, dtype=array.dtype, chunks=(1, min(n, 8), classes))
                for view in range(views):
                    for start in range(0, n, COPY_ROWS):
                        data[view, start:start + COPY_ROWS] = array[view, start:start + COPY_ROWS]
            set_attrs(f, self.attrs)
        self.arrays.clear()
        shutil.rmtree(self.folder)


class FrozenCache:
    """A frozen-output cache opened for reading: rows are read per batch, never the whole file."""

    def __init__(self, path: str | Path, expected: dict[str, Any]) -> None:
        self.path = path
        self.file = open_h5(path)
        self.data = {name: self.file[name] for name in CACHE_NAMES}
        attrs = dict(self.file.attrs)
        wrong = {k: (attrs.get(k), v) for k, v in expected.items() if attrs.get(k) != v}
        if wrong:
            self.file.close()
            raise KtError(f"frozen-output cache {path} does not match this transfer ({wrong}); delete it so "
                          "the workflow rebuilds it.")

    def read(self, name: str, view: int, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        """float32 logits of ``name`` on ``view`` for the samples at ``positions`` (any order)."""
        pos = positions.numpy()
        order = np.argsort(pos)  # HDF5 reads rows in increasing order
        rows = np.empty((len(pos), self.data[name].shape[2]), dtype=np.float32)
        rows[order] = self.data[name][view, pos[order]]
        return torch.from_numpy(rows).to(device, non_blocking=True)

    def close(self) -> None:
        self.file.close()


def load_cache(path: str | Path, teacher: ModelSpec, student: ModelSpec, train: Split,
               settings: TransferSettings) -> FrozenCache:
    return FrozenCache(path, cache_attrs(teacher, student, train, settings))


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
    loader: Loader  # the transfer set at the student's size, augmented
    model: Classifier
    frozen: FrozenLogits
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # loss scaling for fp16 autocast; a no-op otherwise
    lr: float
    cached: bool
    digest: str  # of the settings as configured (before an automatic batch size): what state.pt must match
    chunk: int | None = None  # micro-batch size after an out-of-memory back-off (None: whole batches)
    strategy_origin: str = ""  # "strategy 'NAME' (where it comes from)", for messages


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
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    train, evald = load_split(dataset, "train", registry), load_split(dataset, "eval", registry)
    model = prepare(create_model(student, train.classes, registry), dev)
    initial = _frozen(copy.deepcopy(model)) if strategy.needs_initial else None
    teach = [_frozen(prepare(create_model(t, train.classes, registry), dev))
             for t in (teachers if strategy.needs_teacher else [])]
    cached = load_cache(cache, teachers[0], student, train, settings) if cache else None
    digest = settings.digest()
    if settings.auto_batch_size and dev.type == "cuda":
        frozen = [] if cached else [m for m in (*teach, initial) if m is not None]
        found = find_batch_size(lambda size: _probe_step(model, frozen, size, dev), settings.batch_size)
        log.info("%s: batch size %d (the largest power-of-two multiple of %d that fits)", pair, found,
                 settings.batch_size)
        settings = replace(settings, batch_size=found)
    lr = settings.learning_rate(strategy)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    loader = Loader(train, model.preprocess, settings.batch_size, settings.workers, settings.augment, dev,
                    reference_models(settings, [model] if cached else [model, *teach]))
    if train.decodes and not settings.workers:
        log.warning("%s: transfer.workers is 0, so images are decoded in the training process; set it to the "
                    "job's spare cores (4-8 per GPU, README 'Image folders at scale')", pair)
    return _Run(pair, strategy, settings, dev, train, evald, loader, model, FrozenLogits(teach, initial, dev, cached),
                opt, grad_scaler(dev), lr, cached is not None, digest,
                strategy_origin=registry.who("strategies", strategy_name))


def _probe_step(model: Classifier, frozen: list[Classifier], size: int, device: torch.device) -> None:
    """A training step's memory at batch ``size`` (frozen forwards, the student's forward and
    backward) on random images, leaving the student as it was (weights, batch-norm statistics)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    side = model.preprocess.size
    images = torch.randint(0, 256, (size, 3, side, side), dtype=torch.uint8, device=device)
    try:
        with torch.no_grad(), autocast(device):
            for m in frozen:
                m(view_for(m, images))
        with autocast(device):
            model(view_for(model, images)).float().logsumexp(1).mean().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)


def _resume_or_evaluate_before(run: _Run, state_path: Path, out: Path, student: ModelSpec, dataset: dict[str, Any],
                               before: str | Path | None) -> tuple[list[dict[str, Any]], int, int]:
    """(history, first epoch to train, steps so far): from ``state.pt`` when a killed run left one,
    else a fresh start whose epoch 0 is the student evaluated before transfer (``eval_before.h5``)."""
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["digest"] != run.digest or state["pair"] != run.pair:
            raise KtError(f"{state_path} was written with other settings; delete it to restart {run.pair}.")
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        run.strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng"])
        log.info("resuming %s from epoch %d", run.pair, state["epoch"])
        return state["history"], state["epoch"], state["step"]
    logits = initial_eval(run.model, run.evald, run.settings, run.device, before)
    attrs = logits_attrs(student, run.model, run.evald, dataset, logits)
    write_logits(out / "eval_before.h5", logits, run.evald, attrs)
    return [epoch_row(0, 0, None, None, 0.0, logits, run.evald)], 0, 0


CHECK_EVERY = 50  # steps between checks for a non-finite loss: the only time the loop waits for the device


def _train_epoch(run: _Run, epoch: int, step: int) -> tuple[float, float | None, int]:
    """One pass over the transfer set in a seeded order and on the epoch's seeded view: (mean loss,
    mean share of samples taught by a teacher or None, steps so far)."""
    settings, model, strategy = run.settings, run.model, run.strategy
    gen = torch.Generator().manual_seed(pass_seed(settings.seed, epoch))
    order = torch.randperm(len(run.train), generator=gen).numpy()
    view = epoch % settings.cache_views if run.cached else epoch
    model.train()
    losses, shares, window = [], [], _LossWindow(run, epoch, step)
    batches = run.loader.batches(order, pass_seed(settings.seed, view))
    for images, labels, pos in tqdm(batches, desc=f"{run.pair} epoch {epoch + 1}", mininterval=5,
                                    total=-(-len(run.train) // settings.batch_size)):
        loss, share = _backward(run, images, labels.to(run.device, non_blocking=True), pos, view)
        run.scaler.step(run.opt)
        run.scaler.update()
        step += 1
        strategy.after_step(model, step)
        losses.append(loss)
        if share is not None:
            shares.append(share)
        if step % CHECK_EVERY == 0:
            window.check(losses, step)
    window.check(losses, step)
    mean_loss = torch.stack(losses).double().mean().item()
    return mean_loss, torch.stack(shares).double().mean().item() if shares else None, step


def _backward(run: _Run, images: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor, view: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of one batch: (loss, teacher share), both on the device. On GPU out-of-memory the
    batch is split into micro-batches of half the size (for the rest of the run), their losses
    weighted by their share of the batch: the same gradient up to rounding, except that batch norm
    then normalises over each micro-batch."""
    while True:
        run.opt.zero_grad(set_to_none=True)
        try:
            return _accumulate(run, images, labels, pos, view)
        except torch.OutOfMemoryError:
            size = run.chunk or len(pos)
            if size == 1:
                raise KtError(f"{run.pair}: out of GPU memory even for one image; use a smaller model, a GPU "
                              "with more memory, or the frozen-output cache (transfer.cache_views).") from None
            run.chunk = size // 2
            run.opt.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("%s: out of memory at batch %d; continuing in micro-batches of %d", run.pair, size, run.chunk)


def _accumulate(run: _Run, images: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor, view: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    total, taught, size = None, None, run.chunk or len(pos)
    for start in range(0, len(pos), size):
        part = slice(start, start + size)
        teacher_logits, initial_logits = run.frozen(images[part], pos[part], view)
        outputs = Outputs(student=None, teachers=teacher_logits, initial=initial_logits, labels=labels[part])
        with autocast(run.device):
            outputs.student = run.model(view_for(run.model, images[part]))
        loss = run.strategy.loss(outputs) * (len(outputs.labels) / len(pos))
        run.scaler.scale(loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
        if run.strategy.last_mask is not None:
            count = run.strategy.last_mask.float().sum()
            taught = count if taught is None else taught + count
    return total, None if taught is None else taught / len(pos)


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


def _transfer(teachers: list[ModelSpec], student: ModelSpec, strategy_name: str, dataset: dict[str, Any],
              out: Path, settings: TransferSettings, cache: str | Path | None, registry: Registry,
              before: str | Path | None, extra_config: dict[str, Any]) -> pl.DataFrame:
    run = _set_up(teachers, student, strategy_name, dataset, settings, cache, registry)
    out.mkdir(parents=True, exist_ok=True)
    config = {"teacher": teachers[0].to_dict() if len(teachers) == 1 else None,
              "teachers": [t.to_dict() for t in teachers], "student": student.to_dict(),
              "strategy": strategy_name, "settings": asdict(settings), "lr": run.lr, "dataset": dataset,
              "cache": str(cache) if cache else None, "digest": settings.digest(),
              "code": code_record(registry.code_table(), [m.source for m in (*teachers, student)], dataset["name"],
                                  [strategy_name])} | extra_config
    state_path = out / "state.pt"
    history, start_epoch, step = _resume_or_evaluate_before(run, state_path, out, student, dataset, before)
    run.strategy.setup(run.model)
    config["batch_size"] = run.settings.batch_size  # the one found when auto_batch_size is on
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.perf_counter()
        loss, share, step = _train_epoch(run, epoch, step)
        logits = None
        if settings.eval_every and ((epoch + 1) % settings.eval_every == 0) and epoch + 1 < settings.epochs:
            logits = eval_logits(run.strategy.eval_model(run.model), run.evald, settings, run.device)
        history.append(epoch_row(epoch + 1, step, loss, share, time.perf_counter() - t0, logits, run.evald))
        evaluated = history[-1]["eval_accuracy"]
        log.info("%s epoch %d: loss %.4f%s", run.pair, epoch + 1, history[-1]["train_loss"],
                 "" if evaluated is None else f", eval {evaluated:.2f} %")
        save_state(state_path, {"digest": settings.digest(), "pair": run.pair, "model": run.model.state_dict(),
                                "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
                                "strategy": run.strategy.state_dict(),
                                "rng": torch.get_rng_state(), "history": history, "epoch": epoch + 1, "step": step})

    if run.frozen.cache is not None:
        run.frozen.cache.close()
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


def epoch_row(epoch: int, step: int, loss: float | None, share: float | None, seconds: float,
              logits: np.ndarray | None, evald: Split) -> dict[str, Any]:
    """One row of metrics.parquet (see :data:`EPOCH_COLUMNS`)."""
    return {"epoch": epoch, "step": step, "train_loss": loss, "teacher_share": share,
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
