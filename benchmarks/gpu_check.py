"""One GPU check of extraction and transfer: GPU vs CPU logits of the zoo checkpoints, batch
back-off on a real CUDA out-of-memory (``--oom``), and every transfer mode on the GPU (kl_dp cached
and online, kl, parallel, sequential, soup) plus kl_dp in fp32 on the CPU. Results as JSON in
``$OUT/gpu_check.json`` (default /tmp/gpu-out). Figures of one run: benchmarks/README.md.

Needs the zoo checkpoints resnet_a, resnet_b and vit (``--zoo``, default results/zoo) and
Fashion-MNIST (``--root``: a folder of the IDX files; default: where kt finds them). ``--dry``: on
the CPU with small subsets, to try the script before spending GPU time::

    python benchmarks/gpu_check.py --oom
"""

import argparse
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from kt.artifacts import read_logits
from kt.extract import extract
from kt.models import ModelSpec, create_model
from kt.multi import parallel, sequential, soup
from kt.transfer import TransferSettings, build_cache, transfer

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--root", default=None, help="folder of the Fashion-MNIST IDX files")
ap.add_argument("--root-is-subset", action="store_true", help="--root's train file is already the 10 %% subset")
ap.add_argument("--zoo", type=Path, default=Path("results/zoo"), help="folder of the zoo checkpoints")
ap.add_argument("--oom", action="store_true", help="also check batch back-off on a real out-of-memory")
ap.add_argument("--dry", action="store_true", help="CPU, small subsets: try the script first")
ARGS = ap.parse_args()
DRY, ROOT, ZOO = ARGS.dry, ARGS.root, ARGS.zoo
OUT = Path(os.environ.get("OUT", "/tmp/gpu-out"))
OUT.mkdir(parents=True, exist_ok=True)
WORK = Path("/tmp/gpu-work")
WORK.mkdir(parents=True, exist_ok=True)
GPU = "cpu" if DRY else "cuda"
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
DS = {"name": "fashion_mnist", "root": ROOT, "seed": 0, "subset": {"train": 512, "eval": 500} if DRY else {}}
RESULTS: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "dry": DRY}


