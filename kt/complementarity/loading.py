"""Loading: M eval logits files -> per-sample correctness and softmax statistics, refusing files that
do not describe the same samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kt.artifacts import check_same_samples, read_logits
from kt.errors import KtError


@dataclass
class Predictions:
    """What the complementarity step needs from M eval logits files (no logits kept: 500 models of
    50,000 samples × 1,000 classes would be 100 GB)."""

    names: list[str]
    files: list[Path]
    correct: np.ndarray  # (M, N) bool
    labels: np.ndarray  # (N,) int64
    probs_true: np.ndarray  # (M, N) float32, softmax probability of the true class
    conf: np.ndarray  # (M, N) float32, max softmax probability
    num_classes: int
    classes: list[str]
    attrs: dict[str, Any]  # of the first file

    @property
    def accuracies(self) -> np.ndarray:
        """Top-1 accuracy of each model in %."""
        return self.correct.mean(axis=1) * 100.0


def softmax_stats(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probability of the true class and the top-1 confidence per sample, computed in float64
    (stable: shifted by the row maximum) and returned as float32 — what the DP strategies compare."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1)
    p_true = e[np.arange(len(z)), labels] / total
    return p_true.astype(np.float32), (1.0 / total).astype(np.float32)


def load_predictions(files: Sequence[str | Path]) -> Predictions:
    """Load eval logits files one at a time, keeping per-sample correctness and softmax statistics.

    All files must describe the same samples in the same order: a different ``dataset_fingerprint``,
    index, labels or class count is refused with a :class:`KtError` naming both files, because pairing
    rows of different samples would silently produce meaningless flips.
    """
    files = [Path(f) for f in files]
    if not files:
        raise KtError("complementarity needs at least one eval logits file; none were given.")
    names: list[str] = []
    correct, p_true, conf = [], [], []
    first = None
    for path in files:
        lf = read_logits(path)
        if lf.logits.ndim != 2 or len(lf.logits) != len(lf.labels):
            raise KtError(f"{path}: logits {lf.logits.shape} do not match labels {lf.labels.shape}; "
                          "delete the file and rerun the extract step.")
        if not np.isfinite(lf.logits).all():
            raise KtError(f"{path} holds non-finite logits (NaN/inf); the model diverged or the file is "
                          "corrupt: rerun the extract step for this model.")
        labels = lf.labels.astype(np.int64)
        if first is None:
            first = lf
            if len(labels) == 0:
                raise KtError(f"{path} holds no samples; rerun the extract step on a non-empty split.")
            if labels.min() < 0 or labels.max() >= lf.logits.shape[1]:
                raise KtError(f"{path}: labels outside 0..{lf.logits.shape[1] - 1}; the model's label "
                              "space does not match the dataset.")
        else:
            check_same_samples(first, lf)
        name = str(lf.attrs.get("model") or path.stem)
        if name in names:
            raise KtError(f"{path}: model name {name!r} appears twice (also {files[names.index(name)]}); "
                          "each model may be given once.")
        names.append(name)
        correct.append(lf.predictions == labels)
        pt, cf = softmax_stats(lf.logits, labels)
        p_true.append(pt)
        conf.append(cf)
    assert first is not None
    num_classes = int(first.logits.shape[1])
    classes = first.attrs.get("classes")
    if not isinstance(classes, list) or len(classes) != num_classes:
        classes = [str(c) for c in range(num_classes)]
    return Predictions(names, files, np.stack(correct), first.labels.astype(np.int64), np.stack(p_true),
                       np.stack(conf), num_classes, [str(c) for c in classes], dict(first.attrs))
