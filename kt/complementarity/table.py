"""The pair table (one row per ordered pair) and the obvious per-pair reference it must equal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from kt.complementarity.flips import DEFAULT_BLOCK_BYTES, TOP_P, BlockSink, flip_stats
from kt.complementarity.forecast import pairwise_greater

COLUMNS = ["teacher", "student", "teacher_acc", "student_acc", "acc_diff", "pos_flips", "neg_flips",
           "pos_flip_count", "pos_flip_entropy", *[f"top{p}" for p in TOP_P], "forecast_dp",
           "forecast_dp_unsup"]
"""Columns of :func:`pair_table`, in order."""

def pair_table(correct: np.ndarray, labels: np.ndarray, num_classes: int, names: Sequence[str],
               probs_true: np.ndarray | None = None, conf: np.ndarray | None = None, *,
               block_bytes: int = DEFAULT_BLOCK_BYTES, threads: int | None = None,
               on_block: BlockSink | None = None) -> pl.DataFrame:
    """One row per ordered pair (teacher != student), teacher-major in ``names`` order.

    ``correct`` (M, N) bool; ``probs_true`` / ``conf`` (M, N) give the forecast columns (null when
    absent). Columns: see :data:`COLUMNS` and the module docstring; percentages are of all N samples.
    ``block_bytes`` bounds the working memory, ``threads`` the worker threads (default: all cores for
    big tables), ``on_block`` receives the per-class counts (see :func:`flip_stats`).
    """
    correct = np.asarray(correct, dtype=bool)
    m, n = correct.shape
    names = [str(x) for x in names]
    if len(names) != m:
        raise ValueError(f"{len(names)} names for {m} models")
    if len(set(names)) != m:
        raise ValueError("model names must be unique")
    if n == 0:
        raise ValueError("no samples")
    stats = flip_stats(correct, labels, num_classes, block_bytes=block_bytes, threads=threads,
                       on_block=on_block)
    acc = correct.mean(axis=1) * 100.0
    t_idx, s_idx = np.nonzero(~np.eye(m, dtype=bool))
    pos = stats["count"]
    cols: dict[str, Any] = {
        "teacher": [names[i] for i in t_idx],
        "student": [names[i] for i in s_idx],
        "teacher_acc": acc[t_idx],
        "student_acc": acc[s_idx],
        "acc_diff": acc[t_idx] - acc[s_idx],
        "pos_flips": pos[t_idx, s_idx] * 100.0 / n,
        "neg_flips": pos[s_idx, t_idx] * 100.0 / n,
        "pos_flip_count": pos[t_idx, s_idx],
        "pos_flip_entropy": stats["entropy"][t_idx, s_idx],
    }
    for p in TOP_P:
        cols[f"top{p}"] = stats[f"top{p}"][t_idx, s_idx]
    for col, values in (("forecast_dp", probs_true), ("forecast_dp_unsup", conf)):
        if values is None:
            cols[col] = pl.Series(col, [None] * len(t_idx), dtype=pl.Float64)
        else:
            values = np.asarray(values)
            if values.shape != (m, n):
                raise ValueError(f"{col}: values {values.shape} do not match correct {(m, n)}")
            cols[col] = pairwise_greater(values, threads=threads)[t_idx, s_idx] * 100.0 / n
    return pl.DataFrame(cols).select(COLUMNS)


def naive_pair(correct_t: np.ndarray, correct_s: np.ndarray, labels: np.ndarray, num_classes: int,
               probs_true_t: np.ndarray | None = None, probs_true_s: np.ndarray | None = None,
               conf_t: np.ndarray | None = None, conf_s: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics of one (teacher, student) pair, written the obvious way: the reference that
    :func:`pair_table` must equal (tests) and beat (benchmark). Same keys as the table's metric
    columns, plus ``per_class`` (C,) positive flip counts."""
    ct = np.asarray(correct_t, dtype=bool)
    cs = np.asarray(correct_s, dtype=bool)
    n = len(ct)
    pos_mask = ct & ~cs
    per_class = np.bincount(np.asarray(labels)[pos_mask], minlength=num_classes).astype(np.int64)
    total = int(per_class.sum())
    if total:
        p = per_class[per_class > 0] / total
        entropy = float(-(p * np.log(p)).sum())
    else:
        entropy = 0.0
    desc = np.sort(per_class)[::-1]
    running = np.cumsum(desc)
    res: dict[str, Any] = {
        "teacher_acc": ct.mean() * 100.0, "student_acc": cs.mean() * 100.0,
        "acc_diff": (ct.mean() - cs.mean()) * 100.0,
        "pos_flips": total * 100.0 / n, "neg_flips": int((cs & ~ct).sum()) * 100.0 / n,
        "pos_flip_count": total, "pos_flip_entropy": max(entropy, 0.0), "per_class": per_class,
    }
    for p_ in TOP_P:
        res[f"top{p_}"] = int(np.argmax(100 * running >= p_ * total)) + 1 if total else 0
    res["forecast_dp"] = (float((np.asarray(probs_true_t) > np.asarray(probs_true_s)).mean() * 100.0)
                          if probs_true_t is not None and probs_true_s is not None else None)
    res["forecast_dp_unsup"] = (float((np.asarray(conf_t) > np.asarray(conf_s)).mean() * 100.0)
                                if conf_t is not None and conf_s is not None else None)
    return res


