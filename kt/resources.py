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


@dataclass(frozen=True)
class ModelCost:
    """What sizes a job: a model's parameter count and inference throughput (images/s)."""

    params: int
    images_per_s: float
    size: int = 224  # input side in pixels

    @classmethod
    def read(cls, logits: str | Path, images_per_s: float, size: int = 224) -> ModelCost:
        """From a model's eval logits attrs once extracted, else the stand-ins."""
        if not Path(logits).is_file():
            return cls(UNKNOWN_PARAMS, images_per_s, size)
        from kt.artifacts import open_h5  # h5py only where a file is read

        with open_h5(logits) as f:
            attrs = f.attrs
            size = json.loads(attrs.get("preprocessing", "{}")).get("size", size)
            return cls(int(attrs.get("params", UNKNOWN_PARAMS)), float(attrs.get("images_per_s", images_per_s)),
                       int(size))

    @property
    def mb(self) -> float:
        return self.params * 4 / 2**20  # float32 weights


def model_sizes(specs: dict[str, Any], registry: Any = None) -> dict[str, dict[str, int] | None]:
    """Parameters and input side of each model, built on the meta device (no weights, no memory:
    ~0.1-0.5 s a model), so that an extraction is sized before it measures its model; None for a
    model that cannot be built there (e.g. open_clip's zero-shot head needs its text tower)."""
    import torch

    from kt.errors import KtError
    from kt.models import ModelSpec, create_model

    sizes: dict[str, dict[str, int] | None] = {}
    for name, entry in specs.items():
        spec = ModelSpec.parse(entry)
        try:
            with torch.device("meta"):
                model = create_model(replace(spec, weights=None, pretrained=False), None, registry)
            sizes[name] = {"params": sum(p.numel() for p in model.parameters()), "size": int(model.preprocess.size)}
        except (KtError, RuntimeError, TypeError, ValueError, NotImplementedError):
            sizes[name] = None
    return sizes


def memory_mb(*, students: list[ModelCost], frozen: list[ModelCost], batch: int, workers: int,
              attempt: int = 1) -> int:
    """Host memory of a job: trained students hold weights, gradients, momentum and the checkpoint
    being loaded (4 copies, plus the frozen initial copy that data partitioning uses); frozen models
    (teachers, extraction) their weights and the loaded state dict (2 copies); the main process a
    few float batches at the largest input size. A retry after an out-of-memory kill asks for
    ``attempt`` times as much. (On a CPU, training activations come on top: set mem_mb yourself.)"""
    models = sum(5 * s.mb for s in students) + sum(2 * f.mb for f in frozen)
    side = max(m.size for m in [*students, *frozen])
    inputs = BATCHES_HELD * batch * 3 * side**2 * 4 / 2**20
    mb = BASE_MB + models + inputs + WORKER_MB * workers
    return int(math.ceil(mb * attempt / 500) * 500)


def runtime_min(seconds: float, *, safety: float, attempt: int = 1) -> int:
    """Minutes to ask for: the estimate times ``safety`` plus start-up; a retried job (it resumes
    where it stopped) gets ``attempt`` times as long."""
    return max(MIN_RUNTIME_MIN, int(math.ceil((safety * seconds / 60 + STARTUP_MIN) * attempt)))


def transfer_seconds(student: ModelCost, teachers: list[ModelCost], *, train_images: int, eval_images: int,
                     epochs: int, evaluations: int, cached: bool) -> float:
    """One transfer: ``epochs`` passes of student steps (plus the frozen teachers and initial
    student online, unless a frozen-output cache holds them) and ``evaluations`` passes over the
    eval split."""
    step = TRAIN_COST / student.images_per_s
    if not cached:
        step += 1 / student.images_per_s + sum(1 / t.images_per_s for t in teachers)
    return train_images * epochs * step + eval_images * evaluations / student.images_per_s


def forward_seconds(models: list[ModelCost], images: int) -> float:
    """Inference of every model over ``images`` (extraction, a frozen-output cache, a soup's evaluation)."""
    return sum(images / m.images_per_s for m in models)
