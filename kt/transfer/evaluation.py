"""A transfer's evaluations and results: eval-split logits before, between and after training, and the
run folder's results (shared with :mod:`kt.multi`). The rows of ``metrics.parquet``: :mod:`kt.transfer.rows`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from kt.allocator import release
from kt.artifacts import atomic_path, check_model, check_same_samples, logits_attrs, read_logits, write_logits
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


def write_run(folder: RunFolder, final: Classifier, student: ModelSpec, after: np.ndarray, evald: Split,
              dataset: dict[str, Any], config: dict[str, Any] | None, metrics: pl.DataFrame | None) -> None:
    """The run folder's results, each written atomically; ``config.json`` last marks the run complete
    (no record for a trained teacher's folder: ``config`` None)."""
    extra = {"transfer": json.dumps(config)} if config is not None else {}
    write_logits(folder.after, after, evald, logits_attrs(student, final, evald, dataset, after) | extra)
    with atomic_path(folder.weights) as tmp:
        torch.save(final.body.state_dict(), tmp)
    if config is not None:
        folder.write_record(config, metrics)
