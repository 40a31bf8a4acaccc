"""Benchmark: images/s of ``kt extract`` against a bare ``model(x)`` loop on the same tensors.

Real data: the Fashion-MNIST eval split (10,000 images, or a stratified ``--samples`` subset) loaded
with ``kt.data.load_split``. For each model and batch size it times

* kt: the whole ``kt.extract.extract(spec, dataset, "eval", tmp.h5, batch_size=B)`` call, wall-clock
  (loading the split, building the model and loading its weights, resizing, normalising, the
  forward passes, the HDF5 writing), and also reports the ``images_per_s`` attr the call records
  (which times its batch loop, ``kt.extract.predict``: taking each batch from the split (gather,
  resize), normalisation, ``model(x)`` and the copy back; not the set-up nor the writing);
* bare: every image already resized and normalised into one float tensor beforehand, then
  ``with torch.inference_mode(): for batch: model(x)`` with the same model (eval mode), weights and
  batch size.

Both are warmed up first, then repeated (interleaved, best of ``--repeats``) under the same
``torch.set_num_threads``. The ratio kt wall / bare should be >= 0.9: the loader must not be the
bottleneck. The logits kt wrote are checked against the bare loop's (max abs difference). Also
printed: the median of the per-repeat ratios (each kt call against the bare pass just before it),
the share of the CPUs other processes used during the best runs, and minor page faults per image.

By default (``--malloc steady``) glibc is told to keep freed memory (see :func:`steady_malloc`):
otherwise both sides page-fault their activations in afresh, by amounts that depend on each
process's allocation history, and the ratio swings between about 0.7 and 1.4 from one process to
the next whatever kt does. ``--malloc default`` measures glibc as it comes.

Models without ``weights`` get seeded random weights saved to a temporary file, and the spec then
names that file, so kt loads them exactly as the baseline does.

``--jpeg N`` measures a JPEG folder instead: N synthetic ImageNet-style JPEGs (~430x360 px, 10
classes, made by ``make_folder`` of benchmarks/loader.py, in ``--jpeg-dir`` to keep and reuse them or
in a temporary folder) with a real-size model at 224 px (default ``timm:resnet18``, random seeded
weights, one output per class), batch 64 unless ``--batch-size``. The folder's ``train/`` holds the N
images and kt's eval split is pointed at it (``"eval": "train"``). In one run, interleaved, warmed up,
best of ``--repeats``:

* bare: every image decoded, resized and normalised beforehand into one float tensor (kt's decode
  path, in this process), then ``model(x)`` per batch under ``torch.inference_mode()``;
* kt: the whole ``extract`` call with ``workers`` W = 0, 1, 2 (wall, which includes listing the
  folder, building the model and starting the workers, and the ``images_per_s`` attr, its batch
  loop: decoding in the workers, resizing, normalising, the forward passes);
* decode only: one pass of the split's loader (``Loader(split, prep, B, workers=W)``, what kt's
  batch loop iterates, worker start included) with no model, W = 0, 1, 2: where it is below bare,
  decoding limits; where above, the model does.

It prints images/s of each and the ratios kt(W)/bare and kt(W)/kt(0). The main process keeps
``--threads`` torch threads; every loader worker is one more process, so on a machine with no more
cores than that the workers take CPU from the model and ratios below 1 are expected there (what a
GPU node needs: benchmarks/README.md, section loader). Usage::

    .venv/bin/python benchmarks/extract.py 2>/dev/null            # two default models, ~1 minute
    .venv/bin/python benchmarks/extract.py --samples 2000 --batch-size 64 --batch-size 256
    .venv/bin/python benchmarks/extract.py --model '{"id": "timm:resnet18", "num_classes": 10, ...}'
    .venv/bin/python benchmarks/extract.py --profile              # cProfile one kt call per model
    .venv/bin/python benchmarks/extract.py --jpeg 256 --repeats 3 2>/dev/null   # JPEG folder, ~3-4 min
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import ctypes.util
import importlib.util
import io
import json
import os
import platform
import pstats
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import machine  # benchmarks/machine.py: scripts run with benchmarks/ on sys.path
from PIL import Image

from kt.artifacts import read_logits
from kt.data import Loader, Split, load_split
from kt.device import autocast
from kt.errors import KtError
from kt.extract import extract, prepare
from kt.models import Classifier, ModelSpec, create_model
from kt.preprocess import Preprocessing, normalize

FMNIST_PREP = {"size": 28, "mean": [0.286] * 3, "std": [0.353] * 3, "crop_pct": 1.0}
TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16, "stem_type": "deep"}
DEFAULT_MODELS: list[dict[str, Any]] = [
    # the workflow's student-sized ResNet at Fashion-MNIST's native 28 px: no resizing in kt's path
    {"id": "timm:resnet18", "name": "resnet_tiny_28", "args": TINY_RESNET, "num_classes": 10,
     "pretrained": False, "preprocess": FMNIST_PREP},
    # the same at 64 px: 5x the compute, and kt's path includes the antialiased uint8 resize
    {"id": "timm:resnet18", "name": "resnet_tiny_64", "args": TINY_RESNET, "num_classes": 10,
     "pretrained": False, "preprocess": FMNIST_PREP | {"size": 64}},
]


def steady_malloc() -> bool:
    """Make glibc keep freed memory for reuse: every allocation from the heap (M_MMAP_MAX 0), never
    trimmed (M_TRIM_THRESHOLD max). As it comes, glibc serves blocks above its mmap threshold (which
    adapts, up to 32 MiB) with fresh pages and unmaps them on free, and trims the heap, so a batch's
    activations (32 MiB tensors for the tiny ResNet at 64 px, batch 256) are page-faulted in again
    batch after batch; how many depends on the process's allocation history (0 to 190 faults an
    image measured), which made either side up to 1.9x slower from one process to the next.
    Returns False where this is not glibc (then nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 2**31 - 1) == 1  # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def parse_model(text: str) -> dict[str, Any]:
    """A JSON spec (``{"id": ...}``) or a bare ``SOURCE:NAME`` id."""
    return json.loads(text) if text.lstrip().startswith("{") else {"id": text}


