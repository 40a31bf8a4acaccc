"""Writing the step's artifacts: the pair table (parquet) and per-class positive flip counts (HDF5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kt.artifacts import FORMAT_VERSION, atomic_path, open_h5, set_attrs, write_table
from kt.complementarity.flips import DEFAULT_BLOCK_BYTES, BlockSink
from kt.complementarity.loading import load_predictions
from kt.complementarity.table import pair_table
from kt.errors import KtError

DEFAULT_H5_MAX_BYTES = 1 << 30
"""Largest full (M, M, C) int64 per-class tensor written to HDF5; above it only selected pairs, 1 GiB."""

Finish = Callable[[], tuple[str, str]]
"""Writes what a sink kept and returns (scope, axes) for the file's attrs."""


def _all_pairs(f: Any, m: int, num_classes: int) -> tuple[BlockSink, Finish]:
    """The full (M, M, C) tensor, streamed block by block so it never sits in memory whole."""
    ds = f.create_dataset("pos_flips_per_class", shape=(m, m, num_classes), dtype=np.int64,
                          chunks=(1, max(1, min(m, (1 << 17) // max(1, num_classes))), num_classes)
                          if m and num_classes else None)

    def sink(t0: int, t1: int, counts: np.ndarray, totals: np.ndarray) -> None:
        ds[t0:t1] = counts.astype(np.int64)

    return sink, lambda: ("all pairs", "teacher, student, class")


def _write_rows(f: Any, names: list[str], teachers: list[int], students: list[int], rows: np.ndarray,
                num_classes: int) -> None:
    import h5py

    f.create_dataset("pos_flips_per_class", data=rows.reshape(len(teachers), num_classes))
    for key, idx in (("teacher", teachers), ("student", students)):
        f.create_dataset(key, data=np.array([names[i] for i in idx], dtype=object), dtype=h5py.string_dtype())


def _listed_pairs(f: Any, names: list[str], wanted: list[tuple[int, int]], num_classes: int
                  ) -> tuple[BlockSink, Finish]:
    """(P, C) rows of the given (teacher, student) index pairs."""
    by_teacher: dict[int, list[int]] = {}
    for i, (t, _) in enumerate(wanted):
        by_teacher.setdefault(t, []).append(i)
    rows = np.zeros((len(wanted), num_classes), np.int64)

    def sink(t0: int, t1: int, counts: np.ndarray, totals: np.ndarray) -> None:
        for t in range(t0, t1):
            for i in by_teacher.get(t, []):
                rows[i] = counts[t - t0, wanted[i][1]]

    def finish() -> tuple[str, str]:
        _write_rows(f, names, [t for t, _ in wanted], [s for _, s in wanted], rows, num_classes)
        return "the pairs passed in", "pair, class"

    return sink, finish


def _top_teacher_per_student(f: Any, names: list[str], num_classes: int) -> tuple[BlockSink, Finish]:
    """(M, C) rows: for every student, its teacher with the most positive flips (ties: the first)."""
    m = len(names)
    best = np.full(m, -1, np.int64)
    best_teacher = np.full(m, -1, np.int64)
    rows: dict[int, np.ndarray] = {}

    def sink(t0: int, t1: int, counts: np.ndarray, totals: np.ndarray) -> None:
        tot = totals.astype(np.int64).copy()
        for j in range(t1 - t0):  # mask the self-pairs
            tot[j, t0 + j] = -1
        arg = tot.argmax(axis=0)
        val = tot[arg, np.arange(m)]
        for s in np.flatnonzero(val > best):
            best[s] = val[s]
            best_teacher[s] = t0 + arg[s]
            rows[int(s)] = counts[arg[s], s].astype(np.int64)

    def finish() -> tuple[str, str]:
        students = [s for s in range(m) if best_teacher[s] >= 0]
        kept = np.stack([rows[s] for s in students]) if students else np.zeros((0, 0), np.int64)
        _write_rows(f, names, [int(best_teacher[s]) for s in students], students, kept, num_classes)
        return "for each student the teacher with the most positive flips", "pair, class"

    return sink, finish


def _per_class_writer(f: Any, names: list[str], num_classes: int, pairs: Sequence[tuple[str, str]] | None,
                      h5_max_bytes: int) -> tuple[BlockSink, Finish]:
    """Where the per-class counts go: all pairs when the tensor fits ``h5_max_bytes``, else selected ones."""
    m = len(names)
    full_bytes = m * m * num_classes * 8
    if full_bytes <= h5_max_bytes:
        return _all_pairs(f, m, num_classes)
    if pairs is not None:
        index = {name: i for i, name in enumerate(names)}
        sink, finish = _listed_pairs(f, names, [(index[t], index[s]) for t, s in pairs if t != s], num_classes)
    else:
        sink, finish = _top_teacher_per_student(f, names, num_classes)

    def finish_selected() -> tuple[str, str]:
        how, axes = finish()
        return (f"selected pairs: {how} (the full tensor, M*M*C*8 = {full_bytes} bytes, exceeds "
                f"h5_max_bytes = {h5_max_bytes})", axes)

    return sink, finish_selected


def write_complementarity(out_parquet: str | Path, out_h5: str | Path, correct: np.ndarray,
                          labels: np.ndarray, num_classes: int, names: Sequence[str],
                          probs_true: np.ndarray | None = None, conf: np.ndarray | None = None, *,
                          classes: Sequence[str] | None = None,
                          pairs: Sequence[tuple[str, str]] | None = None,
                          h5_max_bytes: int = DEFAULT_H5_MAX_BYTES, attrs: dict[str, Any] | None = None,
                          block_bytes: int = DEFAULT_BLOCK_BYTES, threads: int | None = None) -> pl.DataFrame:
    """Compute :func:`pair_table` once and write it (parquet) and the per-class positive flip counts
    (HDF5), both atomically.

    ``per_class.h5`` holds ``pos_flips_per_class`` int64: the full (M, M, C) tensor [teacher, student,
    class] when M·M·C·8 bytes ≤ ``h5_max_bytes`` (attr ``scope`` = "all pairs"); otherwise (P, C) rows
    for selected pairs only, named by datasets ``teacher``/``student`` — ``pairs`` if given, else each
    student's teacher with the most positive flips — with ``scope`` saying which and why.
    """
    names = [str(x) for x in names]
    classes = [str(c) for c in classes] if classes is not None else [str(c) for c in range(num_classes)]
    if pairs is not None:
        unknown = sorted({x for pair in pairs for x in pair} - set(names))
        if unknown:
            raise KtError(f"pairs name unknown model(s) {unknown}; known: {names}")
    with atomic_path(out_h5) as tmp, open_h5(tmp, "w") as f:
        sink, finish = _per_class_writer(f, names, num_classes, pairs, h5_max_bytes)
        table = pair_table(correct, labels, num_classes, names, probs_true, conf, block_bytes=block_bytes,
                           threads=threads, on_block=sink)
        scope, axes = finish()
        set_attrs(f, {"format_version": FORMAT_VERSION, "kind": "complementarity", "models": names,
                      "classes": classes, "num_samples": int(np.asarray(labels).shape[0]), "axes": axes,
                      "created": datetime.now(UTC).isoformat(timespec="seconds"), **(attrs or {}),
                      "scope": scope, "h5_max_bytes": int(h5_max_bytes)})
    write_table(table, out_parquet)
    return table


def complementarity(files: Sequence[str | Path], out_parquet: str | Path, out_h5: str | Path, *,
                    pairs: Sequence[tuple[str, str]] | None = None, h5_max_bytes: int = DEFAULT_H5_MAX_BYTES,
                    threads: int | None = None) -> pl.DataFrame:
    """The CLI step: eval logits files → ``pairs.parquet`` + ``per_class.h5``; returns the table.
    ``threads`` bounds the workers of both the loading and the table (default: the cores this process
    may use)."""
    pred = load_predictions(files, threads=threads)
    if len(pred.names) < 2:
        raise KtError(f"complementarity needs at least two models' eval logits; got {len(pred.names)} "
                      f"({', '.join(map(str, pred.files))}). Add models to the config.")
    attrs = {"files": [str(f) for f in pred.files],
             "dataset_fingerprint": pred.attrs.get("dataset_fingerprint", ""),
             "dataset": pred.attrs.get("dataset", ""), "split": pred.attrs.get("split", "")}
    return write_complementarity(out_parquet, out_h5, pred.correct, pred.labels, pred.num_classes, pred.names,
                                 pred.probs_true, pred.conf, classes=pred.classes, pairs=pairs,
                                 h5_max_bytes=h5_max_bytes, attrs=attrs, threads=threads)

