"""Peak memory of a command's whole process tree, for tests/test_resources.py and benchmarks/memory.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil


def peak_rss(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(peak MB of the process tree's summed RSS, as Snakemake's benchmark max_rss counts it; peak MB
    of its summed PSS, which counts pages shared by forked loader workers once, as a cgroup does;
    exit code)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                            env=None if env is None else {**os.environ, **env})
    root, peak, peak_pss, done = psutil.Process(proc.pid), 0, 0, threading.Event()

    def sample() -> None:
        nonlocal peak, peak_pss
        while not done.is_set():
            try:
                procs = [p for p in [root, *root.children(recursive=True)] if p.is_running()]
                peak = max(peak, sum(p.memory_info().rss for p in procs))
                peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample)
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        print(err.decode()[-2000:], file=sys.stderr)
    return peak / 2**20, peak_pss / 2**20, proc.returncode
