"""Complementary knowledge of every ordered (teacher, student) pair, computed for all pairs at once.

For teacher t and student s on an evaluation set of N samples (Roth et al., ICLR 2024, §3):

* ``pos_flips`` — % of samples t classifies correctly and s does not (t's complementary knowledge);
  ``neg_flips`` — the reverse (= ``pos_flips`` of the swapped pair).
* ``pos_flip_entropy`` — entropy (natural log) of the distribution of positive flips over classes; 0
  when there are none. Low entropy = knowledge concentrated in few classes (typical of weak teachers).
* ``top{p}`` for p in 2, 5, 20, 50 — the smallest number of classes that holds p % of all positive
  flips: sort the per-class counts descending, the smallest k with ``cumsum[k-1] >= p/100 * total``
  (compared exactly, in integers); 0 when there are no flips.
* ``forecast_dp`` — % of samples on which t gives the true class a strictly higher softmax probability
  than s: the share of the transfer set on which KL+DP would follow the teacher (ties go to the
  student). ``forecast_dp_unsup`` — the same with top-1 confidence (max softmax), as ``kl_dp_unsup``.

Why not a loop over pairs: M models give M·(M-1) pairs (249,500 for 500 models), each touching all
N samples. Here the correctness of each model is bit-packed per class (64 samples a word, the words
of one class never shared with another), so the per-class positive flip counts of a block of teachers
against every student are one ``AND NOT`` + popcount over (B, M, words): the same sums as the
per-class products ``C_c @ (1 - C_c).T`` but 64 samples an operation, and laid out (teacher,
student, class) as the per-class statistics need (per-class products leave (C, M, M), and the
transpose alone costs more than the counting; BLAS on 2 cores is also slow for products with ~50
inner rows). Entropy and top-p then work on each row's runs of equal counts after a radix sort.
The forecast ranks the M models per sample (narrow integers, ties sharing a rank) and compares
each sample's ranks M × M, summing in uint8 counters. Work runs in blocks on all cores; memory stays
bounded by ``block_bytes`` whatever M is. ``naive_pair`` is the obvious per-pair reference the tests
and ``benchmarks/complementarity.py`` check against.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kt.artifacts import FORMAT_VERSION, atomic_path, open_h5, read_logits, set_attrs
from kt.errors import KtError

TOP_P = (2, 5, 20, 50)
"""The p (in %) of the ``top{p}`` columns."""

DEFAULT_BLOCK_BYTES = 1 << 29
"""Working memory of one block of teachers (all blocks in flight together), 512 MiB."""

DEFAULT_H5_MAX_BYTES = 1 << 30
"""Largest full (M, M, C) int64 per-class tensor written to HDF5; above it only selected pairs, 1 GiB."""

COLUMNS = ["teacher", "student", "teacher_acc", "student_acc", "acc_diff", "pos_flips", "neg_flips",
           "pos_flip_count", "pos_flip_entropy", *[f"top{p}" for p in TOP_P], "forecast_dp",
           "forecast_dp_unsup"]
"""Columns of :func:`pair_table`, in order."""

_BLOCK_TARGET = 16 << 20
"""Preferred size of one block's per-class counts (cache-friendly); the budget may make it smaller."""

BlockSink = Callable[[int, int, np.ndarray, np.ndarray], None]
"""``sink(t0, t1, counts, totals)``: counts (t1-t0, M, C) positive flips per class of teachers
t0..t1-1 against every student, totals (t1-t0, M) their sums; called in teacher order."""


# ----------------------------------------------------------------------------------------- loading


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
            _check_same_samples(first, lf)
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


def _check_same_samples(a: Any, b: Any) -> None:
    fa, fb = a.attrs.get("dataset_fingerprint"), b.attrs.get("dataset_fingerprint")
    both = f"{a.path} and {b.path}"
    fix = "extract both models on the same dataset split (same subset and order)."
    if fa is not None and fb is not None and fa != fb:
        raise KtError(f"{both} were computed on different data (dataset_fingerprint {fa} vs {fb}); {fix}")
    if len(a.labels) != len(b.labels):
        raise KtError(f"{both} hold different numbers of samples ({len(a.labels)} vs {len(b.labels)}); {fix}")
    if not np.array_equal(a.index, b.index):
        raise KtError(f"{both} list different sample ids (index) or a different order; {fix}")
    if not np.array_equal(a.labels, b.labels):
        raise KtError(f"{both} hold different labels for the same samples; {fix}")
    if a.logits.shape[1] != b.logits.shape[1]:
        raise KtError(f"{both} have different numbers of classes ({a.logits.shape[1]} vs "
                      f"{b.logits.shape[1]}); complementarity needs one shared label space.")


