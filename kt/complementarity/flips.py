"""Positive flip counts of every ordered pair per class, bit-packed (64 samples a word), with the
per-class entropy and top-p class counts; work runs in blocks of teachers on all cores, memory
bounded by ``block_bytes``."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_P = (2, 5, 20, 50)
"""The p (in %) of the ``top{p}`` columns and of the metrics' ``gain_in_top{p}_share``."""

DEFAULT_BLOCK_BYTES = 1 << 29
"""Working memory of one block of teachers (all blocks in flight together), 512 MiB."""

_BLOCK_TARGET = 16 << 20
"""Preferred size of one block's per-class counts (cache-friendly); the budget may make it smaller."""

BlockSink = Callable[[int, int, np.ndarray, np.ndarray], None]
"""``sink(t0, t1, counts, totals)``: counts (t1-t0, M, C) positive flips per class of teachers
t0..t1-1 against every student, totals (t1-t0, M) their sums; called in teacher order."""

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


def worker_threads(threads: int | None) -> int:
    """``threads`` when given, else the cores this process may run on (flips and forecast share it)."""
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
    workers = worker_threads(threads) if threads or m * m * (words + num_classes) >= 2e8 else 1
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


