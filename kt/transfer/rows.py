"""The rows of a run's ``metrics.parquet``: epoch rows (epoch 0 is the student before training) and,
every ``transfer.log_every`` steps of an epoch, step rows, in one table told apart by ``kind``.

Importable without torch, so that the summary and the figures read the schema without loading it;
:class:`Window` imports torch only when it computes.

Why step rows: an epoch mean hides a loss that diverges, a loss term that takes over, or a teacher that
stops teaching within the epoch; a row every few steps shows them, and the same rows feed the trackers
(:mod:`kt.trackers`) while the run trains.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    import numpy as np
    import torch

    from kt.data import Split

EPOCH, STEP = "epoch", "step"  # the values of the ``kind`` column
TERM_PREFIX = "loss_"  # a strategy's loss term NAME is the column loss_NAME (kt.strategies.Loss.terms)

# metrics.parquet: null wherever a value does not exist (never NaN); loss_<term> columns follow these,
# sorted, one per term the strategy reports; the loop adds strategy, teacher, student (and kt.multi more)
METRIC_COLUMNS = {
    "kind": pl.String,            # "epoch" or "step"
    "epoch": pl.Int64,            # epoch rows: epochs finished (0: the initial student); step rows: the
                                  # epoch the step belongs to, from 1 (its epoch row closes it)
    "step": pl.Int64,             # optimiser steps so far (the row's x axis)
    "progress": pl.Float64,       # epochs of training done, fractional in step rows (epoch - 1 + steps of
                                  # the epoch done / steps per epoch); equal to epoch in epoch rows
    "train_loss": pl.Float64,     # mean strategy loss over the row's steps: the epoch's, or the last
                                  # log_every steps (null at epoch 0)
    "teacher_share": pl.Float64,  # mean share of samples whose target was a teacher (strategies whose loss
                                  # returns a teacher mask: kl_dp, kl_dp_unsup; null for the others)
    "lr": pl.Float64,             # the learning rate at the row's last step (null at epoch 0)
    "img_per_s": pl.Float64,      # training images per second over the row's steps (null at epoch 0)
    "eval_accuracy": pl.Float64,  # top-1 % on the eval split (epoch rows; null on epochs eval_every skips
                                  # and in step rows)
    "seconds": pl.Float64,        # wall time of the epoch (with its evaluation) or of the row's steps
}


def term_column(name: str) -> str:
    """The column of a loss term: ``kl`` -> ``loss_kl``."""
    return f"{TERM_PREFIX}{name}"


def epoch_row(epoch: int, step: int, loss: float | None, share: float | None, seconds: float,
              logits: np.ndarray | None, evald: Split, training: dict[str, float | None] | None = None
              ) -> dict[str, Any]:
    """An epoch row (see :data:`METRIC_COLUMNS`); ``training``: the epoch's :meth:`Window.means` (its
    ``lr``, ``img_per_s`` and ``loss_<term>`` means; the arguments win over its other keys)."""
    from kt.artifacts import top1

    return {**(training or {}), "kind": EPOCH, "epoch": epoch, "step": step, "progress": float(epoch),
            "train_loss": loss, "teacher_share": share, "seconds": seconds,
            "eval_accuracy": top1(logits, evald.labels) if logits is not None else None}


def step_row(epoch: int, step: int, progress: float, means: dict[str, float | None]) -> dict[str, Any]:
    """A step row: ``epoch`` counted from 1, ``means`` of the steps since the last row (:meth:`Window.means`)."""
    return {"kind": STEP, "epoch": epoch, "step": step, "progress": progress, "eval_accuracy": None, **means}


def metrics_table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """metrics.parquet's table from :func:`epoch_row` and :func:`step_row` rows, typed even where a
    column is all null, with a ``loss_<term>`` column per term any row has."""
    terms = sorted({k for row in rows for k in row if k.startswith(TERM_PREFIX)})
    return pl.DataFrame(rows, schema=METRIC_COLUMNS | dict.fromkeys(terms, pl.Float64))


def epoch_rows(table: pl.DataFrame) -> pl.DataFrame:
    """The epoch rows of a metrics table (every row of one written before step rows existed)."""
    return table.filter(pl.col("kind") == EPOCH) if "kind" in table.columns else table


class Window:
    """The training values of a run of steps (an epoch, or the steps since the last step row), kept on the
    device: nothing here waits for the GPU until :meth:`means`, called only where the loop syncs anyway."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.shares: list[torch.Tensor] = []
        self.terms: dict[str, list[torch.Tensor]] = {}
        self.images = 0
        self.start = time.perf_counter()

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, loss: torch.Tensor, share: torch.Tensor | None, terms: dict[str, torch.Tensor],
            images: int) -> None:
        """One step: its loss, teacher share (None without a mask), loss terms and batch size."""
        self.losses.append(loss)
        if share is not None:
            self.shares.append(share)
        for name, value in terms.items():
            self.terms.setdefault(name, []).append(value)
        self.images += images

    def means(self, lr: float) -> dict[str, float | None]:
        """``train_loss``, ``teacher_share``, ``loss_<term>``: means over the steps, in float64, read from
        the device in one transfer; ``img_per_s`` and ``seconds`` since the window opened; ``lr``."""
        import torch

        parts = [self.losses, *([self.shares] if self.shares else []), *self.terms.values()]
        values = torch.stack([torch.stack(p).double().mean() for p in parts]).tolist()
        seconds = time.perf_counter() - self.start  # after the transfer: the device's work is done
        share = values[1] if self.shares else None
        terms = dict(zip(map(term_column, self.terms), values[1 + bool(self.shares):], strict=True))
        return {"train_loss": values[0], "teacher_share": share, "lr": lr,
                "img_per_s": self.images / seconds if seconds > 0 else None, "seconds": seconds, **terms}
