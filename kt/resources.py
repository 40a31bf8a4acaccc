"""Job resources from the models and the data (README "Job resources").

Memory follows the parameter counts, the batch and the loader workers; wall time follows images x
passes over the model's measured throughput (its extraction's ``images_per_s``, stored in its eval
logits). Snakemake evaluates a rule's resources again just before it schedules the job, so a
transfer is sized from measurements as soon as its models were extracted; before that (or without
a measurement) the configured ``resources.images_per_s`` and a generic model size stand in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BASE_MB = 2000  # a torch job's libraries, CUDA context and dataset index (host side)
WORKER_MB = 500  # one loader process: a torch import plus its prefetched batches
STARTUP_MIN = 5  # imports, model loading, the first batches
MIN_RUNTIME_MIN = 10
TRAIN_COST = 3.0  # a training step costs ~3 forward passes (forward + backward)
UNKNOWN_PARAMS = 100_000_000  # stands in for a model not measured yet (ViT-B is 86M)
BATCHES_HELD = 4  # float batches the main process holds: the current, the next, their pinned copies
# Activation memory on a CPU, from measured peaks (benchmarks/README.md, "Job memory"): the bytes
# activation_bytes() counts, times these factors. Inference holds 1.3-3.3x the largest module's input +
# output (temporaries inside modules, the allocator's reuse; the most: lite0's frozen-output cache once
# kt's heap stopped being trimmed, whose peak varies by GBs between runs): 4 covers it with 20 % to spare.
# Training kept 0.5-0.95x the sum of leaf outputs (in-place and view modules count there).
INFER_FACTOR = 4.0
TRAIN_FACTOR = 1.0
STANDIN_INFER = 10e6  # bytes per image at 224 px where a model was not sized (EfficientNet-Lite0: 9.6e6)
STANDIN_TRAIN = 250e6  # (ViT-B/16: 236e6, ResNet-50: 139e6)


@dataclass(frozen=True)
class ModelCost:
    """What sizes a job: a model's parameter count, inference throughput (images/s) and activation
    bytes per image (the largest layer's input + output for inference, every layer's output for
    training: :func:`activation_bytes`), at input side ``size``."""

    params: int
    images_per_s: float
    size: int = 224  # input side in pixels
    infer_bytes: float | None = None  # None: not measured, a stand-in scaled from ResNet-50's
    train_bytes: float | None = None

    def activations(self) -> tuple[float, float]:
        """(inference, training) activation bytes per image, the stand-in's scaled to ``size``."""
        scale = (self.size / 224) ** 2
        return (self.infer_bytes if self.infer_bytes is not None else STANDIN_INFER * scale,
                self.train_bytes if self.train_bytes is not None else STANDIN_TRAIN * scale)

    @classmethod
    def read(cls, logits: str | Path, images_per_s: float, size: int = 224) -> ModelCost:
        """From a model's eval logits attrs once extracted (throughput, parameters), else the stand-ins."""
        if not Path(logits).is_file():
            return cls(UNKNOWN_PARAMS, images_per_s, size)
        from kt.artifacts import open_h5  # h5py only where a file is read

        with open_h5(logits) as f:
            attrs = f.attrs
            size = json.loads(attrs.get("preprocessing", "{}")).get("size", size)
            return cls(int(attrs.get("params", UNKNOWN_PARAMS)), float(attrs.get("images_per_s", images_per_s)),
                       int(size))

    def with_sizes(self, sized: dict[str, Any] | None) -> ModelCost:
        """Activation bytes (and, for a model not yet measured, parameters) from model_sizes' entry."""
        if not sized:
            return self
        params = sized["params"] if self.params == UNKNOWN_PARAMS else self.params
        return replace(self, params=params, size=sized.get("size", self.size),
                       infer_bytes=sized.get("infer_bytes"), train_bytes=sized.get("train_bytes"))

    @property
    def mb(self) -> float:
        return self.params * 4 / 2**20  # float32 weights


def model_sizes(specs: dict[str, Any], registry: Any = None) -> dict[str, dict[str, Any] | None]:
    """Parameters, input side and activation bytes per image of each model, built and run on the meta
    device (no weights, no memory, no compute: ~0.1-0.5 s a model), so that an extraction is sized
    before it measures its model; None for a model that cannot be built there (e.g. open_clip's
    zero-shot head needs its text tower)."""
    import torch

    from kt.errors import KtError
    from kt.models import ModelSpec, create_model

    sizes: dict[str, dict[str, Any] | None] = {}
    for name, entry in specs.items():
        spec = ModelSpec.parse(entry)
        try:
            with torch.device("meta"):
                model = create_model(replace(spec, weights=None, pretrained=False), None, registry)
            side = int(model.preprocess.size)
            infer, train = activation_bytes(model, side)
            sizes[name] = {"params": sum(p.numel() for p in model.parameters()), "size": side,
                           "infer_bytes": infer, "train_bytes": train}
        except (KtError, RuntimeError, TypeError, ValueError, NotImplementedError):
            sizes[name] = None
    return sizes


