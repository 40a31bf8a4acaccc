"""glibc malloc settings for CPU jobs: keep freed memory instead of returning it to the OS.

As it comes, glibc serves every block above its mmap threshold (adaptive, at most 32 MiB) with fresh
pages and unmaps it on free, and trims the heap top. A CPU forward pass at 224 px allocates and frees
activations of tens to hundreds of MiB per layer, so every batch page-faults them in again: kernel
time exceeds the model's (benchmarks/README.md, "Allocator": EfficientNet-Lite0 extraction at about
half a bare loop's speed). :func:`steady` makes every allocation come from the heap and never trims
it, as the benchmarks' ``--malloc steady`` did. Within a phase (a pass of equal batches) freed blocks
are reused as they are; between phases of other shapes (training steps, then an evaluation pass at
another batch size) :func:`release` hands the free memory back, so that one phase's leftovers do not
add to the next one's peak (benchmarks/README.md, "Job memory").

Every kt process calls it (the CLI, before any work; loader workers are forked from it and inherit
it). ``KT_MALLOC=glibc`` in the environment keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
ENV = "KT_MALLOC"


def steady() -> bool:
    """No mmap-served blocks (M_MMAP_MAX 0) and no trimming (M_TRIM_THRESHOLD -1, which glibc stores as
    SIZE_MAX: the largest positive int, 2^31 - 1, still trims, since a 224-px batch's free heap top
    passes 2 GiB). Returns whether the settings took effect: False where ``KT_MALLOC=glibc`` or the C
    library is not glibc."""
    if os.environ.get(ENV, "steady") == "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False


def release() -> None:
    """Return the heap's free pages to the OS (``malloc_trim``): called between a job's phases."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
