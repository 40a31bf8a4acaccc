"""Benchmark: the all-pairs complementarity table against a loop of the per-pair reference.

Synthetic ImageNet-val-sized predictions (default 500 models × 50,000 samples × 1,000 classes, 50
samples a class): correctness is generated directly, correlated through a per-sample difficulty,
with per-model accuracies uniform in 60–90 %; the forecast inputs are per-sample true-class
probabilities (float32) and top-1 confidences (float16, so ties occur) tied to correctness.

Reports, for all M·(M−1) ordered pairs: the flip part (counts, per-class entropy, top-p), the
forecast part (two all-pairs comparisons over N samples), the whole ``pair_table``; the per-pair time
of ``naive_pair`` on a random sample of pairs in the same run, and the per-pair speed-up; peak
memory.

``--from-hdf5 K`` adds the loading of eval logits files: K distinct files of the full size (samples ×
classes float32, written like the extract step's) are loaded by the step's reader
(``load_predictions``) with 1 and 2 workers (threads and processes) and by the old reader (whole file,
float64 softmax) in the same run; the M-model loading time is computed from the per-file cost (M
files of ImageNet-val size would need M × 200 MB of disk). The figures of the step are timed on a
synthetic pair table of ``--figure-models`` models. Usage::

    .venv/bin/python benchmarks/complementarity.py                  # full size (~1 minute)
    .venv/bin/python benchmarks/complementarity.py --models 50 --samples 5000 --classes 100
    .venv/bin/python benchmarks/complementarity.py --models 1800 --from-hdf5 8   # the zoo: minutes
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import polars as pl

from kt.artifacts import FORMAT_VERSION, LogitsWriter, check_same_samples, read_logits, set_attrs
from kt.complementarity import flip_stats, load_predictions, naive_pair, pair_table, pairwise_greater, softmax_stats
from kt.complementarity.loading import DEFAULT_CHUNK_ROWS
from kt.errors import KtError
from kt.figures import plot_flip_heatmap, plot_knowledge_vs_accdiff


def synthetic(m: int, n: int, c: int, seed: int, forecast_dtype: str = "float32"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """correct (M, N) bool, labels (N,) balanced, p_true and conf (M, N) in ``forecast_dtype``."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % c).astype(np.int64)
    acc = rng.uniform(0.60, 0.90, m)
    difficulty = rng.standard_normal(n, dtype=np.float32)
    rho = 0.6  # models agree on which samples are hard, as real ones do
    thresholds = np.array([statistics.NormalDist().inv_cdf(a) for a in acc], dtype=np.float32)
    correct = np.empty((m, n), dtype=bool)
    p_true = np.empty((m, n), dtype=forecast_dtype)
    conf = np.empty((m, n), dtype=forecast_dtype)
    for i in range(m):
        noise = rng.standard_normal(n, dtype=np.float32)
        margin = thresholds[i] - (rho * difficulty + np.sqrt(1 - rho**2) * noise)
        correct[i] = margin > 0
        p = 1.0 / (1.0 + np.exp(-2.0 * margin))
        p_true[i] = p
        conf[i] = np.maximum(p, 1.0 / c) + 0.1 * rng.random(n, dtype=np.float32) * (1 - p)
    return correct, labels, p_true, conf


def write_logits_files(folder: Path, k: int, n: int, c: int, seed: int, block: int = 4096) -> list[Path]:
    """K distinct eval logits files in the extract step's layout (row chunks, float32), written block by
    block: logits N(0, 1.5²) with the true class raised (top-1 ~65-93 % at 1,000 classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % c).astype(np.int64)
    files = []
    for i in range(k):
        path = folder / f"model{i:04d}.h5"
        boost = rng.uniform(5.5, 7.5)  # top-1 ~65-93 % at 1,000 classes
        with h5py.File(path, "w") as f:
            writer = LogitsWriter(f, np.arange(n), labels, c)
            for start in range(0, n, block):
                z = rng.standard_normal((min(block, n - start), c), dtype=np.float32) * 1.5
                z[np.arange(len(z)), labels[start:start + len(z)]] += boost
                writer.write(start, z)
            writer.flush()
            set_attrs(f, {"format_version": FORMAT_VERSION, "kind": "logits", "model": f"model{i:04d}",
                          "num_classes": c, "dataset_fingerprint": f"synthetic-{seed}-{n}-{c}"})
        files.append(path)
    return files


def old_load(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reader before issue 14, as it was: each file whole (read_logits), serially, checks on the
    whole array, softmax statistics in float64; (correct, p_true, conf) stacked."""
    correct, p_true, conf, first = [], [], [], None
    for path in files:
        lf = read_logits(path)
        if not np.isfinite(lf.logits).all():
            raise KtError(f"{path} holds non-finite logits")
        labels = lf.labels.astype(np.int64)
        if first is None:
            first = lf
        else:
            check_same_samples(first, lf)
        correct.append(lf.predictions == labels)
        pt, cf = softmax_stats(lf.logits, labels)
        p_true.append(pt)
        conf.append(cf)
    return np.stack(correct), np.stack(p_true), np.stack(conf)


