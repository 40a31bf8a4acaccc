"""Loading: M eval logits files -> per-sample correctness and softmax statistics, refusing files that
do not describe the same samples.

Each file is read in blocks of whole rows (``chunk_rows``), so a worker holds one block of logits
(4 MiB at 1,048 × 1,000 float32), never a whole 200 MB ImageNet-val array or float64 copies of it.
Per block, in float32: the arg-max (correctness), the row maximum, then ``exp(z - max)`` in place (the
log-sum-exp shift: nothing overflows, whatever the logits' magnitude); its row sum, accumulated in
float64, gives the top-1 confidence (1 / sum) and, with the true class's term taken in float64 (one
value a row), its probability: within ~4e-7 relative of the float64 reference :func:`softmax_stats`
(most values bit-identical). Files are read by a pool of workers; results are checked and stored in
file order, so errors name the same file as a serial loop would.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from kt.artifacts import LogitsFile, check_same_samples, open_h5, read_header
from kt.errors import KtError

DEFAULT_CHUNK_ROWS = 1024
"""Rows of logits read and reduced at a time, rounded to whole HDF5 chunks of the file: 4 MiB of
float32 at 1,000 classes. Measured on 50,000 × 1,000 files: ~1,000 rows cost ~18 % less CPU than
4,096 (the passes over a block stay in the core's cache) and ~7 % less than 256."""


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
    (stable: shifted by the row maximum) and returned as float32. The reference for
    :func:`load_predictions`, which computes the same in float32 block by block."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1)
    p_true = e[np.arange(len(z)), labels] / total
    return p_true.astype(np.float32), (1.0 / total).astype(np.float32)


def block_stats(z: np.ndarray, labels: np.ndarray, correct: np.ndarray, p_true: np.ndarray,
                conf: np.ndarray) -> bool:
    """Correctness, true-class probability and top-1 confidence of one block of float32 logits
    ``z`` (R, C), written into the (R,) outputs; ``z`` is overwritten. False (outputs untouched)
    when the block holds a NaN or an infinity. ``labels`` must lie in 0..C-1."""
    rows = np.arange(len(z))
    top = z.argmax(axis=1)
    peak = z[rows, top]  # the row maximum (NaN where the row holds one: argmax stops at the NaN)
    if len(z) and not (np.isfinite(z.min()) and np.isfinite(peak).all()):  # min: NaN and -inf, peak: +inf
        return False
    np.equal(top, labels, out=correct)
    # The true class's shifted logit in float64, where z - max is exact: in float32 it rounds when z
    # and max differ in sign or magnitude (measured: up to 3e-6 relative on small probabilities).
    shifted_true = z[rows, labels].astype(np.float64) - peak
    with np.errstate(over="ignore", under="ignore"):  # z - max below -3.4e38 -> -inf, exp -> 0: right
        np.subtract(z, peak[:, None], out=z)
        np.exp(z, out=z)  # in [0, 1], exactly 1 at the arg-max
    # Summed in float64 (numpy casts in small buffers: no float64 copy of the block): a float32 sum
    # depends on the order of its terms, so two rows holding the same logits at other positions got
    # confidences one ulp apart, and the forecast's strict comparisons counted that as a difference.
    total = z.sum(axis=1, dtype=np.float64)  # >= 1: no division by zero
    p_true[:] = np.exp(shifted_true) / total  # rounded to float32 once, like the float64 reference
    conf[:] = 1.0 / total
    return True


@dataclass
class _FileStats:
    """One file's per-sample statistics, with what the cross-file checks need."""

    path: Path
    attrs: dict[str, Any]
    labels: np.ndarray
    index: np.ndarray
    num_classes: int
    correct: np.ndarray
    p_true: np.ndarray
    conf: np.ndarray

    def header(self) -> LogitsFile:
        """A :class:`LogitsFile` for :func:`check_same_samples` (logits: a zero-byte view of the shape)."""
        shape = (len(self.labels), self.num_classes)
        return LogitsFile(self.path, np.broadcast_to(np.float32(0), shape), self.labels, self.index, self.attrs)


_H5 = threading.Lock()
"""Held around every h5py call of the loading threads: h5py serialises HDF5 calls anyway (so this
costs nothing), and crashes of concurrent h5py reads from threads are reported (h5py issues #1764,
#2920, the latter with h5py 3.16 / HDF5 2.0, the versions here; not reproduced here); the arithmetic
runs outside it, in parallel."""


def _read_header(f: Any, path: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray, Any]:
    attrs, index = read_header(f, path)
    labels = f["labels"][:].astype(np.int64)
    ds = f["logits"]
    if ds.ndim != 2 or ds.shape[0] != len(labels):
        raise KtError(f"{path}: logits {ds.shape} do not match labels {labels.shape}; "
                      "delete the file and rerun the extract step.")
    return attrs, index, labels, ds


def _read_file(path: Path, chunk_rows: int) -> _FileStats:
    """Stream one logits file block by block into its per-sample statistics."""
    with _H5:
        f = open_h5(path)
    try:
        with _H5:
            attrs, index, labels, ds = _read_header(f, path)
            n, c = ds.shape
            step = max(1, chunk_rows)
            if ds.chunks and step >= ds.chunks[0]:  # whole HDF5 chunks: none is decoded twice
                step = round(step / ds.chunks[0]) * ds.chunks[0]
        # Out-of-range labels are refused by the caller (first file) or by check_same_samples
        # (others); clipped here only so that the block reduction stays in bounds.
        safe = labels if n == 0 or (labels.min() >= 0 and labels.max() < c) else np.clip(labels, 0, max(c - 1, 0))
        correct = np.empty(n, bool)
        p_true = np.empty(n, np.float32)
        conf = np.empty(n, np.float32)
        buf = np.empty((min(step, n), c), np.float32)
        for start in range(0, n if c else 0, step):
            stop = min(n, start + step)
            z = buf[:stop - start]
            with _H5:
                ds.read_direct(z, np.s_[start:stop], np.s_[0:stop - start])  # converts float16 storage
            if not block_stats(z, safe[start:stop], correct[start:stop], p_true[start:stop], conf[start:stop]):
                raise KtError(f"{path} holds non-finite logits (NaN/inf); the model diverged or the file is "
                              "corrupt: rerun the extract step for this model.")
    except OSError as e:
        raise KtError(f"{path} is truncated or corrupt ({e}); delete it and rerun the step.") from None
    finally:
        with _H5:
            f.close()
    return _FileStats(path, attrs, labels, index, c, correct, p_true, conf)


def _workers(threads: int | None, files: int) -> int:
    if threads:
        return max(1, min(int(threads), files))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, files))


