"""The forecast columns: for every ordered pair, the number of samples on which one model's value
(true-class probability, or top-1 confidence) is strictly greater than the other's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from kt.complementarity.flips import worker_threads


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
    workers = min(worker_threads(threads), max(1, n // (4 * k))) if threads or m * m * n >= 1e9 else 1
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


