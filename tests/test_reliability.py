"""Failure modes: broken files and data are named, no failure leaves an artifact that looks complete,
killed runs resume exactly (config mistakes: tests/test_config.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from kt.artifacts import FORMAT_VERSION, read_logits
from kt.errors import KtError
from kt.extract import extract
from kt.models import ModelSpec, create_model

REPO = Path(__file__).resolve().parents[1]


def _write_logits(path: Path, version: int = FORMAT_VERSION) -> None:
    with h5py.File(path, "w") as f:
        f["logits"] = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32)
        f["labels"] = np.arange(50) % 10
        f["index"] = np.arange(50)
        f.attrs["format_version"] = version
        f.attrs["dataset_fingerprint"] = "abc"


def test_truncated_hdf5_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    _write_logits(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(KtError, match=re.escape(str(path)) + ".*(truncated|corrupt)"):
        read_logits(path)
    done = subprocess.run([sys.executable, "-m", "kt", "inspect", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("kt: error:") and "Traceback" not in done.stderr


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    _write_logits(path, version=FORMAT_VERSION + 1)
    with pytest.raises(KtError, match="newer kt"):
        read_logits(path)


def test_sigkill_mid_extraction_leaves_no_complete_looking_file(tmp_path: Path, tiny_resnet_spec, fmnist) -> None:
    out = tmp_path / "logits" / "eval" / "m.h5"
    cmd = [sys.executable, "-m", "kt", "--threads", "1", "extract", "--model", json.dumps(tiny_resnet_spec.to_dict()),
           "--dataset", '{"name": "fashion_mnist"}', "--batch-size", "16", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.parent.is_dir() and any(out.parent.glob(".m.h5.tmp-*"))):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert time.time() < deadline, "extraction never started writing"
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [f".m.h5.tmp-{proc.pid}"]


def test_extraction_is_bit_identical_across_runs(tmp_path: Path, tiny_resnet_spec, fmnist) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    extract(tiny_resnet_spec, fmnist, "eval", a, batch_size=64)
    extract(tiny_resnet_spec, fmnist, "eval", b, batch_size=64)
    assert np.array_equal(read_logits(a).logits, read_logits(b).logits)


def test_sigkill_during_transfer_then_rerun_resumes_to_the_same_result(tmp_path: Path, tiny_resnet_spec) -> None:
    torch.manual_seed(7)
    teacher = ModelSpec(**{**tiny_resnet_spec.to_dict(), "name": "teacher", "weights": str(tmp_path / "t.pth")})
    torch.save(create_model(replace(teacher, weights=None, pretrained=False)).body.state_dict(), teacher.weights)
    settings = {"epochs": 3, "batch_size": 32, "lr": 0.01, "eval_every": 0}
    dataset = {"name": "fashion_mnist", "subset": {"train": 1500, "eval": 200}}

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "kt", "--threads", "1", "transfer", "--teacher", json.dumps(teacher.to_dict()),
                "--student", json.dumps(tiny_resnet_spec.to_dict()), "--strategy", "kl_dp",
                "--dataset", json.dumps(dataset), "--settings", json.dumps(settings), "--out", str(out)]

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "state.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "state.pt").exists() and not (killed / "eval_after.h5").exists()
    resumed = subprocess.run(cmd(killed), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    assert subprocess.run(cmd(clean), capture_output=True, timeout=300).returncode == 0
    assert np.array_equal(read_logits(killed / "eval_after.h5").logits, read_logits(clean / "eval_after.h5").logits)


def _image_folder(root: Path, corrupt: bool = False) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 10), (i * 90, 30, 200)).save(folder / f"{i}.png")
    if corrupt:
        (root / "val" / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def test_image_folder_mistakes_are_named(tmp_path: Path) -> None:
    from kt.data import Loader, load_split
    from kt.preprocess import Preprocessing

    with pytest.raises(KtError, match="is not a folder"):
        load_split({"name": "imagefolder", "root": str(tmp_path / "nowhere")}, "eval")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(KtError, match="no class folders"):
        load_split({"name": "imagefolder", "root": str(tmp_path / "empty")}, "eval")
    root = _image_folder(tmp_path / "ok", corrupt=True)
    split = load_split({"name": "imagefolder", "root": str(root)}, "eval")
    assert len(split) == 5 and split.classes == ["cat", "dog"]
    with pytest.raises(KtError, match=r"broken\.jpg"):
        list(Loader(split, Preprocessing(size=8), batch_size=8).batches())


def test_slurm_profile_requests_a_gpu_for_every_rule_that_declares_one() -> None:
    import re

    gpu_rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=(?:rule|checkpoint) )", smk.read_text()):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if name and re.search(r"^\s+gpu=1,", block, re.M):
                gpu_rules.add(name.group(1))
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert gpu_rules >= {"extract", "transfer", "multi_transfer"}
    assert {r for r, res in profile["set-resources"].items() if res.get("gpu") == 1} == gpu_rules
