"""Benchmark: kt's share of ``snakemake -n`` (parse and DAG), on the default config and on the
paper's 400-model config over an ImageNet-size listing.

Every measurement is ``snakemake -n --cores 1`` in a fresh working folder, best of ``--repeats``:

* ``baseline``: a Snakefile with one empty rule: Snakemake's own start-up, the same in every row;
* ``default``: config.yaml (nothing computed yet, so the DAG holds the zoo, extraction and selection);
* ``paper``: configs/paper.yaml with ``dataset.root`` a synthetic ImageNet listing (1000 synset folders
  of ``--per-class`` empty train files and 50 val files: the listing, not the images, is what a dry run reads);

each ``cold`` (an empty facts cache, ``$KT_FACTS_CACHE``: the plugins load, as after a change of the config, a
plugin or a library) and ``warm`` (a dry run ran before). kt's share is a row's time minus the
baseline's. ``--before REV`` measures git revision REV the same way (a worktree, with kt imported
from it through PYTHONPATH). The SLURM executor plugin's probe at import (``scontrol show config``,
~9 s on a machine with slurm-client but no reachable controller) is excluded from every row by a
stub ``scontrol`` first on PATH.

A row's time minus the baseline's also holds Snakemake's own work per job (building, checking and
printing each of the paper's ~4,100 jobs), so the warm rows of the current revision are also run
under cProfile, and the time spent in kt's code is reported on its own: the parse (the rule files'
module bodies, common.smk's imports included) plus every function of the workflow's rules and of ``kt`` that
Snakemake calls (input, param and resource functions), inclusive of what they call.

    .venv/bin/python benchmarks/dry_run.py --before 1082450       # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/dry_run.py --per-class 100 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py: scripts run with benchmarks/ on sys.path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "rule all:\n    input: []\n"


def listing(root: Path, per_class: int) -> None:
    """An ImageNet-like folder of empty JPEG names: 1000 synsets, ``per_class`` train and 50 val files."""
    from timm.data import ImageNetInfo

    for split, n in (("train", per_class), ("val", 50)):
        for synset in ImageNetInfo().label_names():
            folder = root / split / synset
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{synset}_{i}.JPEG").touch()


def dry_run(repo: Path, workdir: Path, args: list[str], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile", str(repo / "Snakefile"),
           "--directory", str(workdir), *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return seconds


def kt_seconds(repo: Path, workdir: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds in kt's code, seconds of the whole run), both under cProfile, for a warm dry run."""
    import pstats

    dry_run(repo, workdir, args, env)
    out = workdir / "profile.out"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "snakemake", "-n", "--cores", "1",
           "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir), *args]
    subprocess.run(cmd, cwd=repo, env=env, capture_output=True, check=True)
    stats = pstats.Stats(str(out)).stats
    ours = (str(repo / "kt"), str(repo / "workflow"))  # not the Snakefile: its body is the includes

    def is_ours(func: tuple) -> bool:
        return func[0].startswith(ours)

    # time entering kt's code from outside it: per call edge (a function that Snakemake and kt both
    # call counts only its calls from Snakemake), inclusive of what it calls
    seconds = sum(edge[3] for func, (*_counts, callers) in stats.items() if is_ours(func)
                  for caller, edge in callers.items() if not is_ours(caller))
    total = max(ct for _cc, _nc, _tt, ct, _callers in stats.values())
    return seconds, total


def measure(repo: Path, name: str, args: list[str], env: dict[str, str], tmp: Path, repeats: int) -> dict[str, float]:
    out = {}
    for state in ("cold", "warm"):
        best = float("inf")
        for i in range(repeats):
            workdir = tmp / f"{name}-{state}-{i}"
            workdir.mkdir()
            env = {**env, "KT_FACTS_CACHE": str(workdir / "facts")}  # empty: a cold parse
            if state == "warm":
                dry_run(repo, workdir, args, env)
            best = min(best, dry_run(repo, workdir, args, env))
        out[state] = best
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=1281, help="train files per synset (ImageNet: 1281)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--before", help="a git revision to measure the same way (e.g. the one before kt.facts)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stub = tmp / "bin"
        stub.mkdir()
        (stub / "scontrol").write_text("#!/bin/sh\nexit 1\n")
        (stub / "scontrol").chmod(0o755)
        env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        listing(tmp / "imagenet", args.per_class)
        print(f"# listing of {1000 * (args.per_class + 50):,} files written in {time.perf_counter() - t0:.0f} s")
        repos = {"now": REPO}
        if args.before:
            repos = {args.before: tmp / "before", **repos}
            subprocess.run(["git", "worktree", "add", "--detach", str(repos[args.before]), args.before], cwd=REPO,
                           check=True, capture_output=True)
        try:
            report(repos, env, tmp, args)
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(repos[args.before])], cwd=REPO)
    return 0


def report(repos: dict[str, Path], env: dict[str, str], tmp: Path, args: argparse.Namespace) -> None:
    snakefile = tmp / "baseline" / "Snakefile"
    snakefile.parent.mkdir()
    snakefile.write_text(BASELINE)
    base = measure(snakefile.parent, "baseline", [], env, tmp, args.repeats)["warm"]
    print(f"# {machine()}, {os.cpu_count()} CPUs; best of {args.repeats}; scontrol probe excluded")
    print(f"baseline (empty Snakefile)      {base:6.2f} s")
    for label, repo in repos.items():
        renv = {**env, "PYTHONPATH": str(repo)}
        default = ["--configfile", str(repo / "config.yaml")]
        paper = [*default, str(repo / "configs" / "paper.yaml"), "--config", f"dataset={{root: {tmp / 'imagenet'}}}"]
        for name, extra in (("default", default), ("paper", paper)):
            times = measure(repo, f"{label}-{name}", extra, renv, tmp, args.repeats)
            print(f"{label:8s} {name:8s} cold {times['cold']:6.2f} s (- baseline {times['cold'] - base:5.2f} s)   "
                  f"warm {times['warm']:6.2f} s (- baseline {times['warm'] - base:5.2f} s)")
            if repo == REPO:
                workdir = tmp / f"{label}-{name}-profiled"
                workdir.mkdir()
                ours, total = kt_seconds(repo, workdir, extra, {**renv, "KT_FACTS_CACHE": str(workdir / "facts")})
                print(f"{'':17s} warm, profiled: {ours:5.2f} s in kt's code of {total:5.2f} s")


if __name__ == "__main__":
    sys.exit(main())