def activation_bytes(model: Any, size: int) -> tuple[int, int]:
    """(inference, training) float32 activation bytes per image of a model on the meta device: the
    largest input + output of any module (what inference holds at once), and the sum of every leaf
    module's output (what training keeps for the backward pass), from one forward of a meta image."""
    import torch

    largest, kept = 0, 0

    def numel(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel()
        return sum(numel(v) for v in x) if isinstance(x, (tuple, list)) else 0

    def hook(module: Any, inputs: tuple, output: Any) -> None:
        nonlocal largest, kept
        largest = max(largest, numel(inputs) + numel(output))
        if not any(True for _ in module.children()):
            kept += numel(output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return 4 * largest, 4 * kept


def memory_mb(*, students: list[ModelCost], frozen: list[ModelCost], batch: int, workers: int,
              attempt: int = 1, eval_batch: int | None = None, cpu: bool = True) -> int:
    """Host memory of a job: trained students hold weights, gradients, momentum and the checkpoint
    being loaded (4 copies, plus the frozen initial copy that data partitioning uses); frozen models
    (teachers, extraction) their weights and the loaded state dict (2 copies); the main process a
    few float batches at the largest input size. On a CPU (``cpu``) activations come on top: the
    larger of a training step's (the students' at ``batch``, beside a frozen model's inference) and an
    inference pass's at ``eval_batch`` (extraction, evaluation, the cache; default ``batch``). A retry
    after an out-of-memory kill asks for ``attempt`` times as much."""
    models = sum(5 * s.mb for s in students) + sum(2 * f.mb for f in frozen)
    side = max(m.size for m in [*students, *frozen])
    inputs = BATCHES_HELD * max(batch, eval_batch or 0) * 3 * side**2 * 4 / 2**20
    mb = BASE_MB + models + inputs + WORKER_MB * workers
    if cpu:
        mb += activations_mb(students, frozen, batch, eval_batch or batch)
    return int(math.ceil(mb * attempt / 500) * 500)


def activations_mb(students: list[ModelCost], frozen: list[ModelCost], batch: int, eval_batch: int) -> float:
    """Peak activation memory of a CPU job (see :func:`memory_mb`), measured factors applied."""
    infer = [m.activations()[0] for m in [*students, *frozen]]
    train = sum(s.activations()[1] for s in students)
    step = batch * (TRAIN_FACTOR * train + (INFER_FACTOR * max(infer) if students and frozen else 0))
    return max(step, eval_batch * INFER_FACTOR * max(infer)) / 2**20


def runtime_min(seconds: float, *, safety: float, attempt: int = 1) -> int:
    """Minutes to ask for: the estimate times ``safety`` plus start-up; a retried job (it resumes
    where it stopped) gets ``attempt`` times as long."""
    return max(MIN_RUNTIME_MIN, int(math.ceil((safety * seconds / 60 + STARTUP_MIN) * attempt)))


def transfer_seconds(student: ModelCost, teachers: list[ModelCost], *, train_images: int, eval_images: int,
                     epochs: int, evaluations: int, cached: bool, trained: bool = False) -> float:
    """One transfer: ``epochs`` passes of student steps (plus the frozen teachers and initial
    student online, unless a frozen-output cache holds them) and ``evaluations`` passes over the
    eval split. ``trained``: the teachers train too (bikd): a training step and evaluations each."""
    step = TRAIN_COST / student.images_per_s
    if trained:
        step += sum(TRAIN_COST / t.images_per_s for t in teachers)
    elif not cached:
        step += 1 / student.images_per_s + sum(1 / t.images_per_s for t in teachers)
    evaluated = [student, *teachers] if trained else [student]
    return train_images * epochs * step + sum(eval_images * evaluations / m.images_per_s for m in evaluated)


def forward_seconds(models: list[ModelCost], images: int) -> float:
    """Inference of every model over ``images`` (extraction, a frozen-output cache, a soup's evaluation)."""
    return sum(images / m.images_per_s for m in models)


AUTO_EXTRACT_THREADS = 8  # extract.workers auto on image files: a GPU node's usual CPU share per job
SMALL_JOB = {"mem_mb": 2000, "runtime": 10}  # tables and figures from logits: evaluate, summarize, select
ZOO_JOB = {"mem_mb": 2000, "runtime": 60}  # a zoo model: 28-px images, a few epochs


def model_sizes_minutes(models: int) -> int:
    """~0.3 s a model on the meta device, with start-up."""
    return 10 + models // 100


def complementarity_mb(models: int, eval_images: int, attempt: int = 1) -> int:
    """Per model and eval sample: correctness and two float32 statistics held (9 B), the table's
    block working memory and libraries on top (benchmarks/README.md, section complementarity)."""
    held = models * eval_images * 9 / 2**20
    return int(math.ceil((BASE_MB + 2 * held) * attempt / 500) * 500)


def complementarity_seconds(models: int, eval_images: int) -> float:
    """Per 50,000 eval samples: loading ~0.25 s a file (1000 classes) and the table ~30 us a pair
    on 2 cores (benchmarks/README.md, section complementarity)."""
    return eval_images / 50_000 * (0.25 * models + 3e-5 * models**2)
