"""Run one model over one split and write its logits (and optionally features) to HDF5."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kt.artifacts import LogitsWriter, atomic_path, logits_attrs, open_h5, set_attrs, top1
from kt.data import Loader, Split, Views, load_split
from kt.device import BatchBackoff, autocast, pick_device
from kt.errors import KtError
from kt.facts import code_record
from kt.models import Classifier, ModelSpec, create_model
from kt.preprocess import normalize
from kt.registry import Registry, get_registry
from kt.schema import default, defaults

log = logging.getLogger("kt")
DEFAULTS = defaults("extract")
DEVICE, DECODE = default("device"), default("decode")


def prepare(model: Classifier, device: torch.device) -> Classifier:
    """Eval mode on ``device``; channels_last on GPUs, where convolutions run faster in it."""
    model = model.eval().to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def predict(model: Classifier, data: Split, batch_size: int, device: torch.device, features: bool = False,
            workers: int = 0, backoff: BatchBackoff | None = None, decode: str = DECODE
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Yield (positions, logits, features or None) on the CPU for every batch of ``data``, in order.

    ``decode``: ``reference`` shows the model its library's own evaluation view of each image,
    ``fast`` the fast path's (:mod:`kt.preprocess`).

    ``model`` must already be on ``device`` (see :func:`prepare`); inference mode, AMP on GPUs and
    batch-size back-off on out-of-memory are handled here, once for every caller. On a GPU the
    next batch is queued before the last one's outputs are copied back, so the GPU never waits for
    Python between batches.
    """
    backoff = backoff or BatchBackoff(batch_size)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = normalize(x.to(device, non_blocking=True), model.preprocess)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            if features:
                logits, feats = model.logits_and_features(x)
                return logits.float(), feats.float()
            return model(x).float(), None

    def to_cpu(pos: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor | None]]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return (pos, torch.cat([p[0] for p in parts]).cpu(),
                torch.cat([p[1] for p in parts]).cpu() if features else None)

    pending = None
    with torch.inference_mode():
        loader = Loader(data, model.preprocess, batch_size, workers, device=device,
                        models=[model] if decode == "reference" else None)
        for images, _labels, pos in loader.batches():
            parts = backoff(run, images.primary if isinstance(images, Views) else images)
            if pending is not None:
                yield to_cpu(*pending)
            pending = (pos, parts)
        if pending is not None:
            yield to_cpu(*pending)


class Throughput:
    """Images a second of the batch loop: over the whole pass, and warm, past the first batch
    :func:`predict` yields, which arrives after the first two forward passes (it runs one batch
    ahead). The first pass grows the heap (GBs of first-touch page faults at batch 256 on a CPU) and
    sets up kernels; a long job pays that once, so the warm rate is what it runs at."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.images: list[int] = []

    def add(self, seconds: float, images: int) -> None:
        self.seconds.append(seconds)
        self.images.append(images)

    def rate(self) -> float:
        return sum(self.images) / max(sum(self.seconds), 1e-9)

    def warm_rate(self) -> float:
        """The rate past the first yield (its two batches); the whole pass's below four batches."""
        if len(self.images) < 5:  # four batches, plus the closing call that yields nothing
            return self.rate()
        return (sum(self.images) - self.images[0] - self.images[1]) / max(sum(self.seconds[1:]), 1e-9)


def loader_workers(workers: int | str, data: Split, device: torch.device) -> int:
    """``auto``: for a split that decodes image files on a GPU, every CPU this job may use but the main
    process's (the fewer of the process's affinity and its torch threads, i.e. the rule's threads);
    on the CPU none, since the model's threads already take every core and worker processes would
    contend with them: the prefetch thread decodes instead (benchmarks/README.md, real_photos).
    In-memory data needs none."""
    if workers != "auto":
        return int(workers)
    if not data.decodes or device.type == "cpu":
        return 0
    return max(0, min(len(os.sched_getaffinity(0)), torch.get_num_threads()) - 1)


def extract(spec: ModelSpec, dataset: dict[str, Any], split: str, out: str | Path,
            batch_size: int = DEFAULTS["batch_size"], device: str = DEVICE, features: bool = DEFAULTS["features"],
            workers: int | str = DEFAULTS["workers"], dtype: str = DEFAULTS["dtype"], decode: str = DECODE,
            registry: Registry | None = None) -> dict[str, Any]:
    """Write ``out`` (atomically, streaming row chunks; logits and features stored as ``dtype``) and
    return its attrs."""
    data = load_split(dataset, split, registry)
    model = create_model(spec, data.classes, registry)
    if int(data.labels.max()) >= model.num_classes:
        raise KtError(f"dataset labels go up to {int(data.labels.max())} but model {spec.slug!r} "
                      f"has {model.num_classes} classes; give the dataset the model's label space with "
                      "dataset.classes_file (one class folder name per line, in the order of the model's outputs).")
    dev = pick_device(device)
    workers = loader_workers(workers, data, dev)
    model = prepare(model, dev)
    backoff = BatchBackoff(batch_size)
    predicted = np.zeros(len(data), dtype=np.int64)  # top-1 of the float32 logits, not the stored dtype
    clock = Throughput()
    with atomic_path(out) as tmp, open_h5(tmp, "w") as f:
        writer = None
        bar = tqdm(total=len(data), desc=f"extract {spec.slug} [{split}]", unit="img", mininterval=2)
        batches = predict(model, data, batch_size, dev, features, workers, backoff, decode)
        while True:
            t0 = time.perf_counter()
            item = next(batches, None)
            clock.add(time.perf_counter() - t0, 0 if item is None else len(item[0]))
            if item is None:
                break
            pos, logits, feats = item
            if writer is None:
                writer = LogitsWriter(f, data.ids, data.labels, logits.shape[1],
                                      feats.shape[1] if feats is not None else None, dtype=dtype)
            writer.write(int(pos[0]), logits.numpy(), feats.numpy() if feats is not None else None)
            predicted[pos.numpy()] = logits.argmax(1).numpy()
            bar.update(len(pos))
        bar.close()
        if writer is not None:
            writer.flush()
        attrs = logits_attrs(spec, model, data, dataset) | {
            "accuracy": top1(predicted, data.labels), "images_per_s": clock.rate(),
            "warm_images_per_s": clock.warm_rate(),
            "device": str(dev), "batch_size": backoff.size, "workers": workers, "dtype": dtype, "decode": decode,
            "code": json.dumps(code_record((registry or get_registry()).code_table(), [spec.source], dataset["name"]))}
        set_attrs(f, attrs)
    log.info("%s: top-1 %.2f %% on %d %s images, %.0f img/s -> %s",
             spec.slug, attrs["accuracy"], len(data), split, attrs["images_per_s"], out)
    return attrs