def correctness_matrix(files: Sequence[str | Path]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``(names, correct (M, N) bool, labels (N,), accuracies (M,) in %)`` of eval logits files.

    Names are the files' ``model`` attr (the path-safe slug) or the file stem. Refuses files on
    different data (see :func:`load_predictions`).
    """
    p = load_predictions(files)
    return p.names, p.correct, p.labels, p.accuracies


# ------------------------------------------------------------------------------ per-class counting


def _popcount(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0; AVX-512 VPOPCNTDQ where the CPU has it
        return np.bitwise_count(x, out=out)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    out[...] = table[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)
    return out


@dataclass
class _Packed:
    bits: np.ndarray  # (M, W) uint64; every word holds samples of one class only
    not_bits: np.ndarray  # ~bits
    starts: np.ndarray  # first word of each non-empty class
    nonempty: np.ndarray  # class ids with samples
    one_word: bool  # every class fits one word and none is empty: popcounts are the counts
    count_dtype: Any  # smallest unsigned type holding the largest class size
    biggest: int  # largest class size


def _pack(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> _Packed:
    """Bit-pack correctness class by class, each class padded to whole 64-bit words."""
    m = correct.shape[0]
    sizes = np.bincount(labels, minlength=num_classes)
    words = -(-sizes // 64)
    first_word = np.concatenate([[0], np.cumsum(words)[:-1]]).astype(np.int64)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    class_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot = first_word[sorted_labels] * 64 + np.arange(len(labels)) - class_start[sorted_labels]
    padded = np.zeros((m, int(words.sum()) * 64), dtype=bool)
    padded[:, slot] = correct[:, order]
    bits = np.ascontiguousarray(np.packbits(padded, axis=1, bitorder="little").view(np.uint64))
    nonempty = np.flatnonzero(sizes)
    biggest = int(sizes.max(initial=0))
    dtype = np.uint8 if biggest < 256 else np.uint16 if biggest < 65536 else np.uint32
    return _Packed(bits, ~bits, first_word[nonempty], nonempty, bool((words == 1).all()), dtype, biggest)


class _Buffers(threading.local):
    """Per-thread scratch arrays, reused across blocks: fresh 100 MB arrays per block would spend
    more time in page faults than in the arithmetic."""

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        cache = self.__dict__.setdefault("cache", {})
        size = int(np.prod(shape))
        buf = cache.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = cache[name] = np.empty(size, dtype=dtype)
        return buf[:size].reshape(shape)


def _block_counts(packed: _Packed, t0: int, t1: int, num_classes: int, bufs: _Buffers) -> np.ndarray:
    """(t1-t0, M, C) positive flips per class: popcount(teacher AND NOT student), summed per class.

    A few teachers at a time (a ~4 MiB AND buffer that stays in cache: 2x faster than one big pass)."""
    b, m, w = t1 - t0, *packed.bits.shape
    pc = bufs.get("popcount", (b, m, w), np.uint8)
    step = max(1, min(b, (4 << 20) // max(1, m * w * 8)))
    scratch = bufs.get("and", (step, m, w), np.uint64)
    for i in range(0, b, step):
        j = min(b, i + step)
        both = np.bitwise_and(packed.bits[t0 + i : t0 + j, None, :], packed.not_bits[None, :, :],
                              out=scratch[: j - i])
        _popcount(both, out=pc[i:j])
    if packed.one_word:
        return pc
    per_class = np.add.reduceat(pc, packed.starts, axis=-1, dtype=packed.count_dtype)
    if len(packed.nonempty) == num_classes:
        return per_class
    out = np.zeros((b, m, num_classes), dtype=packed.count_dtype)
    out[..., packed.nonempty] = per_class
    return out


def _class_stats(counts: np.ndarray, xlogx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Totals, entropy and top-p class counts along the last (class) axis of ``counts``.

    Each row is radix-sorted and reduced to runs of equal counts (a row has at most
    ``max count + 1`` distinct values, ~25 for 50 samples a class), so entropy and top-p touch runs,
    not classes: ``sum n ln n = sum over runs of len * v ln v``, and the top-p search walks runs from
    the largest count down, taking ``ceil(missing mass / v)`` classes from the run that crosses
    ``p/100 * total`` (exact, in integers).
    """
    shape = counts.shape[:-1]
    c = counts.shape[-1]
    flat = counts.reshape(-1, c)
    r = len(flat)
    total = np.zeros(r, dtype=np.int64)
    top = np.zeros((len(TOP_P), r), dtype=np.int64)
    entropy = np.zeros(r)
    if r == 0 or c == 0:
        return total.reshape(shape), entropy.reshape(shape), top.reshape(len(TOP_P), *shape)
    ordered = np.sort(flat, axis=1, kind="stable")  # radix sort for 8/16-bit counts
    change = np.empty((r, c), dtype=bool)
    change[:, 0] = True
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=change[:, 1:])
    starts = np.flatnonzero(change)
    del change
    values = ordered.ravel()[starts]
    lengths = np.diff(starts, append=r * c)
    keep = values > 0
    # Reversed: rows descending, and within a row the runs from the largest count down.
    starts, values, lengths = starts[keep][::-1], values[keep][::-1].astype(np.int64), lengths[keep][::-1]
    rows = starts // c
    mass = values * lengths
    total = np.bincount(rows, weights=mass, minlength=r).astype(np.int64)  # exact below 2**53
    s = np.bincount(rows, weights=xlogx[values] * lengths, minlength=r)
    safe = np.maximum(total, 1)
    entropy = np.where(total > 0, np.maximum(np.log(safe) - s / safe, 0.0), 0.0)

    cum = np.cumsum(mass)  # inclusive, over all rows (monotone: rows follow each other)
    cum_excl = cum - mass
    classes_excl = np.cumsum(lengths) - lengths
    first = np.flatnonzero(np.diff(rows, prepend=-1))  # first run of each row with flips
    row_ids = rows[first]
    offset_mass = cum_excl[first]
    offset_classes = classes_excl[first]
    cum100 = 100 * cum
    for j, p in enumerate(TOP_P):
        target = 100 * offset_mass + p * total[row_ids]  # 100 * (mass before the row + p% of its total)
        run = np.searchsorted(cum100, target, side="left")
        missing = target - 100 * cum_excl[run]
        step = 100 * values[run]
        top[j, row_ids] = classes_excl[run] - offset_classes + (missing + step - 1) // step
    return total.reshape(shape), entropy.reshape(shape), top.reshape(len(TOP_P), *shape)


