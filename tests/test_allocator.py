"""kt's allocator settings (kt/allocator.py), checked in a fresh process so the test process keeps
glibc's own: a freed block larger than 2 GiB stays in the heap instead of being trimmed and
page-faulted in again on the next batch."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

FREE_A_BLOCK = r"""
import ctypes, sys
from kt.allocator import M_MMAP_MAX, M_TRIM_THRESHOLD, steady
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
if sys.argv[1] == "steady":
    assert steady()
else:  # what kt set before: the largest positive int as the trim threshold
    assert libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
block = libc.malloc(2200 << 20)  # 2.2 GB of address space from the heap; its pages are never touched
assert block
top = libc.sbrk(0)
libc.free(block)
print((top - libc.sbrk(0)) >> 20)  # MiB the heap gave back to the OS on free
"""


def given_back_mb(setting: str) -> int:
    done = subprocess.run([sys.executable, "-c", FREE_A_BLOCK, setting], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_steady_keeps_a_freed_block_over_2_gib_in_the_heap() -> None:
    """A 224-px batch's activations free more than 2 GiB at the heap's top: with the threshold at 2^31 - 1
    glibc hands all 2,200 MiB back (and the next batch faults them in again: the system time that halved
    CPU jobs' speed, benchmarks/README.md), with kt's setting none of it."""
    assert given_back_mb("int-max") == 2200
    assert given_back_mb("steady") == 0
