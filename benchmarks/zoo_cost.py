"""Benchmark: what each default-zoo model costs to train and evaluate on the CPU, at 28 px.

The default run's 15-minute budget is set by the zoo's training and by its students' transfers, both
proportional to a model's training cost per image. This prints, for every model of ``config.yaml``'s
zoo (built through kt's own model sources, random weights) plus ``--extra`` candidates, the train
step (forward, backward, SGD) and the inference forward in ms an image at batch 128, and the ratio
against the zoo's first model (``resnet_a``) measured in the same run.

Usage::

    .venv/bin/python benchmarks/zoo_cost.py                     # ~1 minute on 1 idle core
    .venv/bin/python benchmarks/zoo_cost.py --threads 2 --extra '{"id": "timm:convnext_atto", \
        "name": "convnext_p1", "args": {"depths": [1,1,1,1], "dims": [16,32,64,128], "patch_size": 1}}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from machine import machine  # benchmarks/machine.py: scripts run with benchmarks/ on sys.path

from kt.models import ModelSpec, create_model

REPO = Path(__file__).resolve().parents[1]
BATCH = 128


def ms_per_image(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    """Train step and inference forward, ms an image, after two warm-up steps."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    train = (time.perf_counter() - start) / steps / len(x) * 1e3
    model.eval()
    with torch.inference_mode():
        for i in range(steps + 1):
            if i == 1:
                start = time.perf_counter()
            model(x)
    return train, (time.perf_counter() - start) / steps / len(x) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a default-run job uses 1)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--extra", action="append", default=[], help="JSON model entry to measure too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries = yaml.safe_load((REPO / "config.yaml").read_text())["zoo"]["models"] + [json.loads(e) for e in args.extra]
    print(f"{machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {BATCH}, 28 px")
    print(f"{'model':<14}{'params':>10}{'train ms/img':>14}{'eval ms/img':>13}{'train vs ' + entries[0]['name']:>19}")
    base = None
    for entry in entries:
        spec = ModelSpec(**{k: entry[k] for k in ("id", "name", "args") if k in entry}, num_classes=10,
                         pretrained=False)
        torch.manual_seed(0)
        model = create_model(spec)
        x, y = torch.randn(BATCH, 3, 28, 28), torch.randint(0, 10, (BATCH,))
        train, infer = ms_per_image(model, x, y, args.steps)
        base = base or train
        params = sum(p.numel() for p in model.parameters())
        print(f"{spec.slug:<14}{params:>10,}{train:>14.3f}{infer:>13.3f}{train / base:>18.2f}x", flush=True)


if __name__ == "__main__":
    main()