def save() -> None:
    (OUT / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def step(name):
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            RESULTS[name] = fn()
        except Exception as e:  # keep going: one broken step must not cost the others
            RESULTS[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        RESULTS[name + "_seconds"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(RESULTS[name], default=str)[:1500], flush=True)
        save()
        return fn
    return wrap


config = yaml.safe_load(Path("config.yaml").read_text())
zoo = config["zoo"]
SPECS = {e["name"]: ModelSpec(id=e["id"], name=e["name"], args=e.get("args", {}), num_classes=10,
                              preprocess=zoo["preprocess"], weights=str(ZOO / f"{e['name']}.pth"))
         for e in zoo["models"] if e["name"] in ("resnet_a", "resnet_b", "vit")}


@step("extract_gpu_vs_cpu")
def _():
    out = {}
    for name, spec in SPECS.items():
        g = extract(spec, DS, "eval", WORK / f"{name}-gpu.h5", batch_size=256, device=GPU)
        c = extract(spec, DS, "eval", WORK / f"{name}-cpu.h5", batch_size=256, device="cpu")
        lg, lc = read_logits(WORK / f"{name}-gpu.h5"), read_logits(WORK / f"{name}-cpu.h5")
        out[name] = {"acc_gpu_attr": g["accuracy"], "acc_gpu_recomputed": lg.accuracy, "acc_cpu": lc.accuracy,
                     "pred_agreement_pct": float((lg.predictions == lc.predictions).mean() * 100),
                     "max_abs_logit_diff": float(np.abs(lg.logits - lc.logits).max()),
                     "img_s_gpu": g["images_per_s"], "img_s_cpu": c["images_per_s"]}
    return out


def oom_backoff():
    classes = [str(i) for i in range(10)]
    torch.manual_seed(0)
    spec = ModelSpec(id="timm:resnet50", num_classes=10, name="resnet50_224",
                     preprocess={"size": 64 if DRY else 224, "mean": [0.286] * 3, "std": [0.353] * 3})
    model = create_model(replace(spec, pretrained=False), classes)
    path = WORK / "resnet50.pth"
    torch.save(model.body.state_dict(), path)
    spec = replace(spec, weights=str(path), pretrained=True)
    ds = DS | {"subset": {"eval": 300 if DRY else 4096}}
    ref = extract(spec, ds, "eval", WORK / "r50-ref.h5", batch_size=128, device=GPU)
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Catch()
    logging.getLogger("kt").addHandler(handler)
    if not DRY:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(0.04)  # ~3 GiB of 80: batch 4096 at 224 px cannot fit
    try:
        big = extract(spec, ds, "eval", WORK / "r50-big.h5", batch_size=4096, device=GPU)
    finally:
        if not DRY:
            torch.cuda.set_per_process_memory_fraction(1.0)
        logging.getLogger("kt").removeHandler(handler)
    a, b = read_logits(WORK / "r50-ref.h5"), read_logits(WORK / "r50-big.h5")
    return {"backoff_messages": [r for r in records if "out of memory" in r], "acc_ref": ref["accuracy"],
            "acc_big": big["accuracy"], "pred_agreement_pct": float((a.predictions == b.predictions).mean() * 100),
            "max_abs_logit_diff": float(np.abs(a.logits - b.logits).max()), "batch_size_attr": big.get("batch_size")}


if ARGS.oom:
    step("oom_backoff")(oom_backoff)

SETTINGS = TransferSettings(epochs=2, batch_size=128, cache_views=2, device=GPU)
ONLINE = replace(SETTINGS, cache_views=0)
# the default's transfer set: a 10 % stratified subset of train (6,000 images); where --root holds
# only that subset (as on the device check's machine), pass --root-is-subset
TRANSFER_DS = DS if DRY or ARGS.root_is_subset else DS | {"subset": {"train": 0.1}}


def run(fn):
    t0 = time.perf_counter()
    metrics = fn()
    acc = metrics["eval_accuracy"].to_list()
    return {"acc_before": acc[0], "acc_after": acc[-1], "delta": acc[-1] - acc[0],
            "seconds": round(time.perf_counter() - t0, 1), "teacher_share": metrics["teacher_share"].to_list()}


@step("transfer")
def _():
    a, b, v = SPECS["resnet_a"], SPECS["resnet_b"], SPECS["vit"]
    out = {}
    cache = WORK / "cache-a-b.h5"
    t0 = time.perf_counter()
    build_cache(a, b, TRANSFER_DS, SETTINGS, cache)
    out["cache_seconds"] = round(time.perf_counter() - t0, 1)
    out["kl_dp_cached"] = run(lambda: transfer(a, b, "kl_dp", TRANSFER_DS, WORK / "kl_dp-a-b-cached", SETTINGS,
                                                   cache=cache))
    out["kl_dp_online"] = run(lambda: transfer(a, b, "kl_dp", TRANSFER_DS, WORK / "kl_dp-a-b", ONLINE))
    out["kl_cached"] = run(lambda: transfer(a, b, "kl", TRANSFER_DS, WORK / "kl-a-b", SETTINGS, cache=cache))
    out["kl_dp_vit_online"] = run(lambda: transfer(v, b, "kl_dp", TRANSFER_DS, WORK / "kl_dp-v-b", ONLINE))
    out["parallel"] = run(lambda: parallel([a, v], b, "kl_dp", TRANSFER_DS, WORK / "parallel", "av", ONLINE))
    out["sequential"] = run(lambda: sequential([a, v], b, "kl_dp", TRANSFER_DS, WORK / "sequential", "av",
                                                   ONLINE, accuracies=[88.6, 83.0]))
    out["soup"] = run(lambda: soup([WORK / "kl_dp-a-b", WORK / "kl_dp-v-b"], TRANSFER_DS, WORK / "soup", "av",
                                       ONLINE))
    cpu = replace(ONLINE, device="cpu")
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    out["kl_dp_online_cpu_fp32"] = run(lambda: transfer(a, b, "kl_dp", TRANSFER_DS, WORK / "kl_dp-a-b-cpu", cpu))
    return out


print(json.dumps(RESULTS, indent=2, default=str)[:6000])