def _threads(threads: int | None) -> int:
    if threads:
        return max(1, int(threads))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def flip_stats(correct: np.ndarray, labels: np.ndarray, num_classes: int, *,
               block_bytes: int = DEFAULT_BLOCK_BYTES, threads: int | None = None,
               on_block: BlockSink | None = None) -> dict[str, np.ndarray]:
    """Positive flip statistics of every ordered pair: dict of (M, M) arrays indexed [teacher, student]
    — ``count`` (int64), ``entropy`` (float64), ``top{p}`` (int64). Diagonal entries are 0.

    Teachers go in blocks sized so that the blocks in flight (one per thread) fit ``block_bytes``;
    ``on_block`` sees each block's per-class counts (e.g. to stream them to HDF5) in teacher order.
    ``threads``: worker threads; by default all cores for big tables, inline for small ones.
    """
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    m, n = correct.shape
    if labels.shape != (n,):
        raise ValueError(f"labels {labels.shape} do not match correct {correct.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    packed = _pack(correct, labels, num_classes)
    words = packed.bits.shape[1]
    xlogx = np.arange(packed.biggest + 1, dtype=np.float64)
    xlogx[1:] *= np.log(xlogx[1:])
    # Bytes per (teacher, student) row: popcounts, per-class counts, sorted copy, change mask, and
    # the run arrays (at most min(C, biggest + 1) runs a row, ~10 int64 each); plus 4 MiB scratch.
    item = np.dtype(packed.count_dtype).itemsize
    per_row = words + num_classes * (2 * item + 1) + min(num_classes, packed.biggest + 1) * 80 + 64
    # Threads pay off for big tables only (~0.1 s of work and more): by default small ones run inline.
    workers = _threads(threads) if threads or m * m * (words + num_classes) >= 2e8 else 1
    # Within the budget, blocks of ~_BLOCK_TARGET bytes of counts: larger ones fall out of cache.
    target = max(1, _BLOCK_TARGET // max(1, m * num_classes * item))
    rows_per_block = int(max(1, min(m, target, block_bytes // workers // max(1, per_row * m))))
    blocks = [(t0, min(m, t0 + rows_per_block)) for t0 in range(0, m, rows_per_block)]
    out = {"count": np.zeros((m, m), np.int64), "entropy": np.zeros((m, m))}
    out.update({f"top{p}": np.zeros((m, m), np.int64) for p in TOP_P})
    bufs = _Buffers()

    def work(block: tuple[int, int]) -> tuple[int, int, np.ndarray | None]:
        t0, t1 = block
        counts = _block_counts(packed, t0, t1, num_classes, bufs)
        total, entropy, top = _class_stats(counts, xlogx)
        out["count"][t0:t1] = total
        out["entropy"][t0:t1] = entropy
        for j, p in enumerate(TOP_P):
            out[f"top{p}"][t0:t1] = top[j]
        return t0, t1, counts.copy() if on_block is not None and workers > 1 else counts

    def emit(results: Iterable[tuple[int, int, np.ndarray]]) -> None:
        for t0, t1, counts in results:
            if on_block is not None:
                on_block(t0, t1, counts, out["count"][t0:t1])

    if workers == 1 or len(blocks) == 1:
        emit(map(work, blocks))
    else:
        emit(_bounded_map(work, blocks, workers))
    return out


def _bounded_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map`` on a thread pool (numpy releases the GIL in the heavy steps), in order, with at most
    ``2 * workers`` results pending so a slow consumer does not pile up blocks in memory."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# -------------------------------------------------------------------------------------- forecast


def _order_keys(values: np.ndarray) -> np.ndarray:
    """Signed integers ordered exactly as the float ``values`` (IEEE bit trick; -0.0 counts as 0.0,
    NaN as larger than +inf). Integers pass through as int64."""
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.floating):
        return v.astype(np.int64)
    ints = {2: np.int16, 4: np.int32}.get(v.dtype.itemsize, np.int64)
    if ints is np.int64:
        v = v.astype(np.float64)
    v = v + v.dtype.type(0)  # -0.0 -> +0.0 (and a contiguous copy)
    bits = v.view(ints)
    return bits ^ ((bits >> (8 * bits.itemsize - 1)) & ints(np.iinfo(ints).max))


def _rank_dtype(m: int) -> Any:
    return np.uint8 if m <= 256 else np.uint16 if m <= 65536 else np.int64


def _dense_ranks(values: np.ndarray) -> np.ndarray:
    """(N, M) per-sample ranks of the (M, N) ``values`` (equal values share a rank), in the smallest
    integer type that holds M: comparing narrow ranks is 1.5-2.5x faster than comparing floats.

    The argsort comes from one SIMD sort of ``key << 32 | model`` integers (``np.argsort`` is several
    times slower), and the ranks from one flat cumulative sum of "value changed" flags."""
    keys = _order_keys(np.ascontiguousarray(np.asarray(values).T))
    n, m = keys.shape
    dtype = _rank_dtype(m)
    if keys.dtype.itemsize <= 4 and m < 2**31:
        packed = (keys.astype(np.int64) << 32) | np.arange(m, dtype=np.int64)
        packed.sort(axis=1)
        order = packed & 0xFFFFFFFF
        sv = packed >> 32
    else:
        order = np.argsort(keys, axis=1)
        sv = np.take_along_axis(keys, order, axis=1)
    new = np.empty((n, m), dtype=bool)
    new[:, 0] = True
    np.not_equal(sv[:, 1:], sv[:, :-1], out=new[:, 1:])
    dense = np.cumsum(new.ravel(), dtype=np.int64).reshape(n, m)
    dense -= dense[:, :1]
    ranks = np.empty((n, m), dtype=dtype)
    np.put_along_axis(ranks, order, dense.astype(dtype), axis=1)
    return ranks


def pairwise_greater(values: np.ndarray, *, threads: int | None = None, chunk_bytes: int = 1 << 18,
                     rank_chunk: int = 4096) -> np.ndarray:
    """``out[t, s]`` = number of samples i with ``values[t, i] > values[s, i]`` (strictly), all pairs.

    Samples go in chunks of ``rank_chunk``: per chunk the models are ranked per sample (narrow
    integers, ties sharing a rank), then each sample's M ranks are compared against each other
    (M × M; for small M several samples at once, ``chunk_bytes``) and summed in uint8 counters
    flushed every 255 samples. Memory stays O(M² + M·rank_chunk); sample ranges run on all cores.
    float16 values with M > 256 are compared as order-preserving int16 keys without ranking.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be (models, samples), got {values.shape}")
    m, n = values.shape
    if m == 0 or n == 0:
        return np.zeros((m, m), np.int64)
    direct = values.dtype == np.float16 and m > 256
    k = int(min(255, max(1, chunk_bytes // (m * m))))
    rank_chunk = max(rank_chunk, k)
    workers = min(_threads(threads), max(1, n // (4 * k))) if threads or m * m * n >= 1e9 else 1
    bounds = np.linspace(0, n, workers + 1).astype(int)

    def work(lo: int, hi: int) -> np.ndarray:
        acc = np.zeros((m, m), np.int64)
        acc8 = np.zeros((m, m), np.uint8)
        part = np.empty((m, m), np.uint8)
        buf = np.empty((k, m, m), dtype=bool)
        pending = 0
        for c0 in range(lo, hi, rank_chunk):
            block = values[:, c0 : min(hi, c0 + rank_chunk)]
            ranks = _order_keys(np.ascontiguousarray(block.T)) if direct else _dense_ranks(block)
            for i in range(0, len(ranks), k):
                x = ranks[i : i + k]
                b = buf[: len(x)]
                np.greater(x[:, :, None], x[:, None, :], out=b)
                if len(x) == 1:
                    np.add(acc8, b[0].view(np.uint8), out=acc8)
                else:
                    np.add.reduce(b.view(np.uint8), axis=0, dtype=np.uint8, out=part)
                    np.add(acc8, part, out=acc8)
                pending += len(x)
                if pending + k > 255:
                    acc += acc8
                    acc8[...] = 0
                    pending = 0
        acc += acc8
        return acc

    if workers == 1:
        return work(0, n)
    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(work, bounds[:-1], bounds[1:]))


# ------------------------------------------------------------------------------------------ table


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


# ----------------------------------------------------------------------------------------- output


def _top_teacher_per_student(m: int) -> tuple[Callable[..., None], Callable[[], tuple[list, list, np.ndarray]]]:
    """A block sink keeping, for every student, the per-class counts of its teacher with the most
    positive flips (ties: the first teacher), and a getter of the result."""
    best = np.full(m, -1, np.int64)
    best_teacher = np.full(m, -1, np.int64)
    rows: dict[int, np.ndarray] = {}

    def sink(t0: int, t1: int, counts: np.ndarray, totals: np.ndarray) -> None:
        tot = totals.astype(np.int64).copy()
        for j in range(t1 - t0):  # mask the self-pairs
            tot[j, t0 + j] = -1
        arg = tot.argmax(axis=0)
        val = tot[arg, np.arange(m)]
        better = val > best
        for s in np.flatnonzero(better):
            best[s] = val[s]
            best_teacher[s] = t0 + arg[s]
            rows[int(s)] = counts[arg[s], s].astype(np.int64)

    def result() -> tuple[list, list, np.ndarray]:
        students = [s for s in range(m) if best_teacher[s] >= 0]
        return ([int(best_teacher[s]) for s in students], students,
                np.stack([rows[s] for s in students]) if students else np.zeros((0, 0), np.int64))

    return sink, result


def write_complementarity(out_parquet: str | Path, out_h5: str | Path, correct: np.ndarray,
                          labels: np.ndarray, num_classes: int, names: Sequence[str],
                          probs_true: np.ndarray | None = None, conf: np.ndarray | None = None, *,
                          classes: Sequence[str] | None = None,
                          pairs: Sequence[tuple[str, str]] | None = None,
                          h5_max_bytes: int = DEFAULT_H5_MAX_BYTES, attrs: dict[str, Any] | None = None,
                          block_bytes: int = DEFAULT_BLOCK_BYTES, threads: int | None = None) -> pl.DataFrame:
    """Compute :func:`pair_table` and write it (parquet, long format) and the per-class positive flip
    counts (HDF5), both atomically.

    ``per_class.h5`` holds ``pos_flips_per_class`` int64: the full (M, M, C) tensor [teacher, student,
    class] when M·M·C·8 bytes ≤ ``h5_max_bytes`` (attr ``scope`` = "all pairs"), streamed block by
    block so it never sits in memory whole; otherwise (P, C) rows for selected pairs only, named by
    datasets ``teacher``/``student`` — ``pairs`` if given, else each student's teacher with the most
    positive flips — with ``scope`` saying which and why.
    """
    names = [str(x) for x in names]
    m = len(names)
    classes = [str(c) for c in classes] if classes is not None else [str(c) for c in range(num_classes)]
    full_bytes = m * m * num_classes * 8
    full = full_bytes <= h5_max_bytes
    index = {name: i for i, name in enumerate(names)}
    if pairs is not None:
        unknown = sorted({x for pair in pairs for x in pair} - set(index))
        if unknown:
            raise KtError(f"pairs name unknown model(s) {unknown}; known: {names}")
    base = {"format_version": FORMAT_VERSION, "kind": "complementarity", "models": names, "classes": classes,
            "num_samples": int(np.asarray(labels).shape[0]), "axes": "teacher, student, class",
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **(attrs or {})}
    out_h5 = Path(out_h5)
    with atomic_path(out_h5) as tmp, open_h5(tmp, "w") as f:
        if full:
            ds = f.create_dataset("pos_flips_per_class", shape=(m, m, num_classes), dtype=np.int64,
                                  chunks=(1, max(1, min(m, (1 << 17) // max(1, num_classes))), num_classes)
                                  if m and num_classes else None)

            def sink(t0: int, t1: int, counts: np.ndarray, totals: np.ndarray) -> None:
                ds[t0:t1] = counts.astype(np.int64)

            table = pair_table(correct, labels, num_classes, names, probs_true, conf, block_bytes=block_bytes,
                               threads=threads, on_block=sink)
            scope = "all pairs"
        else:
            if pairs is not None:
                wanted = [(index[t], index[s]) for t, s in pairs if t != s]
                by_teacher: dict[int, list[int]] = {}
                for i, (t, _) in enumerate(wanted):
                    by_teacher.setdefault(t, []).append(i)
                rows = np.zeros((len(wanted), num_classes), np.int64)

                def sink(t0: int, t1: int, counts: np.ndarray, totals: np.ndarray) -> None:
                    for t in range(t0, t1):
                        for i in by_teacher.get(t, []):
                            rows[i] = counts[t - t0, wanted[i][1]]

                table = pair_table(correct, labels, num_classes, names, probs_true, conf,
                                   block_bytes=block_bytes, threads=threads, on_block=sink)
                teachers, students = [t for t, _ in wanted], [s for _, s in wanted]
                how = "the pairs passed in"
            else:
                sink, result = _top_teacher_per_student(m)
                table = pair_table(correct, labels, num_classes, names, probs_true, conf,
                                   block_bytes=block_bytes, threads=threads, on_block=sink)
                teachers, students, rows = result()
                how = "for each student the teacher with the most positive flips"
            scope = (f"selected pairs: {how} (the full tensor, M*M*C*8 = {full_bytes} bytes, exceeds "
                     f"h5_max_bytes = {h5_max_bytes})")
            f.create_dataset("pos_flips_per_class", data=rows.reshape(len(teachers), num_classes))
            f.create_dataset("teacher", data=np.array([names[t] for t in teachers], dtype=object),
                             dtype=_str_dtype())
            f.create_dataset("student", data=np.array([names[s] for s in students], dtype=object),
                             dtype=_str_dtype())
            base["axes"] = "pair, class"
        set_attrs(f, {**base, "scope": scope, "h5_max_bytes": int(h5_max_bytes)})
    write_table(table, out_parquet)
    return table


def _str_dtype() -> Any:
    import h5py

    return h5py.string_dtype()


def write_table(table: pl.DataFrame, out: str | Path) -> None:
    """Write a polars table to parquet atomically."""
    with atomic_path(out) as tmp:
        table.write_parquet(tmp)


def complementarity(files: Sequence[str | Path], out_parquet: str | Path, out_h5: str | Path, *,
                    pairs: Sequence[tuple[str, str]] | None = None, h5_max_bytes: int = DEFAULT_H5_MAX_BYTES,
                    threads: int | None = None) -> pl.DataFrame:
    """The CLI step: eval logits files → ``pairs.parquet`` + ``per_class.h5``; returns the table."""
    pred = load_predictions(files)
    if len(pred.names) < 2:
        raise KtError(f"complementarity needs at least two models' eval logits; got {len(pred.names)} "
                      f"({', '.join(map(str, pred.files))}). Add models to the config.")
    attrs = {"files": [str(f) for f in pred.files],
             "dataset_fingerprint": pred.attrs.get("dataset_fingerprint", ""),
             "dataset": pred.attrs.get("dataset", ""), "split": pred.attrs.get("split", "")}
    return write_complementarity(out_parquet, out_h5, pred.correct, pred.labels, pred.num_classes, pred.names,
                                 pred.probs_true, pred.conf, classes=pred.classes, pairs=pairs,
                                 h5_max_bytes=h5_max_bytes, attrs=attrs, threads=threads)

