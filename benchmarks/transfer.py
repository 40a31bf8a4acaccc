"""Benchmark: the transfer loop's per-step overhead, and the frozen-output cache against the online loop.

Real data: a stratified Fashion-MNIST train subset (default 2,048 images, 16 steps of batch 128) and a
small eval subset (evaluation is excluded from every training figure). Models: tiny timm ResNets at
28 px with seeded random weights saved to files; the teacher is wider (channels 32-256, about 4x the
student's FLOPs) than the student (channels 16-128), so the frozen models dominate the online step.

(a) **kt vs bare, per training step.** kt: ``kt.transfer.transfer(teacher, student, ...)`` with ``epochs=1``
    and ``kl_dp_timed``, kt's own ``KLDP`` registered through a plugin with one addition: ``after_step``
    records ``time.perf_counter()`` (KLDP's ``after_step`` does nothing, so the work is unchanged). The gap
    between two marks is one whole step of kt's loop: batch slicing, the seeded augmentation plan,
    per-model normalisation, the three forwards, loss, finite check, ``loss.item()``, backward, SGD step;
    never evaluation, checkpointing or set-up. Run with ``augment="none"`` (the same work as the bare loop)
    and with the default ``flip_crop`` (reported beside it). Bare: the same three models loaded from the
    same files, every image normalised beforehand into one float tensor, a fresh random order, then per
    batch: teacher and frozen initial student under ``no_grad``, the student with grad, the KL+DP loss
    written out, backward and ``torch.optim.SGD`` (same lr, momentum, weight decay), with the same marks.
    Both sides run under the same ``torch.set_num_threads`` and with
    ``torch.use_deterministic_algorithms(True)`` (kt turns it on for CPU runs, process-wide), warmed up,
    interleaved epoch by epoch, ``--repeats`` epochs each. Reported: the fastest step and the median step
    of each side (the first step of each epoch left out), and the best epoch's metrics ``seconds`` / steps.
    On a shared machine the fastest step is the steadiest estimate of the uncontended cost. Target
    kt / bare <= 1.10.

(b) **frozen-output cache vs online.** ``build_cache`` (teacher and initial-student logits on
    ``cache_views`` seeded views) is timed once per repeat; the cached and the online ``transfer`` are
    timed by their training seconds (sum of the metrics' ``seconds``), by whole-call wall time and per
    step (the post-step marks of part (a), fastest and median). The speed-up is online / cached training
    time (target >= 1.8 when the teacher costs at least as much as the student); break-even = build time /
    training time saved per run, i.e. how many strategy runs of ``--cache-epochs`` epochs pay for the cache
    (every strategy of a pair shares one cache). The final student logits of both runs are compared
    (bit-identical on the CPU).

Usage::

    .venv/bin/python benchmarks/transfer.py                    # ~2 minutes on 2 idle cores, more if shared
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
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from machine import machine  # benchmarks/machine.py: scripts run with benchmarks/ on sys.path

import kt
import kt.transfer
from kt.artifacts import read_logits
from kt.data import load_split
from kt.models import Classifier, ModelSpec, create_model
from kt.preprocess import normalize
from kt.registry import Registry
from kt.strategies import KLDP
from kt.transfer import TransferSettings, build_cache, transfer

PREP = {"size": 28, "crop_pct": 1.0}
STUDENT = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16, "stem_type": "deep"}
TEACHER = {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem_width": 32, "stem_type": "deep"}


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

    def epoch(self, seed: int) -> tuple[float, list[float]]:
        """(seconds of the epoch, the instants after each SGD step) on a fresh student (creation not timed)."""
        student, opt = self.fresh_student()
        n, bs = len(self.labels), self.settings.batch_size
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        marks = []
        t0 = time.perf_counter()
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
            marks.append(time.perf_counter())
        return time.perf_counter() - t0, marks


@dataclass
class TimedKLDP(KLDP):
    """kt's KL+DP unchanged (KLDP.after_step does nothing), recording the instant after every SGD step: the
    gap between two marks is one whole step of kt's loop (batch, augmentation, normalisation, forwards, loss,
    checks, backward, step)."""

    def after_step(self, student: torch.nn.Module, step: int) -> None:
        MARKS.append(time.perf_counter())


MARKS: list[float] = []


class TimedPlugin:
    @kt.hookimpl
    def register_strategies(self, register):
        register("kl_dp_timed", TimedKLDP)


def kt_epoch(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
             out: Path, registry: Registry) -> tuple[float, int, list[float]]:
    """(metrics seconds of epoch 1's loop, steps, the instants after each SGD step) of one kt run."""
    MARKS.clear()
    metrics = transfer(teacher, student, "kl_dp_timed", dataset, out, settings, registry=registry)
    row = metrics.filter(metrics["epoch"] == 1).row(0, named=True)
    return row["seconds"], row["step"], list(MARKS)


def gaps(marks: list[float]) -> list[float]:
    """Step times: gaps between consecutive post-step instants (the first step, with its start-up, is left out)."""
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def part_a(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
           folder: Path, repeats: int) -> dict[str, Any]:
    registry = Registry(extra_plugins=(TimedPlugin(),))
    bare = Bare(teacher, student, dataset, settings)
    sides = {"kt": replace(settings, epochs=1, augment="none"), "kt_flip_crop": replace(settings, epochs=1)}
    # warm-up: imports, oneDNN primitives for these shapes, the allocator
    kt_epoch(teacher, student, dataset, sides["kt"], folder / "warm", registry)
    bare.epoch(0)
    epochs: dict[str, list[float]] = {"bare": [], "kt": [], "kt_flip_crop": []}
    steps: dict[str, list[float]] = {"bare": [], "kt": [], "kt_flip_crop": []}
    for r in range(repeats):  # interleaved, so background load hits every side alike
        seconds, marks = bare.epoch(r)
        epochs["bare"].append(seconds / len(marks))
        steps["bare"] += gaps(marks)
        for key, s in sides.items():
            seconds, n, marks = kt_epoch(teacher, student, dataset, s, folder / f"a-{key}-{r}", registry)
            epochs[key].append(seconds / n)
            steps[key] += gaps(marks)
    ms = {f"{k}_{stat}": 1e3 * fn(v) for k, v in steps.items()
          for stat, fn in (("min", min), ("median", statistics.median))}
    ms |= {f"{k}_epoch": 1e3 * min(v) for k, v in epochs.items()}
    out: dict[str, Any] = {"steps_per_epoch": n, "timed_steps": len(steps["kt"]), **ms}
    for stat in ("min", "median", "epoch"):
        out[f"ratio_{stat}"] = ms[f"kt_{stat}"] / ms[f"bare_{stat}"]
        out[f"ratio_flip_crop_{stat}"] = ms[f"kt_flip_crop_{stat}"] / ms[f"bare_{stat}"]
    out["epochs_ms"] = {k: [round(1e3 * x, 1) for x in v] for k, v in epochs.items()}
    return out


# ---------------------------------------------------------------------------------------------- (b) cache


def part_b(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
           folder: Path, repeats: int, epochs: int) -> dict[str, Any]:
    online = replace(settings, epochs=epochs)
    cached = replace(settings, epochs=epochs, cache_views=epochs)  # one view per epoch: same views as online
    runs: dict[str, list[float]] = {k: [] for k in ("build", "online_train", "cached_train", "online_wall",
                                                    "cached_wall")}
    steps: dict[str, list[float]] = {"online": [], "cached": []}
    registry = Registry(extra_plugins=(TimedPlugin(),))
    cache = folder / "cache.h5"
    build_cache(teacher, student, dataset, cached, folder / "warm-cache.h5")  # warm-up
    for r in range(repeats):
        t0 = time.perf_counter()
        build_cache(teacher, student, dataset, cached, cache)
        runs["build"].append(time.perf_counter() - t0)
        for name, s, kwargs in (("online", online, {}), ("cached", cached, {"cache": cache})):
            MARKS.clear()
            t0 = time.perf_counter()
            metrics = transfer(teacher, student, "kl_dp_timed", dataset, folder / f"b-{name}-{r}", s,
                               registry=registry, **kwargs)
            runs[f"{name}_wall"].append(time.perf_counter() - t0)
            runs[f"{name}_train"].append(float(metrics["seconds"].sum()))
            per_epoch = len(MARKS) // epochs
            for e in range(epochs):
                steps[name] += gaps(MARKS[e * per_epoch:(e + 1) * per_epoch])
    best = {k: min(v) for k, v in runs.items()}
    saved = best["online_train"] - best["cached_train"]
    step_ms = {f"{k}_{stat}_ms": 1e3 * fn(v) for k, v in steps.items()
               for stat, fn in (("min", min), ("median", statistics.median))}
    same = np.array_equal(read_logits(folder / "b-online-0" / "eval_after.h5").logits,
                          read_logits(folder / "b-cached-0" / "eval_after.h5").logits)
    return {"epochs": epochs, "build_s": best["build"], "online_train_s": best["online_train"],
            "cached_train_s": best["cached_train"], "speedup_train": best["online_train"] / best["cached_train"],
            "online_wall_s": best["online_wall"], "cached_wall_s": best["cached_wall"],
            "speedup_wall": best["online_wall"] / best["cached_wall"],
            "break_even_runs": best["build"] / saved if saved > 0 else float("inf"),
            **step_ms, "speedup_step_min": step_ms["online_min_ms"] / step_ms["cached_min_ms"],
            "speedup_step_median": step_ms["online_median_ms"] / step_ms["cached_median_ms"],
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
    ap.add_argument("--eval", type=int, default=200, help="eval subset (evaluation is not timed)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each side (best is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every side")
    ap.add_argument("--cache-epochs", type=int, default=2, help="epochs (= cache views) in part (b)")
    ap.add_argument("--teacher-channels", default="32,64,128,256",
                    help="teacher ResNet widths (student: 16,32,64,128; give those for an equally costly teacher)")
    ap.add_argument("--skip-cache", action="store_true", help="only part (a)")
    ap.add_argument("--skip-overhead", action="store_true", help="only part (b)")
    ap.add_argument("--profile", action="store_true", help="cProfile one kt epoch (printed to stderr)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as kt.transfer does on the CPU, for the bare loop too

    dataset = {"name": "fashion_mnist", "subset": {"train": args.train, "eval": args.eval}}
    settings = TransferSettings(batch_size=args.batch_size, device="cpu")
    info = {"teacher_channels": args.teacher_channels, "cpu": machine(), "cpus": len(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "train": args.train,
            "batch_size": args.batch_size, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_before": list(os.getloadavg())}
    results: dict[str, Any] = {"machine": info}
    with tempfile.TemporaryDirectory(prefix="kt-bench-transfer-") as tmp:
        folder = Path(tmp)
        widths = [int(c) for c in args.teacher_channels.split(",")]
        teacher_args = TEACHER | {"channels": widths, "stem_width": widths[0]}
        teacher = saved_spec(f"teacher_w{widths[0]}", teacher_args, 1, folder)
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
        print(f"(a) KL+DP training step, teacher [{args.teacher_channels}] / student {STUDENT['channels']}, "
              f"{a['timed_steps']} timed steps per side (kt: augment none; flip_crop: the default augmentation)")
        for stat, what in (("min", "fastest step"), ("median", "median step"), ("epoch", "best epoch / steps")):
            print(f"    {what:>18}: kt {a[f'kt_{stat}']:.1f} ms, kt flip_crop {a[f'kt_flip_crop_{stat}']:.1f} ms, "
                  f"bare {a[f'bare_{stat}']:.1f} ms -> kt/bare {a[f'ratio_{stat}']:.3f} "
                  f"(flip_crop {a[f'ratio_flip_crop_{stat}']:.3f})")
        print(f"    target kt/bare <= 1.10 (fastest step): {'met' if a['ratio_min'] <= 1.10 else 'NOT met'}")
        print(f"    epochs (ms/step): {a['epochs_ms']}")
    if "cache" in results:
        b = results["cache"]
        print(f"(b) frozen-output cache, teacher [{args.teacher_channels}] / student {STUDENT['channels']}, "
              f"{b['epochs']} epochs = {b['epochs']} views:")
        print(f"    build {b['build_s']:.2f} s; training online {b['online_train_s']:.2f} s, "
              f"cached {b['cached_train_s']:.2f} s -> speed-up {b['speedup_train']:.2f}x "
              f"(target >= 1.8: {'met' if b['speedup_train'] >= 1.8 else 'NOT met'})")
        print(f"    whole calls: online {b['online_wall_s']:.2f} s, cached {b['cached_wall_s']:.2f} s "
              f"({b['speedup_wall']:.2f}x); break-even after {b['break_even_runs']:.2f} strategy runs of "
              f"{b['epochs']} epochs; final logits identical: {b['identical_logits']}")
        print(f"    per step: fastest online {b['online_min_ms']:.1f} ms, cached {b['cached_min_ms']:.1f} ms -> "
              f"{b['speedup_step_min']:.2f}x; median online {b['online_median_ms']:.1f} ms, cached "
              f"{b['cached_median_ms']:.1f} ms -> {b['speedup_step_median']:.2f}x")
        print(f"    runs (s): {b['runs_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
