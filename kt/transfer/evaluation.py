"""A transfer's evaluations and results: eval-split logits before, between and after training, the
per-epoch rows of ``metrics.parquet``, and the run folder's results (shared with :mod:`kt.multi`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from kt.allocator import release
from kt.artifacts import atomic_path, check_model, check_same_samples, logits_attrs, read_logits, top1, write_logits
from kt.data import Split
from kt.errors import KtError
from kt.extract import predict
from kt.models import Classifier, ModelSpec
from kt.settings import TransferSettings
from kt.transfer.run_folder import RunFolder


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


# metrics.parquet, one row per epoch (epoch 0: before training); null where a value does not exist
EPOCH_COLUMNS = {
    "epoch": pl.Int64,            # epochs finished (0: the initial student)
    "step": pl.Int64,             # optimiser steps so far
    "train_loss": pl.Float64,     # mean strategy loss over the epoch's steps (null at epoch 0)
    "teacher_share": pl.Float64,  # share of samples whose target was a teacher (strategies whose loss
                                  # returns a teacher mask: kl_dp, kl_dp_unsup; null for the others)
    "eval_accuracy": pl.Float64,  # top-1 % on the eval split (null on epochs not evaluated: eval_every)
    "seconds": pl.Float64,        # wall time of the epoch
}


def epoch_row(epoch: int, step: int, loss: float | None, share: float | None, seconds: float,
              logits: np.ndarray | None, evald: Split) -> dict[str, Any]:
    """One row of metrics.parquet (see :data:`EPOCH_COLUMNS`)."""
    return {"epoch": epoch, "step": step, "train_loss": loss, "teacher_share": share,
            "eval_accuracy": top1(logits, evald.labels) if logits is not None else None, "seconds": seconds}


def epoch_table(history: list[dict[str, Any]]) -> pl.DataFrame:
    """metrics.parquet's table from :func:`epoch_row` rows, typed even where a column is all null."""
    return pl.DataFrame(history, schema=EPOCH_COLUMNS)


def write_run(folder: RunFolder, final: Classifier, student: ModelSpec, after: np.ndarray, evald: Split,
              dataset: dict[str, Any], config: dict[str, Any], metrics: pl.DataFrame) -> None:
    """The run folder's results, each written atomically; ``config.json`` last marks the run complete."""
    write_logits(folder.after, after, evald, logits_attrs(student, final, evald, dataset, after)
                 | {"transfer": json.dumps(config)})
    with atomic_path(folder.weights) as tmp:
        torch.save(final.body.state_dict(), tmp)
    folder.write_record(config, metrics)
