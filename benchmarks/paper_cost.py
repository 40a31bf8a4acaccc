"""What a config's run costs on a GPU cluster: GPU-hours per workflow step and disk per artifact,
computed (not measured end to end) from one measured anchor.

Anchor: ResNet-50 inference at 12,800 images/s on one H100 (bf16, channels_last, batch 256;
benchmarks/README.md, section extract / GPU). Every other model's throughput is scaled by its
multiply-accumulates per image (counted with ``torch.utils.flop_counter`` on the meta device at its
pretrained input size, so nothing is downloaded or allocated): ips = 12,800 x 4.09 / GMACs. That is
a first-order estimate (attention-heavy and depthwise models reach a lower share of the GPU's peak
than ResNet-50); the per-job formulas are kt.resources' (the ones the workflow sizes jobs with).
No job runs faster than its loader decodes: ``--decode-ips`` (default 8 workers x 650 images/s, the
per-core decode + resize rate in benchmarks/README.md, section loader) caps every step.

Usage::

    .venv/bin/python benchmarks/paper_cost.py                       # configs/paper.yaml
    .venv/bin/python benchmarks/paper_cost.py --config my.yaml --train-images 128117 --eval-images 50000
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import yaml

from kt.resources import TRAIN_COST, ModelCost, forward_seconds, transfer_seconds

ANCHOR_IPS, ANCHOR_GMACS = 12_800.0, 4.089  # ResNet-50 on one H100 (measured), its GMACs at 224 px
REPO = Path(__file__).resolve().parents[1]


def model_cost(model_id: str) -> tuple[ModelCost, float]:
    """(parameters, estimated H100 images/s, input side) and GMACs of a pretrained timm model."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    name = model_id.split(":", 1)[1]
    cfg = timm.get_pretrained_cfg(name)
    side = cfg.input_size[-1] if cfg else 224
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, side, side))
    gmacs = counter.get_total_flops() / 2e9
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(params, ANCHOR_IPS * ANCHOR_GMACS / gmacs, side), gmacs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "paper.yaml"))
    ap.add_argument("--train-images", type=int, default=128_117, help="transfer set (ImageNet 10 %%)")
    ap.add_argument("--eval-images", type=int, default=50_000, help="ImageNet val")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--decode-ips", type=float, default=8 * 650.0, help="images/s a job's loader workers decode")
    args = ap.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    models = {m["name"]: m["id"] for m in config["models"]}
    select, transfer = config["select"], config["transfer"]
    students, teachers = select.get("students", list(models)), select.get("teachers", list(models))
    pairs = [(t, s) for t in teachers for s in students if t != s]
    paired = [s for s in transfer["strategies"] if s != "ce"]
    seeds = len(transfer.get("seeds", [0]))
    epochs, cached = transfer["epochs"], transfer.get("cache_views", 0) > 0

    def capped(seconds: float, images: int) -> float:
        return max(seconds, images / args.decode_ips)

    costs = {}
    print(f"{'model':<24} {'id':<52} {'params M':>9} {'GMACs':>7} {'px':>4} {'est. H100 img/s':>15}")
    for name, model_id in models.items():
        costs[name], gmacs = model_cost(model_id)
        c = costs[name]
        print(f"{name:<24} {model_id:<52} {c.params / 1e6:>9.1f} {gmacs:>7.1f} {c.size:>4} {c.images_per_s:>15,.0f}")

    hours = {}
    hours["extract (eval logits, every model)"] = sum(capped(forward_seconds([c], args.eval_images), args.eval_images)
                                                      for c in costs.values())
    passes = args.train_images * epochs + args.eval_images  # images one transfer decodes

    def run(student: ModelCost, frozen: list[ModelCost], online: bool) -> float:
        return capped(transfer_seconds(student, frozen, train_images=args.train_images, eval_images=args.eval_images,
                                       epochs=epochs, evaluations=1, cached=not online), passes)

    one_pass = [run(costs[s], [costs[t]], not cached) for t, s in pairs]
    hours[f"transfer ({len(pairs)} pairs x {len(paired)} strategies x {seeds} seed)"] = \
        sum(one_pass) * len(paired) * seeds
    if "ce" in transfer["strategies"]:
        controlled = list(dict.fromkeys([*students, *(g["student"] for g in config.get("multi_teacher", {}).get(
            "groups", []))]))  # the control runs once per student, a group's too
        hours[f"ce control ({len(controlled)} students)"] = seeds * sum(run(costs[s], [], False) for s in controlled)
    multi = config.get("multi_teacher", {})
    for group in multi.get("groups", []):
        student, group_teachers = costs[group["student"]], [costs[t] for t in group["teachers"]]
        modes = multi.get("modes", ["sequential", "parallel", "soup"])
        seconds = 0.0
        if "sequential" in modes:
            seconds += sum(run(student, [t], True) for t in group_teachers)
        if "parallel" in modes:
            seconds += run(student, group_teachers, True)
        hours.setdefault("multi-teacher (sequential + parallel)", 0.0)
        hours["multi-teacher (sequential + parallel)"] += seconds * seeds
    print(f"\nGPU-hours at the estimated H100 throughput (a training step = {TRAIN_COST:.0f} forward passes; "
          f"frozen models {'cached' if cached else 'online'}; {epochs} epochs of {args.train_images:,} images; "
          f"no faster than {args.decode_ips:,.0f} decoded images/s):")
    for step, seconds in hours.items():
        print(f"  {step:<55} {seconds / 3600:>9.1f} GPU-h")
    print(f"  {'total':<55} {sum(hours.values()) / 3600:>9.1f} GPU-h")

    dtype_bytes = 2 if config.get("extract", {}).get("dtype") == "float16" else 4
    logits_gb = args.eval_images * args.classes * dtype_bytes / 1e9
    runs = len(pairs) * len(paired) * seeds
    student_gb = sum(costs[s].params for t, s in pairs) * 4 / 1e9 * len(paired) * seeds
    print("\ndisk:")
    print(f"  eval logits: {logits_gb:.2f} GB a model x {len(models)} = {logits_gb * len(models):.0f} GB")
    print(f"  transfer runs: {runs} runs x (eval_after {logits_gb:.2f} GB + eval_before {logits_gb:.2f} GB) "
          f"= {2 * logits_gb * runs:,.0f} GB, students' weights {student_gb:,.0f} GB")
    print(f"  resume checkpoints (state.pt, deleted when a run finishes): up to ~3 x the student's weights "
          f"per running job (largest student {max(costs[s].mb for s in students) * 3 / 1e3:.1f} GB)")
    largest = max(math.ceil(c.params / 1e6) for c in costs.values())
    print(f"  largest model: {largest} M parameters")


if __name__ == "__main__":
    main()
