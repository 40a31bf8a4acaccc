"""Experiment trackers: each row of a run's ``metrics.parquet`` also goes, as it is made, to the trackers
named in ``transfer.trackers`` (TensorBoard, MLflow, W&B, or a plugin's), so a person can watch a run
train and compare runs in the tool they already use.

A tracker is registered by name through the ``register_trackers`` hook (:mod:`kt.hookspecs`) as a
factory taking its options as keywords, like a strategy. :class:`Tracking` is what the training loop
talks to: it starts every configured tracker, hands each row to all of them, and when one raises it
logs one warning naming the tracker and the error, switches that tracker off and lets the run go on.
Curves are worth less than the run that makes them.

Trackers never change a result: ``transfer.trackers`` and ``transfer.log_every`` are left out of the
settings' digest (:meth:`kt.settings.TransferSettings.digest`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kt.errors import KtError

if TYPE_CHECKING:
    from kt.registry import Registry

log = logging.getLogger("kt")

EXTRA = "pip install 'kt[trackers]'"  # installs the built-in trackers' packages


@runtime_checkable
class Tracker(Protocol):
    """What a registered tracker factory returns. Its methods are called in this order, in the
    training process: ``start`` once, ``log`` per row, ``finish`` once (also when the run fails)."""

    def start(self, run: dict[str, Any]) -> None:
        """A run (or its resumption) begins. ``run``: ``name`` (the run folder relative to the results
        folder, e.g. ``transfer/kl/a__b``), ``folder`` and ``results`` (absolute paths), ``pair``,
        ``strategy``, ``teacher`` (the teacher column: a model, a group, or None), ``teachers``,
        ``student``, ``seed``, ``start_step`` (0, or the step a resumed run continues after) and
        ``settings`` (the transfer settings). The rows before ``start_step`` follow at once: a tracker
        that keeps one record per run folder should replace the record it may have from earlier."""

    def log(self, row: dict[str, Any], step: int) -> None:
        """One row of metrics.parquet (``kind`` "step" or "epoch", then numbers or None; see
        :data:`kt.transfer.rows.METRIC_COLUMNS`), at optimiser ``step``; steps never decrease.
        :func:`scalars` names the numbers as most trackers want them."""

    def finish(self) -> None:
        """The run ended: flush and close."""


def require(module: str, package: str, tracker: str) -> ModuleType:
    """Import ``module`` for ``tracker``; a missing package is an ImportError that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"tracker {tracker!r} needs the Python package {package!r}, which is not installed "
                          f"({e}); install the trackers extra: {EXTRA} (or pip install {package})") from None


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A row's numbers as tracker metrics named ``KIND/COLUMN`` (``step/train_loss``,
    ``epoch/eval_accuracy``, ``step/loss_kl``): the step is the x axis and epoch the row's position, so
    both are left out, and so are nulls. Step and epoch rows keep apart: their means cover other steps."""
    kind = row.get("kind", "epoch")
    return {f"{kind}/{key}": float(value) for key, value in row.items()
            if key not in ("kind", "step", "epoch") and isinstance(value, int | float) and not isinstance(value, bool)}


def entries(trackers: list[str | dict[str, Any]] | None) -> list[tuple[str, dict[str, Any]]]:
    """``transfer.trackers`` as (name, options): an entry is a name, or a mapping with ``name`` and options."""
    out = []
    for entry in trackers or []:
        if isinstance(entry, str):
            out.append((entry, {}))
        else:
            options = dict(entry)
            out.append((options.pop("name"), options))
    return out


def check_trackers(trackers: list[str | dict[str, Any]] | None, registry: Registry,
                   key: str = "transfer.trackers", build: bool = True) -> None:
    """Every entry a registered tracker, its options declared by the tracker's factory and, with
    ``build``, accepted by it (the factory is called: keep it cheap): a KtError naming the config key,
    the closest names and the known ones otherwise, so that ``snakemake -n`` stops on a misspelt
    tracker before any job runs."""
    for i, (name, options) in enumerate(entries(trackers)):
        where = f"config key {key}[{i}]"
        try:
            accepted = registry.options("trackers", name)
        except KtError as e:
            raise KtError(f"{where}: {e} Trackers come from plugins; see `kt plugins`.") from None
        from kt.registry import check_declared  # kt.registry imports pluggy: not at import time

        check_declared(options, accepted, f"tracker {name!r}", where)
        if not build:
            continue
        try:
            registry.get("trackers", name)(**options)
        except KtError as e:
            raise KtError(f"{where}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a plugin's bug: name it instead of a traceback
            raise KtError(f"{where}: {registry.who('trackers', name)} failed to build with options {options}: "
                          f"{type(e).__name__}: {e}") from None


def run_name(folder: Path, results: Path) -> str:
    """The run folder relative to the results folder (its own name when it is elsewhere)."""
    folder, results = folder.resolve(), results.resolve()
    if folder != results and folder.is_relative_to(results):
        return folder.relative_to(results).as_posix()
    return folder.name


def run_dir(base: str | None, run: dict[str, Any], default: str) -> Path:
    """Where a tracker that keeps a folder per run writes this run: ``BASE/NAME``, BASE the tracker's
    ``dir`` option or ``<results>/<default>``."""
    return Path(base or Path(run["results"]) / default) / run["name"]


class Tracking:
    """The loop's side of the trackers: every row to every tracker still on; a tracker that raises is
    named in one warning and switched off, and the run goes on."""

    def __init__(self, trackers: list[tuple[str, Any]], origins: dict[str, str] | None = None) -> None:
        self.trackers = list(trackers)
        self.origins = origins or {}

    @classmethod
    def open(cls, trackers: list[str | dict[str, Any]] | None, registry: Registry, run: dict[str, Any],
             history: Sequence[dict[str, Any]] = ()) -> Tracking:
        """Build and start the configured trackers, then hand them ``history`` (the rows so far: the
        initial evaluation, or a resumed run's rows). Unknown names and options are a KtError, before
        training; a tracker that cannot be built or started (its package missing, say) is a warning."""
        check_trackers(trackers, registry, build=False)
        tracking = cls([], {name: registry.who("trackers", name) for name, _ in entries(trackers)})
        for name, options in entries(trackers):
            try:
                tracker = registry.get("trackers", name)(**options)
            except Exception as e:  # noqa: BLE001 - a tracker must never fail the run
                tracking._warn(name, "could not be created", e)
                continue
            tracking.trackers.append((name, tracker))
        tracking._each("start", lambda t: t.start(run))
        for row in history:
            tracking.log(row)
        return tracking

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, row: dict[str, Any]) -> None:
        """One row of metrics.parquet, at its step, to every tracker still on."""
        if self.trackers:
            self._each("log", lambda t: t.log(row, row["step"]))

    def finish(self) -> None:
        """Close every tracker still on (each once)."""
        self._each("finish", lambda t: t.finish())
        self.trackers = []

    def _each(self, what: str, call: Callable[[Any], None]) -> None:
        for name, tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - a tracker must never fail the run
                self.trackers = [(n, t) for n, t in self.trackers if t is not tracker]
                self._warn(name, f"failed in {what}()", e)

    def _warn(self, name: str, what: str, error: Exception) -> None:
        log.warning("%s %s and is off for the rest of this run, which goes on: %s: %s",
                    self.origins.get(name, f"tracker {name!r}"), what, type(error).__name__, error)
