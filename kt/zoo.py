"""Train the default zoo: small, diverse classifiers whose checkpoints are then loaded back through
the ordinary model sources as local weight files (the path a user's own weights take).

The paper's premise is that variations in architecture, augmentation, seed and schedule give models
unique knowledge; the zoo varies all four.

A different tool from the transfer loop (:mod:`kt.transfer`), on purpose: it trains the offline
default's 28-px models from scratch (AdamW, warm-up + cosine, batch-norm recalibrated at the end),
in minutes on a CPU, with no device selection, AMP, resumable state or frozen models. Models a user
brings are trained elsewhere; their checkpoints enter kt as weights files, like the zoo's.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from kt.artifacts import atomic_path
from kt.augment import pass_seed
from kt.batchnorm import recalibrate_batchnorm
from kt.data import Loader, check_augment, load_split, open_dataset
from kt.models import ModelSpec, create_model
from kt.preprocess import normalize
from kt.registry import Registry

log = logging.getLogger("kt")


WEIGHT_DECAY = 0.05  # AdamW's for every zoo model (not a config key)


def train_zoo_model(spec: ModelSpec, dataset: dict[str, Any], out: str | Path, *, epochs: int, lr: float,
                    batch_size: int, augmentation: str, seed: int,
                    registry: Registry | None = None) -> dict[str, Any]:
    """Train ``spec`` from scratch on the train split (AdamW, warm-up + cosine) and save its state dict."""
    torch.manual_seed(seed)
    check_augment(augmentation, open_dataset(dataset, registry), "zoo.models[].augment")
    data = load_split(dataset, "train", registry)
    model = create_model(replace(spec, weights=None, pretrained=False), data.classes, registry).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    steps = epochs * math.ceil(len(data) / batch_size)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    t0, correct, seen = time.perf_counter(), 0, 0
    bar = tqdm(total=steps, desc=f"train {spec.slug}", unit="step", mininterval=5)
    loader = Loader(data, model.preprocess, batch_size, augment=augmentation)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen).numpy()
        correct, seen = 0, 0
        for images, labels, _pos in loader.batches(order, pass_seed(seed, epoch)):
            x = normalize(images, model.preprocess)
            logits = model(x)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    recalibrate_batchnorm(model, data, batch_size, gen)
    with atomic_path(out) as tmp:
        torch.save(model.body.state_dict(), tmp)
    info = {"model": spec.slug, "epochs": epochs, "train_accuracy_last_epoch": 100.0 * correct / max(seen, 1),
            "seconds": time.perf_counter() - t0, "params": int(sum(p.numel() for p in model.parameters())),
            "augmentation": augmentation, "seed": seed}
    log.info("trained %s: %s", spec.slug, info)
    return info