def with_weights(entry: dict[str, Any], classes: list[str], folder: Path, seed: int) -> ModelSpec:
    """The spec, pointing at a file of seeded random weights when it names none (with one output per
    class of the dataset unless ``num_classes`` is given)."""
    spec = ModelSpec.parse(entry)
    if spec.weights is not None:
        return spec
    if spec.num_classes is None:
        spec = replace(spec, num_classes=len(classes))
    torch.manual_seed(seed)
    model = create_model(replace(spec, pretrained=False), classes)
    path = folder / f"{spec.slug}.pth"
    torch.save(model.body.state_dict(), path)
    return replace(spec, weights=str(path), pretrained=True)  # timm loads a file only when pretrained


def preprocessed(data: Split, model: Classifier, chunk: int = 1024) -> torch.Tensor:
    """Every image of ``data`` resized and normalised for ``model``: one contiguous float tensor."""
    parts = [normalize(images, model.preprocess) for images, _, _ in Loader(data, model.preprocess, chunk).batches()]
    return torch.cat(parts).contiguous()


class Meter:
    """While a block runs: the share of the machine's CPU time other processes used (from /proc/stat
    and the CPU time of this process and of its children that ended, such as loader workers; a
    timing taken while it is well above 0 is contended), and this process's minor page faults (fresh
    memory being touched)."""

    def __init__(self) -> None:
        self.share = float("nan")
        self.faults = 0

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Meter:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), sum(os.times()[:4])
        self.faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        return self

    def __exit__(self, *exc: object) -> None:
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults0
        busy = self._busy()
        if busy is not None and self.busy0 is not None:
            other = busy - self.busy0 - (sum(os.times()[:4]) - self.own0)
            self.share = max(0.0, other / ((time.perf_counter() - self.t0) * (os.cpu_count() or 1)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model: Classifier, x: torch.Tensor, batch_size: int, limit: int | None = None) -> float:
    """Seconds for ``model(x)`` over ``x`` in batches (the first ``limit`` images when given); on a GPU
    ``x`` is already there and the loop runs under the same autocast as kt."""
    n = len(x) if limit is None else min(limit, len(x))
    sync(x.device)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(x.device):
        for start in range(0, n, batch_size):
            model(x[start:start + batch_size])
    sync(x.device)
    return time.perf_counter() - t0


def bare_logits(model: Classifier, x: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.inference_mode(), autocast(x.device):
        return torch.cat([model(x[s:s + batch_size]).float().cpu() for s in range(0, len(x), batch_size)]).numpy()


def kt_call(spec: ModelSpec, dataset: dict[str, Any], out: Path, batch_size: int,
            device: str = "cpu", workers: int | None = None) -> tuple[float, dict[str, Any]]:
    """Seconds of one whole ``extract`` call and its attrs (``workers`` None: extract's default)."""
    options = {} if workers is None else {"workers": workers}
    t0 = time.perf_counter()
    attrs = extract(spec, dataset, "eval", out, batch_size=batch_size, device=device, **options)
    return time.perf_counter() - t0, attrs


def profile_kt(spec: ModelSpec, dataset: dict[str, Any], out: Path, batch_size: int, top: int,
               device: str = "cpu") -> str:
    prof = cProfile.Profile()
    prof.enable()
    kt_call(spec, dataset, out, batch_size, device)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


JPEG_MODELS: list[dict[str, Any]] = [{"id": "timm:resnet18", "pretrained": False}]  # 224 px, timm's eval preprocessing
WORKERS = (0, 1, 2)


def make_folder(root: Path, n: int, seed: int) -> None:
    """benchmarks/loader.py's synthetic ImageNet-style folder (imported from that file, not copied)."""
    found = importlib.util.spec_from_file_location("kt_bench_loader", Path(__file__).with_name("loader.py"))
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    module.make_folder(root, n, seed=seed)


def jpeg_dataset(n: int, root: Path, seed: int) -> dict[str, Any]:
    """The imagefolder dataset whose eval split is ``root/train`` (n JPEGs): made there when it has no
    ``train/`` yet (``make_folder`` also writes n/10 to ``val/``, unused), else reused, subset to n
    images (stratified) when it holds more."""
    if not (root / "train").is_dir():
        t0 = time.perf_counter()
        make_folder(root, n, seed)
        print(f"# made {n} JPEGs in {root} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    dataset: dict[str, Any] = {"name": "imagefolder", "root": str(root), "eval": "train"}
    if len(load_split(dataset, "eval")) > n:
        dataset["subset"] = {"eval": n}
    return dataset


def decode_pass(data: Split, prep: Preprocessing, batch_size: int, workers: int) -> float:
    """Images/s of one pass of the split's loader alone (decode + resize, no model): what kt's batch
    loop iterates, workers started for the pass as in ``extract``."""
    t0 = time.perf_counter()
    n = sum(len(pos) for _, _, pos in Loader(data, prep, batch_size, workers).batches())
    return n / (time.perf_counter() - t0)


def jpeg_main(args: argparse.Namespace, device: torch.device, steady: bool) -> int:
    """``--jpeg N``: bare loop, kt extract with W = 0, 1, 2 workers and the loader alone, on a JPEG folder."""
    entries = args.model or JPEG_MODELS
    batch_sizes = args.batch_size or [64]
    info = {"cpu": machine(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpus": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "repeats": args.repeats, "malloc": "steady" if steady else "default", "workers": list(WORKERS),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_before": list(os.getloadavg())}
    rows = []
    with tempfile.TemporaryDirectory(prefix="kt-bench-extract-") as tmp:
        folder = Path(tmp)
        dataset = jpeg_dataset(args.jpeg, Path(args.jpeg_dir) if args.jpeg_dir else folder / "jpegs", args.seed)
        data = load_split(dataset, "eval")
        sizes = []
        for i in data.ids[:50]:
            with Image.open(data.root / str(i)) as image:
                sizes.append(image.size)
        info |= {"samples": len(data), "classes": len(data.classes), "jpeg_root": dataset["root"],
                 "jpeg_mean_px": [round(float(np.mean([s[k] for s in sizes]))) for k in (0, 1)]}
        for entry in entries:
            spec = with_weights(entry, data.classes, folder, args.seed)
            model = prepare(create_model(spec, data.classes), device)
            prep = model.preprocess
            t0 = time.perf_counter()
            x = preprocessed(data, model).to(device)
            info["bare_prepare_s"] = time.perf_counter() - t0
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            outs = {w: folder / f"{spec.slug}-w{w}.h5" for w in WORKERS}
            for bs in batch_sizes:
                warm = min(len(data), 2 * bs)
                # warm-up: imports, allocator, oneDNN primitives for this batch shape (two batches, once),
                # then one batch through each workers path
                bare_loop(model, x, bs, limit=warm)
                for w in WORKERS:
                    kt_call(spec, dataset | {"subset": {"eval": warm if w == 0 else min(len(data), bs)}},
                            outs[w], bs, args.device, w)
                    decode_pass(data.take(np.arange(min(len(data), bs))), prep, bs, w)
                bare, other_bare = [], []
                kt_wall = {w: [] for w in WORKERS}
                kt_attr = {w: [] for w in WORKERS}
                other_kt = {w: [] for w in WORKERS}
                dec = {w: [] for w in WORKERS}
                for _ in range(args.repeats):  # interleaved, so background load hits every side alike
                    with Meter() as m:
                        bare.append(len(x) / bare_loop(model, x, bs))
                    other_bare.append(m.share)
                    for w in WORKERS:
                        with Meter() as m:
                            seconds, attrs = kt_call(spec, dataset, outs[w], bs, args.device, w)
                        other_kt[w].append(m.share)
                        kt_wall[w].append(len(data) / seconds)
                        kt_attr[w].append(float(attrs["images_per_s"]))
                    for w in WORKERS:
                        dec[w].append(decode_pass(data, prep, bs, w))
                check = min(len(data), bs)  # same images, same decode path: logits must agree
                ref = bare_logits(model, x[:check], bs)
                diff = max(float(np.abs(read_logits(outs[w]).logits[:check] - ref).max()) for w in WORKERS)
                best_bare = max(bare)
                kt0 = max(kt_wall[0])
                row = {"model": spec.slug, "size": prep.size, "crop_pct": prep.crop_pct, "batch_size": bs,
                       "samples": len(data), "bare_img_s": best_bare,
                       "other_cpu_share_bare": other_bare[int(np.argmax(bare))], "max_abs_logit_diff": diff,
                       "workers": {}, "runs": {"bare": bare, "kt_wall": kt_wall, "kt_attr": kt_attr,
                                               "decode": dec, "other_cpu_share_kt": other_kt,
                                               "other_cpu_share_bare": other_bare}}
                for w in WORKERS:
                    wall, attr = max(kt_wall[w]), max(kt_attr[w])
                    row["workers"][w] = {
                        "kt_wall_img_s": wall, "kt_attr_img_s": attr, "decode_img_s": max(dec[w]),
                        "ratio_wall": wall / best_bare, "ratio_attr": attr / best_bare,
                        "ratio_wall_vs_w0": wall / kt0, "ratio_attr_vs_w0": attr / max(kt_attr[0]),
                        "ratio_decode": max(dec[w]) / best_bare,
                        "other_cpu_share": other_kt[w][int(np.argmax(kt_wall[w]))]}
                rows.append(row)
    info["loadavg_after"] = list(os.getloadavg())

    if args.json:
        print(json.dumps({"machine": info, "results": rows}, indent=2))
        return 0
    print(f"# {info['device']}; {info['cpu']}, {info['cpus']} CPUs, torch {info['torch']}, "
          f"{info['threads']} threads in the main process, {info['samples']} JPEGs "
          f"(~{info['jpeg_mean_px'][0]}x{info['jpeg_mean_px'][1]} px, {info['classes']} classes), "
          f"best of {args.repeats}, malloc {info['malloc']}; "
          f"load average {info['loadavg_before'][0]:.2f} -> {info['loadavg_after'][0]:.2f}")
    print(f"# each loader worker is one more process: with {info['cpus']} CPUs and {info['threads']} torch threads "
          "the workers compete with the model for the same cores"
          + (", so kt(W)/bare < 1 is expected here" if info["cpus"] <= info["threads"] + 1 else "")
          + "; what a GPU node needs: benchmarks/README.md, section loader")
    for r in rows:
        print(f"\n{r['model']} at {r['size']} px (crop_pct {r['crop_pct']}), batch {r['batch_size']}: "
              f"bare model(x) {r['bare_img_s']:.1f} img/s (other CPU {r['other_cpu_share_bare']:.0%}); "
              f"kt logits vs bare max|dlogit| {r['max_abs_logit_diff']:.1e}")
        cols = [("W", None, "{}"), ("kt img/s (wall)", "kt_wall_img_s", "{:.1f}"),
                ("kt img/s (attr)", "kt_attr_img_s", "{:.1f}"), ("wall/bare", "ratio_wall", "{:.3f}"),
                ("attr/bare", "ratio_attr", "{:.3f}"), ("wall/kt(0)", "ratio_wall_vs_w0", "{:.3f}"),
                ("attr/kt(0)", "ratio_attr_vs_w0", "{:.3f}"), ("decode only img/s", "decode_img_s", "{:.0f}"),
                ("decode/bare", "ratio_decode", "{:.2f}"), ("other CPU", "other_cpu_share", "{:.0%}")]
        print(" | ".join(c[0] for c in cols))
        for w, v in r["workers"].items():
            print(" | ".join(fmt.format(w if key is None else v[key]) for _, key, fmt in cols))
        limits = ", ".join(f"W={w}: {'decoding' if v['ratio_decode'] < 1 else 'the model'}"
                           for w, v in r["workers"].items())
        print(f"limit (decode only vs bare): {limits}")
    if any(max(r["other_cpu_share_bare"], *(v["other_cpu_share"] for v in r["workers"].values())) > 0.1
           for r in rows):
        print("warning: other processes used over 10 % of the CPUs during a best run (column 'other CPU'); "
              "those figures are contended, rerun on an idle machine")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", type=parse_model, default=None,
                    help="JSON spec or SOURCE:NAME id (repeatable); default: two tiny timm ResNets (28 and 64 px), "
                         "with --jpeg timm:resnet18 at 224 px")
    ap.add_argument("--samples", type=int, default=None, help="stratified subset of the 10,000 eval images")
    ap.add_argument("--batch-size", type=int, action="append", default=None,
                    help="repeatable; default 256, with --jpeg 64")
    ap.add_argument("--jpeg", type=int, default=None, metavar="N",
                    help="measure a folder of N synthetic JPEGs at 224 px instead of Fashion-MNIST: bare loop, "
                         "kt extract with 0, 1 and 2 workers, and the loader alone")
    ap.add_argument("--jpeg-dir", default=None,
                    help="with --jpeg: make the folder here and keep it, or reuse it (default: a temporary folder)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each side (best is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--target", type=float, default=0.9, help="ratio kt wall / bare to reach")
    ap.add_argument("--profile", action="store_true", help="also cProfile one kt call per model and batch size")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--malloc", choices=("steady", "default"), default="steady",
                    help="steady: glibc keeps freed memory (no page faults in steady state, see steady_malloc); "
                         "default: leave glibc as it is (ratios then swing with page faults)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--root", default=None, help="folder of the Fashion-MNIST idx files (default: where kt finds them)")
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda: on a GPU the bare loop's tensors are on the GPU already (bf16 autocast, "
                         "channels_last, as kt); kt still decodes, resizes and normalises on the way")
    args = ap.parse_args()
    entries = args.model or DEFAULT_MODELS
    batch_sizes = args.batch_size or [256]
    steady = args.malloc == "steady" and steady_malloc()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.jpeg is not None:
        return jpeg_main(args, device, steady)

    dataset: dict[str, Any] = {"name": "fashion_mnist", "root": args.root}
    if args.samples is not None:
        dataset["subset"] = {"eval": args.samples}
    data = load_split(dataset, "eval")
    rows, profiles = [], []
    info = {"cpu": machine(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpus": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "samples": len(data),
            "repeats": args.repeats, "malloc": "steady" if steady else "default",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_before": list(os.getloadavg())}

    with tempfile.TemporaryDirectory(prefix="kt-bench-extract-") as tmp:
        folder = Path(tmp)
        for entry in entries:
            spec = with_weights(entry, data.classes, folder, args.seed)
            model = prepare(create_model(spec, data.classes), device)
            x = preprocessed(data, model).to(device)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            out = folder / f"{spec.slug}.h5"
            for bs in batch_sizes:
                # warm-up: imports, allocator, oneDNN primitives for this batch shape
                kt_call(spec, dataset | {"subset": {"eval": min(len(data), 2 * bs)}}, out, bs,
                        args.device)
                bare_loop(model, x, bs, limit=2 * bs)
                kt_wall, kt_attr, bare, other_kt, other_bare, faults_kt, faults_bare = [], [], [], [], [], [], []
                for _ in range(args.repeats):  # interleaved, so background load hits both sides alike
                    with Meter() as m:
                        bare.append(len(x) / bare_loop(model, x, bs))
                    other_bare.append(m.share)
                    faults_bare.append(m.faults / len(x))
                    with Meter() as m:
                        seconds, attrs = kt_call(spec, dataset, out, bs, args.device)
                    other_kt.append(m.share)
                    faults_kt.append(m.faults / len(data))
                    kt_wall.append(len(data) / seconds)
                    kt_attr.append(float(attrs["images_per_s"]))
                diff = float(np.abs(read_logits(out).logits - bare_logits(model, x, bs)).max())
                best_kt, best_bare = int(np.argmax(kt_wall)), int(np.argmax(bare))
                row = {"model": spec.slug, "size": model.preprocess.size, "batch_size": bs, "samples": len(data),
                       "kt_wall_img_s": kt_wall[best_kt], "kt_attr_img_s": max(kt_attr), "bare_img_s": bare[best_bare],
                       "ratio_wall": kt_wall[best_kt] / bare[best_bare], "ratio_attr": max(kt_attr) / bare[best_bare],
                       "ratio_wall_paired": float(np.median(np.array(kt_wall) / np.array(bare))),
                       "max_abs_logit_diff": diff,
                       "other_cpu_share": max(other_kt[best_kt], other_bare[best_bare]),
                       "faults_per_img_kt": faults_kt[best_kt], "faults_per_img_bare": faults_bare[best_bare],
                       "runs": {"kt_wall": kt_wall, "kt_attr": kt_attr, "bare": bare,
                                "other_cpu_share_kt": other_kt, "other_cpu_share_bare": other_bare,
                                "faults_per_img_kt": faults_kt, "faults_per_img_bare": faults_bare}}
                rows.append(row)
                if args.profile:
                    profiles.append((f"{spec.slug} batch {bs}", profile_kt(spec, dataset, out, bs, args.profile_top,
                                                                                args.device)))
    info["loadavg_after"] = list(os.getloadavg())

    if args.json:
        print(json.dumps({"machine": info, "results": rows}, indent=2))
    else:
        print(f"# {info['device']}; {info['cpu']}, {info['cpus']} CPUs, torch {info['torch']}, "
              f"{info['threads']} threads, "
              f"{info['samples']} Fashion-MNIST eval images, best of {args.repeats}, malloc {info['malloc']}; "
              f"load average {info['loadavg_before'][0]:.2f} -> {info['loadavg_after'][0]:.2f}")
        cols = [("model", "model", "{}"), ("px", "size", "{}"), ("batch", "batch_size", "{}"),
                ("kt img/s (wall)", "kt_wall_img_s", "{:.0f}"), ("kt img/s (attr)", "kt_attr_img_s", "{:.0f}"),
                ("bare img/s", "bare_img_s", "{:.0f}"), ("wall/bare", "ratio_wall", "{:.3f}"),
                ("attr/bare", "ratio_attr", "{:.3f}"), ("wall/bare paired median", "ratio_wall_paired", "{:.3f}"),
                ("max|dlogit|", "max_abs_logit_diff", "{:.1e}"), ("other CPU", "other_cpu_share", "{:.0%}"),
                ("faults/img kt", "faults_per_img_kt", "{:.0f}"), ("faults/img bare", "faults_per_img_bare", "{:.0f}")]
        print(" | ".join(c[0] for c in cols))
        for r in rows:
            print(" | ".join(fmt.format(r[key]) for _, key, fmt in cols))
        below = [r for r in rows if r["ratio_wall"] < args.target]
        print(f"target wall/bare >= {args.target}: " + ("met" if not below else
              "NOT met for " + ", ".join(f"{r['model']}@{r['batch_size']}" for r in below)))
        if any(r["other_cpu_share"] > 0.1 for r in rows):
            print("warning: other processes used over 10 % of the CPUs during a best run (column 'other CPU'); "
                  "those figures are contended, rerun on an idle machine")
    for title, text in profiles:
        print(f"\n## cProfile of one kt extract call: {title}\n{text}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KtError as e:
        sys.exit(f"error: {e}")
