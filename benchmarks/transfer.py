"""Benchmark: the transfer loop's per-step overhead, and the frozen-output cache against the online loop.

Real data: a stratified Fashion-MNIST train subset (default 2,048 images, 16 steps of batch 128) and a
small eval subset (evaluation is excluded from every training figure). Models: tiny timm ResNets at
28 px with seeded random weights saved to files; the teacher is wider (channels 32-256, about 4x the
student's FLOPs) than the student (channels 16-128), so the frozen models dominate the online step.

(a) **kt vs bare, per training step.** kt: ``kt.transfer.transfer(teacher, student, "kl_dp", ...)`` with
    ``epochs=1``; the per-step time is the metrics' ``seconds`` of epoch 1 (the whole epoch loop: batch
    slicing, the seeded augmentation plan, per-model normalisation, the three forwards, loss, finite
    check, ``loss.item()``, backward, SGD step; not evaluation, checkpointing or set-up) divided by the
    number of steps. Run with ``augment="none"`` (the same work as the bare loop) and with the default
    ``flip_crop`` (reported separately). Bare: the same three models loaded from the same files, every
    image normalised beforehand into one float tensor, a fresh random order, then per batch: teacher and
    frozen initial student under ``no_grad``, the student with grad, the KL+DP loss written out, backward
    and ``torch.optim.SGD`` (same lr, momentum, weight decay). Both run under the same
    ``torch.set_num_threads`` and with ``torch.use_deterministic_algorithms(True)`` (kt turns it on for
    CPU runs, process-wide), warmed up, interleaved, best of ``--repeats``. Target kt / bare <= 1.10.

(b) **frozen-output cache vs online.** ``build_cache`` (teacher and initial-student logits on
    ``cache_views`` seeded views) is timed once per repeat; the cached and the online ``transfer`` are
    timed by their training seconds (sum of the metrics' ``seconds``) and by whole-call wall time. The
    speed-up is online / cached training time (target >= 1.8 when the teacher costs at least as much as
    the student); break-even = build time / time saved per run, i.e. how many strategy runs of
    ``--cache-epochs`` epochs pay for the cache (every strategy of a pair shares one cache). The final
    student logits of both runs are compared (bit-identical on the CPU).

Usage::

    .venv/bin/python benchmarks/transfer.py                    # ~3-5 minutes on 2 cores
    .venv/bin/python benchmarks/transfer.py --train 1024 --repeats 2 --skip-cache
    .venv/bin/python benchmarks/transfer.py --profile          # cProfile one kt epoch (stderr)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import kt.transfer
from kt.artifacts import read_logits
from kt.data import load_split
from kt.models import Classifier, ModelSpec, create_model
from kt.preprocess import normalize
from kt.transfer import TransferSettings, build_cache, transfer

PREP = {"size": 28, "crop_pct": 1.0}
STUDENT = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16, "stem_type": "deep"}
TEACHER = {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem_width": 32, "stem_type": "deep"}


def machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def saved_spec(name: str, args: dict[str, Any], seed: int, folder: Path) -> ModelSpec:
    """A tiny timm ResNet with seeded random weights, saved to a file the spec then names."""
    torch.manual_seed(seed)
    model = create_model(ModelSpec(id="timm:resnet18", num_classes=10, args=args, preprocess=PREP, pretrained=False))
    path = folder / f"{name}.pth"
    torch.save(model.body.state_dict(), path)
    return ModelSpec(id="timm:resnet18", weights=str(path), num_classes=10, args=args, preprocess=PREP, name=name)


# ---------------------------------------------------------------------------------------------- (a) bare loop


class Bare:
    """The minimal hand-written KL+DP loop on preloaded tensors."""

    def __init__(self, teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any],
                 settings: TransferSettings) -> None:
        train = load_split(dataset, "train")
        self.teacher = create_model(teacher).eval().requires_grad_(False)
        self.initial = create_model(student).eval().requires_grad_(False)
        self.settings = settings
        self.labels = torch.as_tensor(train.labels)
        images = train.images.expand(-1, 3, -1, -1)
        self.x_teacher = normalize(images, self.teacher.preprocess).contiguous()
        self.x_student = normalize(images, self.initial.preprocess).contiguous()
        self.student_spec = student

    def fresh_student(self) -> tuple[Classifier, torch.optim.Optimizer]:
        student = create_model(self.student_spec).train()
        s = self.settings
        lr = s.lr or 1e-4 * s.batch_size / 256
        return student, torch.optim.SGD(student.parameters(), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)

    def epoch(self, seed: int) -> tuple[float, int, float]:
        """(wall seconds, steps, CPU seconds) of one epoch on a fresh student (model creation not timed)."""
        student, opt = self.fresh_student()
        n, bs = len(self.labels), self.settings.batch_size
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        steps = 0
        c0, t0 = time.process_time(), time.perf_counter()
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            y = self.labels[idx]
            with torch.no_grad():
                z_t = self.teacher(self.x_teacher[idx])
                z_0 = self.initial(self.x_student[idx])
                p_t, p_0 = z_t.softmax(1), z_0.softmax(1)
                mask = p_t.gather(1, y[:, None]) > p_0.gather(1, y[:, None])
                log_target = torch.where(mask, z_t, z_0).log_softmax(1)
            z_s = student(self.x_student[idx])
            loss = F.kl_div(z_s.log_softmax(1), log_target, reduction="batchmean", log_target=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        return time.perf_counter() - t0, steps, time.process_time() - c0


class CpuClock:
    """Stands in for the ``time`` module inside ``kt.transfer``: its ``perf_counter`` (called exactly at the
    start and the end of each epoch's loop) returns wall time as usual and records the process CPU time of
    the same instants, so an epoch's CPU seconds can be reported beside the metrics' wall seconds."""

    def __init__(self) -> None:
        self.cpu: list[float] = []

    def perf_counter(self) -> float:
        self.cpu.append(time.process_time())
        return time.perf_counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def kt_epoch(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
             out: Path) -> tuple[float, int, float, float]:
    """(wall seconds of epoch 1's loop, steps, CPU seconds of that loop, whole-call wall seconds) of one kt run."""
    clock = CpuClock()
    kt.transfer.time = clock
    try:
        t0 = time.perf_counter()
        metrics = transfer(teacher, student, "kl_dp", dataset, out, settings)
        wall = time.perf_counter() - t0
    finally:
        kt.transfer.time = time
    row = metrics.filter(metrics["epoch"] == 1).row(0, named=True)
    return row["seconds"], row["step"], clock.cpu[1] - clock.cpu[0], wall


def part_a(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
           folder: Path, repeats: int) -> dict[str, Any]:
    bare = Bare(teacher, student, dataset, settings)
    plain = replace(settings, epochs=1, augment="none")
    augmented = replace(settings, epochs=1)
    # warm-up: imports, oneDNN primitives for these shapes, the allocator
    kt_epoch(teacher, student, dataset, plain, folder / "warm")
    bare.epoch(0)
    runs: dict[str, list[float]] = {k: [] for k in ("kt", "kt_flip_crop", "bare", "kt_cpu", "kt_flip_crop_cpu",
                                                    "bare_cpu", "kt_wall")}
    for r in range(repeats):  # interleaved, so background load hits every side alike
        seconds, steps, cpu = bare.epoch(r)
        runs["bare"].append(seconds / steps)
        runs["bare_cpu"].append(cpu / steps)
        for key, s in (("kt", plain), ("kt_flip_crop", augmented)):
            seconds, steps, cpu, wall = kt_epoch(teacher, student, dataset, s, folder / f"a-{key}-{r}")
            runs[key].append(seconds / steps)
            runs[f"{key}_cpu"].append(cpu / steps)
            if key == "kt":
                runs["kt_wall"].append(wall)
    best = {k: min(v) for k, v in runs.items()}
    return {"steps": steps, "kt_ms": 1e3 * best["kt"], "kt_flip_crop_ms": 1e3 * best["kt_flip_crop"],
            "bare_ms": 1e3 * best["bare"], "ratio": best["kt"] / best["bare"],
            "ratio_flip_crop": best["kt_flip_crop"] / best["bare"], "kt_cpu_ms": 1e3 * best["kt_cpu"],
            "kt_flip_crop_cpu_ms": 1e3 * best["kt_flip_crop_cpu"], "bare_cpu_ms": 1e3 * best["bare_cpu"],
            "ratio_cpu": best["kt_cpu"] / best["bare_cpu"],
            "ratio_flip_crop_cpu": best["kt_flip_crop_cpu"] / best["bare_cpu"], "kt_call_wall_s": best["kt_wall"],
            "runs_ms": {k: [round(1e3 * x, 2) for x in v] for k, v in runs.items() if k != "kt_wall"}}


# ---------------------------------------------------------------------------------------------- (b) cache


def part_b(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
           folder: Path, repeats: int, epochs: int) -> dict[str, Any]:
    online = replace(settings, epochs=epochs)
    cached = replace(settings, epochs=epochs, cache_views=epochs)  # one view per epoch: same views as online
    runs: dict[str, list[float]] = {k: [] for k in ("build", "build_cpu", "online_train", "cached_train",
                                                    "online_cpu", "cached_cpu", "online_wall", "cached_wall")}
    cache = folder / "cache.h5"
    build_cache(teacher, student, dataset, cached, folder / "warm-cache.h5")  # warm-up
    for r in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        build_cache(teacher, student, dataset, cached, cache)
        runs["build"].append(time.perf_counter() - t0)
        runs["build_cpu"].append(time.process_time() - c0)
        for name, s, kwargs in (("online", online, {}), ("cached", cached, {"cache": cache})):
            clock = CpuClock()
            kt.transfer.time = clock
            try:
                t0 = time.perf_counter()
                metrics = transfer(teacher, student, "kl_dp", dataset, folder / f"b-{name}-{r}", s, **kwargs)
                runs[f"{name}_wall"].append(time.perf_counter() - t0)
            finally:
                kt.transfer.time = time
            runs[f"{name}_train"].append(float(metrics["seconds"].sum()))
            runs[f"{name}_cpu"].append(sum(clock.cpu[i + 1] - clock.cpu[i] for i in range(0, len(clock.cpu), 2)))
    best = {k: min(v) for k, v in runs.items()}
    saved = best["online_train"] - best["cached_train"]
    saved_cpu = best["online_cpu"] - best["cached_cpu"]
    same = np.array_equal(read_logits(folder / "b-online-0" / "eval_after.h5").logits,
                          read_logits(folder / "b-cached-0" / "eval_after.h5").logits)
    return {"epochs": epochs, "build_s": best["build"], "online_train_s": best["online_train"],
            "cached_train_s": best["cached_train"], "speedup_train": best["online_train"] / best["cached_train"],
            "build_cpu_s": best["build_cpu"], "online_cpu_s": best["online_cpu"], "cached_cpu_s": best["cached_cpu"],
            "speedup_cpu": best["online_cpu"] / best["cached_cpu"],
            "online_wall_s": best["online_wall"], "cached_wall_s": best["cached_wall"],
            "speedup_wall": best["online_wall"] / best["cached_wall"],
            "break_even_runs": best["build"] / saved if saved > 0 else float("inf"),
            "break_even_runs_cpu": best["build_cpu"] / saved_cpu if saved_cpu > 0 else float("inf"),
            "identical_logits": bool(same), "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()}}


def profile_kt(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
               out: Path, top: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    transfer(teacher, student, "kl_dp", dataset, out, replace(settings, epochs=1, augment="none"))
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=2048, help="stratified Fashion-MNIST train subset")
    ap.add_argument("--eval", type=int, default=500, help="eval subset (evaluation is not timed)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each side (best is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every side")
    ap.add_argument("--cache-epochs", type=int, default=2, help="epochs (= cache views) in part (b)")
    ap.add_argument("--skip-cache", action="store_true", help="only part (a)")
    ap.add_argument("--skip-overhead", action="store_true", help="only part (b)")
    ap.add_argument("--profile", action="store_true", help="cProfile one kt epoch (printed to stderr)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as kt.transfer does on the CPU, for the bare loop too

    dataset = {"name": "fashion_mnist", "subset": {"train": args.train, "eval": args.eval}}
    settings = TransferSettings(batch_size=args.batch_size, device="cpu")
    info = {"cpu": machine(), "cpus": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "train": args.train,
            "batch_size": args.batch_size, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_before": list(os.getloadavg())}
    results: dict[str, Any] = {"machine": info}
    with tempfile.TemporaryDirectory(prefix="kt-bench-transfer-") as tmp:
        folder = Path(tmp)
        teacher = saved_spec("teacher_w32", TEACHER, 1, folder)
        student = saved_spec("student_w16", STUDENT, 2, folder)
        if not args.skip_overhead:
            results["overhead"] = part_a(teacher, student, dataset, settings, folder, args.repeats)
        if not args.skip_cache:
            results["cache"] = part_b(teacher, student, dataset, settings, folder, args.repeats, args.cache_epochs)
        if args.profile:
            print(profile_kt(teacher, student, dataset, settings, folder / "profile"), file=sys.stderr)
    info["loadavg_after"] = list(os.getloadavg())

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"# {info['cpu']}, {info['cpus']} CPUs, torch {info['torch']}, {info['threads']} threads, "
          f"Fashion-MNIST train subset {args.train}, batch {args.batch_size}, best of {args.repeats}; "
          f"load average {info['loadavg_before'][0]:.2f} -> {info['loadavg_after'][0]:.2f}")
    if "overhead" in results:
        a = results["overhead"]
        print(f"(a) KL+DP step, teacher {TEACHER['channels']} / student {STUDENT['channels']}, {a['steps']} steps:")
        print(f"    kt {a['kt_ms']:.1f} ms/step (augment none), {a['kt_flip_crop_ms']:.1f} ms/step (flip_crop); "
              f"bare {a['bare_ms']:.1f} ms/step")
        print(f"    kt/bare = {a['ratio']:.3f} (flip_crop: {a['ratio_flip_crop']:.3f}); target <= 1.10: "
              f"{'met' if a['ratio'] <= 1.10 else 'NOT met'}; whole kt call {a['kt_call_wall_s']:.2f} s")
        print(f"    CPU time: kt {a['kt_cpu_ms']:.1f} ms/step (none), {a['kt_flip_crop_cpu_ms']:.1f} (flip_crop); "
              f"bare {a['bare_cpu_ms']:.1f}; kt/bare = {a['ratio_cpu']:.3f} "
              f"(flip_crop: {a['ratio_flip_crop_cpu']:.3f})")
        print(f"    runs (ms/step): {a['runs_ms']}")
    if "cache" in results:
        b = results["cache"]
        print(f"(b) frozen-output cache, {b['epochs']} epochs = {b['epochs']} views:")
        print(f"    build {b['build_s']:.2f} s; training online {b['online_train_s']:.2f} s, "
              f"cached {b['cached_train_s']:.2f} s -> speed-up {b['speedup_train']:.2f}x "
              f"(target >= 1.8: {'met' if b['speedup_train'] >= 1.8 else 'NOT met'})")
        print(f"    whole calls: online {b['online_wall_s']:.2f} s, cached {b['cached_wall_s']:.2f} s "
              f"({b['speedup_wall']:.2f}x); break-even after {b['break_even_runs']:.2f} strategy runs of "
              f"{b['epochs']} epochs; final logits identical: {b['identical_logits']}")
        print(f"    CPU time: build {b['build_cpu_s']:.2f} s; training online {b['online_cpu_s']:.2f} s, cached "
              f"{b['cached_cpu_s']:.2f} s -> {b['speedup_cpu']:.2f}x; break-even {b['break_even_runs_cpu']:.2f} runs")
        print(f"    runs (s): {b['runs_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