def _executor(workers: int, pool: str) -> Executor:
    if pool == "thread":
        return ThreadPoolExecutor(workers, thread_name_prefix="kt-load")
    # spawn: a fresh interpreter, safe whatever threads (torch, HDF5) the parent runs
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))


def _stream(files: list[Path], workers: int, chunk_rows: int, pool: str) -> Iterator[_FileStats]:
    """Per-file statistics in file order; workers read ahead at most ``2 * workers`` files."""
    if workers == 1:
        for path in files:
            yield _read_file(path, chunk_rows)
        return
    ex = _executor(workers, pool)
    try:
        pending, nxt = [], 0
        for i in range(len(files)):
            while nxt < len(files) and nxt < i + 2 * workers:  # bounded read-ahead: results wait in memory
                pending.append(ex.submit(_read_file, files[nxt], chunk_rows))
                nxt += 1
            yield pending.pop(0).result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def load_predictions(files: Sequence[str | Path], threads: int | None = None,
                     chunk_rows: int = DEFAULT_CHUNK_ROWS, pool: str = "thread") -> Predictions:
    """Load eval logits files, keeping per-sample correctness and softmax statistics (float32).

    All files must describe the same samples in the same order: a different ``dataset_fingerprint``,
    index, labels or class count is refused with a :class:`KtError` naming both files, because pairing
    rows of different samples would silently produce meaningless flips. Non-finite logits, a model
    given twice and labels outside the class range are refused too.

    ``threads``: files read at once (default: the cores this process may use); ``chunk_rows``: rows
    reduced at a time per worker; ``pool``: ``"thread"`` workers (default) or ``"process"`` workers.
    h5py serialises HDF5 calls, but numpy's passes over a block (arg-max, exp, sums: ~60 % of a file's
    cost) release the GIL, so threads overlap them with the next read. Measured on 2 cores with 8 files
    of 50,000 × 1,000 (benchmarks/complementarity.py --from-hdf5): 0.21 s a file with 1 worker, 0.12 s
    with 2 threads (1.7×; the old whole-file float64 reader: 0.69 s), and 2 processes as fast once
    started, but they pay ~0.5–1.5 s to start (spawn, imports, re-importing ``__main__``). Processes
    can pay off on many cores, where the serialised reads (~40 %) cap what threads gain.
    """
    files = [Path(f) for f in files]
    if not files:
        raise KtError("complementarity needs at least one eval logits file; none were given.")
    if pool not in ("process", "thread"):
        raise ValueError(f"pool must be 'process' or 'thread', not {pool!r}")
    names: list[str] = []
    seen: dict[str, Path] = {}
    first: _FileStats | None = None
    ref: LogitsFile | None = None
    correct = p_true = conf = np.empty(0)
    for k, got in enumerate(_stream(files, _workers(threads, len(files)), chunk_rows, pool)):
        path = got.path
        if first is None:
            first, ref = got, got.header()
            if len(got.labels) == 0:
                raise KtError(f"{path} holds no samples; rerun the extract step on a non-empty split.")
            if got.labels.min() < 0 or got.labels.max() >= got.num_classes:
                raise KtError(f"{path}: labels outside 0..{got.num_classes - 1}; the model's label "
                              "space does not match the dataset.")
            m, n = len(files), len(got.labels)  # filled in place: no (M, N) stacking copies
            correct, p_true, conf = np.empty((m, n), bool), np.empty((m, n), np.float32), np.empty((m, n), np.float32)
        else:
            check_same_samples(ref, got.header())
        name = str(got.attrs.get("model") or path.stem)
        if name in seen:
            raise KtError(f"{path}: model name {name!r} appears twice (also {seen[name]}); "
                          "each model may be given once.")
        seen[name] = path
        names.append(name)
        correct[k], p_true[k], conf[k] = got.correct, got.p_true, got.conf
    assert first is not None
    classes = first.attrs.get("classes")
    if not isinstance(classes, list) or len(classes) != first.num_classes:
        classes = [str(c) for c in range(first.num_classes)]
    return Predictions(names, files, correct, first.labels, p_true, conf, first.num_classes,
                       [str(c) for c in classes], dict(first.attrs))
