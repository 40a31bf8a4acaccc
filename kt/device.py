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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs that support it (fp16 otherwise); a no-op on the CPU (exact fp32)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class BatchBackoff:
    """Runs ``fn`` on a batch in sub-batches, halving their size on GPU out-of-memory and remembering
    the size that fit, as timm's validate.py does at the process level."""

    def __init__(self, max_batch: int) -> None:
        self.size = max_batch

    def __call__(self, fn: Callable[[torch.Tensor], T], x: torch.Tensor) -> list[T]:
        while True:
            try:
                return [fn(x[i:i + self.size]) for i in range(0, len(x), self.size)]
            except torch.OutOfMemoryError:
                if self.size == 1:
                    raise
                self.size = max(1, self.size // 2)
                log.warning("out of memory: retrying with batch size %d", self.size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
