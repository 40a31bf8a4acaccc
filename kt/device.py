"""Device selection, AMP and batch-size back-off shared by every compute step."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger("kt")
T = TypeVar("T")


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: the first GPU this job was given (CUDA_VISIBLE_DEVICES), else the CPU with a warning
    when a GPU was asked for."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if requested == "auto" else requested)
    if requested != "auto" or os.environ.get("CUDA_VISIBLE_DEVICES"):
        log.warning("no usable GPU (asked for %r, CUDA_VISIBLE_DEVICES=%r): running on the CPU",
                    requested, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return torch.device("cpu")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it, fp16 on older ones (V100, T4), None (exact fp32) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to :func:`amp_dtype`; a no-op on the CPU."""
    dtype = amp_dtype(device)
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling where training runs in fp16 (its gradients underflow without it); disabled,
    a pass-through, with bf16 or on the CPU."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)


class BatchBackoff:
    """Runs ``fn`` on a batch in sub-batches, halving their size on GPU out-of-memory and remembering
    the size that fit, as timm's validate.py does at the process level. The one back-off of kt:
    extraction and evaluation (:meth:`__call__`) and the training step (:meth:`over`, which also
    resets the accumulated gradients before a retry). ``name`` prefixes its warnings."""

    def __init__(self, max_batch: int, name: str = "") -> None:
        self.size = max_batch
        self.name = name

    def __call__(self, fn: Callable[[torch.Tensor], T], x: torch.Tensor) -> list[T]:
        return self.over(len(x), lambda rows: fn(x[rows]))

    def over(self, n: int, fn: Callable[[slice], T], reset: Callable[[], None] | None = None) -> list[T]:
        """``fn`` on consecutive slices of ``range(n)`` of at most :attr:`size` rows. On out-of-memory:
        ``reset()`` (undo what the failed parts did), halve the size and redo every part; at size 1
        the error is raised."""
        while True:
            try:
                return [fn(slice(i, i + self.size)) for i in range(0, n, self.size)]
            except torch.OutOfMemoryError:
                if self.size == 1:
                    raise
                self.size = max(1, self.size // 2)
                log.warning("%sout of memory: retrying with batch size %d", f"{self.name}: " if self.name else "",
                            self.size)
                if reset is not None:
                    reset()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def find_batch_size(step: Callable[[int], object], start: int, limit: int = 4096) -> int:
    """The paper's rule: double the batch from ``start`` while ``step(size)`` fits on the GPU, then
    keep the last size that did (halving first if ``start`` itself does not fit)."""
    size, fits = start, None
    while True:
        try:
            step(size)
            ok = True
        except torch.OutOfMemoryError:
            ok = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if ok:
            fits = size
            if size * 2 > limit:
                return fits
            size *= 2
        elif fits is not None:
            return fits
        elif size == 1:
            raise torch.OutOfMemoryError("not even a batch of 1 fits on the GPU")
        else:
            size //= 2