def drop_page_cache(files: list[Path]) -> None:
    """Ask the kernel to forget these files' cached pages (a cold read; best effort)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def traced_peak(fn, *args, **kwargs) -> int:
    """Peak bytes traced by tracemalloc (numpy buffers included) during one call."""
    tracemalloc.start()
    fn(*args, **kwargs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def rss_mib() -> float:
    """This process's peak RSS (children's is no use: a forked child counts its parent's pages)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loading_benchmark(args: argparse.Namespace) -> None:
    """Old vs new reader on K real-size files, interleaved rounds (best of --repeat each, so that other
    load on the machine hits every variant alike); the M-model loading time computed from the per-file
    cost."""
    k, n, c, m = args.from_hdf5, args.samples, args.classes, args.models
    folder = Path(tempfile.mkdtemp(prefix="kt-bench-logits-", dir=args.hdf5_dir))
    try:
        t0 = time.perf_counter()
        files = write_logits_files(folder, k, n, c, args.seed)
        size = sum(f.stat().st_size for f in files) / k
        print(f"\nloading: {k} files of {n} x {c} float32 ({size / 2**20:.0f} MiB each) written to {folder} "
              f"in {time.perf_counter() - t0:.1f} s; page cache "
              f"{'dropped before each run (cold; best effort)' if args.cold else 'warm (files just written)'}; "
              f"best of {args.repeat} interleaved rounds")
        variants = {"old: whole file, float64, serial": (old_load, {}),
                    "new: 1 worker": (load_predictions, dict(threads=1)),
                    "new: 2 threads": (load_predictions, dict(threads=2, pool="thread")),
                    "new: 2 processes (incl. ~1 s start)": (load_predictions, dict(threads=2, pool="process"))}
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for label, (fn, kw) in variants.items():
                if args.cold:
                    drop_page_cache(files)
                if fn is load_predictions:
                    kw = dict(kw, chunk_rows=args.chunk_rows)
                res, wall, cpu_s = timed(fn, files, **kw)
                if wall < best.get(label, (float("inf"), 0.0))[0]:
                    best[label] = (wall, cpu_s)
                if fn is old_load:
                    c_old, p_old, f_old = res
                else:  # the same answers as the old reader
                    assert np.array_equal(res.correct, c_old)
                    for got, want in ((res.probs_true, p_old), (res.conf, f_old)):
                        rel = np.abs(got.astype(np.float64) - want) / np.maximum(want, np.finfo(np.float32).tiny)
                        assert rel.max() < 1e-6, rel.max()
                del res
        del c_old, p_old, f_old
        for label, (wall, cpu_s) in best.items():
            print(f"  {label:<46}: {wall:7.2f} s wall, {cpu_s:7.2f} s CPU (this process), {wall / k:6.3f} s/file")
        t_old, one, threads2, procs2 = (best[label][0] for label in variants)
        print(f"  same results: correctness identical, p_true/conf within 1e-6 relative of the old float64 ones "
              f"(chunks of {args.chunk_rows} rows)")
        peak_old = traced_peak(old_load, files[:1])
        peak_new = traced_peak(load_predictions, files[:1], threads=1, chunk_rows=args.chunk_rows)
        print(f"  transient memory for 1 file (tracemalloc): old {peak_old / 2**20:.0f} MiB, new "
              f"{peak_new / 2**20:.1f} MiB (its 3 result rows + one block of logits; x workers in flight)")
        print(f"  speed-up vs old (same run): new 1 worker {t_old / one:.1f} x, 2 threads {t_old / threads2:.1f} x, "
              f"2 processes {t_old / procs2:.1f} x; 2 workers vs 1: threads {one / threads2:.2f} x, "
              f"processes {one / procs2:.2f} x")
        print(f"  computed for {m} models (per-file cost of this run x {m}; not measured): old "
              f"{t_old / k * m / 60:.1f} min, new with 1 worker {one / k * m / 60:.1f} min, with 2 threads "
              f"{threads2 / k * m / 60:.1f} min; the results held: {m * n * 9 / 2**20:.0f} MiB "
              "(bool + 2 float32 a sample and model)")
        print(f"  peak RSS so far: {rss_mib():.0f} MiB (the old reader's transient whole-file copies)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def synthetic_pair_table(m: int, seed: int) -> pl.DataFrame:
    """The columns the figures read, for all M·(M−1) ordered pairs (accuracies 60-90 %)."""
    rng = np.random.default_rng(seed)
    acc = rng.uniform(60, 90, m)
    t, s = np.divmod(np.arange(m * m), m)
    keep = t != s
    t, s = t[keep], s[keep]
    pos = np.clip(rng.normal(4 + 0.2 * (acc[t] - acc[s]), 1.0), 0.1, None)
    names = np.array([f"m{i:04d}" for i in range(m)])
    return pl.DataFrame({"teacher": names[t], "student": names[s], "teacher_acc": acc[t], "student_acc": acc[s],
                         "acc_diff": acc[t] - acc[s], "pos_flips": pos})


def figures_benchmark(m: int, seed: int) -> None:
    table = synthetic_pair_table(m, seed)
    folder = Path(tempfile.mkdtemp(prefix="kt-bench-figures-"))
    try:
        print(f"\nfigures on a synthetic pair table of {m} models ({table.height} ordered pairs):")
        for label, fn in (("flip heatmap", plot_flip_heatmap), ("knowledge vs accuracy difference",
                                                                 plot_knowledge_vs_accdiff)):
            out = folder / f"{fn.__name__}.png"
            _, wall, cpu_s = timed(fn, table, out)
            print(f"  {label:<46}: {wall:7.2f} s wall, {cpu_s:7.2f} s CPU, {out.stat().st_size / 1024:.0f} KiB PNG")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(result, best wall seconds, CPU seconds of that run) over ``repeat`` runs."""
    best = (None, float("inf"), 0.0)
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        res = fn(*args, **kwargs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best[1]:
            best = (res, wall, cpu)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=500)
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1_000)
    ap.add_argument("--naive-pairs", type=int, default=20, help="random pairs timed with naive_pair")
    ap.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    ap.add_argument("--forecast-dtype", default="float32", choices=["float16", "float32"],
                    help="dtype of the synthetic p_true/conf (load_predictions gives float32)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (naive and flip part)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-hdf5", type=int, default=0, metavar="K",
                    help="also time loading K real-size logits files (old vs new reader, 1 and 2 workers)")
    ap.add_argument("--hdf5-dir", default=None, help="where the K files go (default: the temp folder)")
    ap.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                    help="rows a loading worker reduces at a time")
    ap.add_argument("--cold", action="store_true", help="drop the files from the page cache before each load")
    ap.add_argument("--figure-models", type=int, default=None, help="models of the figures' pair table "
                    "(default: --models)")
    args = ap.parse_args()
    m, n, c = args.models, args.samples, args.classes
    pairs = m * (m - 1)

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    print(f"machine: {len(os.sched_getaffinity(0))} cores, {cpu}; numpy {np.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"size: {m} models x {n} samples x {c} classes = {pairs} ordered pairs; forecast inputs "
          f"{args.forecast_dtype}")
    if args.from_hdf5:
        loading_benchmark(args)

    (correct, labels, p_true, conf), t_gen, _ = timed(synthetic, m, n, c, args.seed, args.forecast_dtype)
    print(f"synthetic data: {t_gen:.1f} s, accuracies {correct.mean(1).min() * 100:.1f}-"
          f"{correct.mean(1).max() * 100:.1f} %")

    # The naive loop on a random sample of pairs (same data, same run), best of --repeat rounds.
    rng = np.random.default_rng(args.seed + 1)
    sample: list[tuple[int, int]] = []
    while len(sample) < min(args.naive_pairs, pairs):
        t, s = (int(x) for x in rng.integers(0, m, 2))
        if t != s:
            sample.append((t, s))

    def naive_all() -> list[dict]:
        return [naive_pair(correct[t], correct[s], labels, c, p_true[t], p_true[s], conf[t], conf[s])
                for t, s in sample]

    def naive_flips() -> list[dict]:
        return [naive_pair(correct[t], correct[s], labels, c) for t, s in sample]

    naive, t_naive, cpu_naive = timed(naive_all, repeat=args.repeat)
    _, t_naive_flip, cpu_naive_flip = timed(naive_flips, repeat=args.repeat)
    naive_pp, naive_flip_pp = t_naive / len(sample), t_naive_flip / len(sample)
    naive_fc_pp = max(naive_pp - naive_flip_pp, 1e-12)
    naive_cpu_pp, naive_flip_cpu_pp = cpu_naive / len(sample), cpu_naive_flip / len(sample)
    naive_fc_cpu_pp = max(naive_cpu_pp - naive_flip_cpu_pp, 1e-12)

    _, t_flips, cpu_flips = timed(flip_stats, correct, labels, c, threads=args.threads, repeat=args.repeat)
    _, t_fc_sup, cpu_fc_sup = timed(pairwise_greater, p_true, threads=args.threads)
    _, t_fc_unsup, cpu_fc_unsup = timed(pairwise_greater, conf, threads=args.threads)
    t_fc = t_fc_sup + t_fc_unsup

    names = [f"m{i:04d}" for i in range(m)]
    table, t_table, cpu_table = timed(pair_table, correct, labels, c, names, p_true, conf, threads=args.threads)
    tracemalloc.start()  # a second run for memory: tracing slows allocation, so not timed
    pair_table(correct, labels, c, names, p_true, conf, threads=args.threads)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Same answers as the reference on the sampled pairs.
    for (t, s), ref in zip(sample, naive, strict=True):
        row = table.row(t * (m - 1) + (s if s < t else s - 1), named=True)
        assert (row["teacher"], row["student"]) == (names[t], names[s])
        for key in ("pos_flip_count", "top2", "top5", "top20", "top50"):
            assert row[key] == ref[key], (key, row[key], ref[key])
        for key in ("pos_flips", "neg_flips", "pos_flip_entropy", "forecast_dp", "forecast_dp_unsup"):
            assert abs(row[key] - ref[key]) < 1e-9, (key, row[key], ref[key])

    def line(label: str, wall: float, cpu_s: float) -> str:
        return f"{label:<44}: {wall:7.2f} s wall, {cpu_s:7.2f} s CPU, {wall / pairs * 1e6:7.2f} us/pair"

    print("\nall ordered pairs (vectorised, results checked against naive_pair on the sampled pairs):")
    print(line("flip counts + entropy + top-p", t_flips, cpu_flips))
    print(line("forecast_dp + forecast_dp_unsup", t_fc, cpu_fc_sup + cpu_fc_unsup))
    print(line("pair_table (everything), target < 30 s", t_table, cpu_table))
    print(f"\nnaive_pair on {len(sample)} random pairs, per pair: {naive_pp * 1e6:.1f} us "
          f"(flip part {naive_flip_pp * 1e6:.1f} us, forecast {naive_fc_pp * 1e6:.1f} us; "
          f"a loop over all pairs: {naive_pp * pairs:.0f} s)")
    cpu_fc = cpu_fc_sup + cpu_fc_unsup
    print("\nspeed-up per pair (naive per pair / vectorised per pair, same run; wall | CPU seconds):")
    print(f"  flip counts + entropy + top-p : {naive_flip_pp / (t_flips / pairs):7.0f} x | "
          f"{naive_flip_cpu_pp / (cpu_flips / pairs):5.0f} x   (target >= 50 x)")
    print(f"  forecast (both columns)       : {naive_fc_pp / (t_fc / pairs):7.1f} x | "
          f"{naive_fc_cpu_pp / (cpu_fc / pairs):5.1f} x")
    print(f"  whole table                   : {naive_pp / (t_table / pairs):7.1f} x | "
          f"{naive_cpu_pp / (cpu_table / pairs):5.1f} x")
    inputs = correct.nbytes + p_true.nbytes + conf.nbytes + labels.nbytes
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\npeak traced memory in pair_table: {peak / 2**20:.0f} MiB ({peak / inputs:.1f} x the "
          f"{inputs / 2**20:.0f} MiB of inputs); process peak RSS {rss / 2**20:.0f} MiB")
    figures_benchmark(args.figure_models or m, args.seed)
    print(f"\nprocess peak RSS {rss_mib():.0f} MiB; load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
