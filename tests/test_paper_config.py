"""configs/paper.yaml, the paper's 20 x 20 ImageNet grid: it plans offline on an ImageNet-style folder
(the 1000 synset folders, a handful of images), with ``dataset.root`` the only thing given, and a
misspelled timm tag fails the dry run naming the model and the right tag."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import h5py
import polars as pl
import pytest
import timm.data
import yaml
from PIL import Image
from test_config import REPO, dry_run

PAPER = REPO / "configs" / "paper.yaml"
SYNSETS = Path(timm.data.__file__).parent / "_info" / "imagenet_synsets.txt"


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """train/ and val/ with ImageNet's 1000 synset folders; one tiny JPEG in each of the first ten
    (imagefolder accepts empty class folders, and a dry run reads no image)."""
    root = tmp_path_factory.mktemp("imagenet")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buffer, "JPEG")
    synsets = SYNSETS.read_text().split()
    assert len(synsets) == 1000
    for split in ("train", "val"):
        for i, synset in enumerate(synsets):
            (root / split / synset).mkdir(parents=True)
            if i < 10:
                (root / split / synset / f"{synset}_0.JPEG").write_bytes(buffer.getvalue())
    return root


def paper() -> dict:
    return yaml.safe_load(PAPER.read_text())


def plan(config: Path, root: Path, results: Path) -> tuple[dict[str, int], str, float]:
    """``snakemake -n`` from the repository root, as the config's comment says, with the results
    redirected into the test's folder; the job counts, the output and the seconds it took."""
    start = time.perf_counter()
    done = dry_run("--configfile", str(config), "--config", f"dataset={json.dumps({'root': str(root)})}",
                   f"results={results}")
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    table = output.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}
    return counts, output, seconds


def test_the_paper_config_is_the_papers_grid() -> None:
    """20 students x 20 teachers sharing ResMLP-36 (39 models, each entered once), every model a
    pretrained timm tag, the paper's regime, and the three-teacher groups of its multi-teacher table."""
    config = paper()
    names = [m["name"] for m in config["models"]]
    students, teachers = config["select"]["students"], config["select"]["teachers"]
    assert len(students) == len(set(students)) == 20 and len(teachers) == len(set(teachers)) == 20
    assert set(students) & set(teachers) == {"resmlp_36"}
    assert len(names) == len(set(names)) == 39 and set(names) == set(students) | set(teachers)
    assert all(m["id"].startswith("timm:") and m["id"][5:] in timm.list_pretrained(m["id"][5:])
               for m in config["models"])
    assert "root" not in config["dataset"] and config["dataset"]["subset"] == {"train": 0.1, "eval": None}
    assert config["zoo"]["models"] == []
    transfer = config["transfer"]
    assert (transfer["epochs"], transfer["lr"], transfer["momentum"], transfer["weight_decay"]) == (20, None, 0.9, 1e-4)
    assert transfer["auto_batch_size"] and transfer["augment"] == "paper" and transfer["cache_views"] == 0
    assert {"kl", "xekl", "xekl_mcl", "kl_dp", "kl_dp_unsup"} <= set(transfer["strategies"])
    groups = config["multi_teacher"]["groups"]
    assert [g["student"] for g in groups] == ["xcit_l24_p16", "twins_svt_l", "pit_b"]
    assert all(g["teachers"] == ["resmlp_36", "swsl_resnext101", "volo_d2"] for g in groups)


def test_the_paper_config_plans_offline_with_only_the_root(imagenet: Path, tmp_path: Path) -> None:
    """Before the select checkpoint the dry run shows the 39 eval extractions; once the
    complementarity table and the pairs exist (written here as stand-ins), every transfer."""
    config = paper()
    counts, output, seconds = plan(PAPER, imagenet, tmp_path / "results")
    assert counts == {"extract": 39, "complementarity": 1, "select_pairs": 1, "summarize": 1, "all": 1,
                      "total": 43}, counts
    extracted = re.findall(r"wildcards: split=(\w+), model=(\w+)", output)
    assert sorted(m for _, m in extracted) == sorted(m["name"] for m in config["models"])
    assert {split for split, _ in extracted} == {"eval"}
    assert "checkpoint jobs" in output and "rule transfer:" not in output
    print(f"dry run before the checkpoint: {seconds:.1f} s")

    # The checkpoint's inputs and outputs, oldest first: eval logits (with the attrs that size jobs),
    # the complementarity outputs, then results/pairs.parquet holding the grid.
    results, now = tmp_path / "results", time.time()
    students, teachers = config["select"]["students"], config["select"]["teachers"]
    for i, model in enumerate(config["models"]):
        path = results / "logits" / "eval" / f"{model['name']}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.attrs.update(params=(i + 1) * 5_000_000, images_per_s=2000.0, preprocessing='{"size": 224}')
        os.utime(path, (now - 300, now - 300))
    for name in ("complementarity/pairs.parquet", "complementarity/per_class.h5", "figures/flip_heatmap.png",
                 "figures/knowledge_vs_accdiff.png"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_bytes(b"")
        os.utime(results / name, (now - 200, now - 200))
    pairs = [(t, s) for s in students for t in teachers if t != s]
    pl.DataFrame(pairs, schema=["teacher", "student"], orient="row").write_parquet(results / "pairs.parquet")
    assert len(pairs) == 399

    counts, output, seconds = plan(PAPER, imagenet, results)
    paired = [s for s in config["transfer"]["strategies"] if s != "ce"]
    group_students = [g["student"] for g in config["multi_teacher"]["groups"]]
    members_outside_grid = 3  # twins_svt_l is no grid student: its three kl_dp member runs are extra
    transfers = len(pairs) * len(paired) + len(set(students) | set(group_students)) + members_outside_grid
    assert transfers == 399 * 5 + 21 + 3 == 2019
    assert counts == {"transfer": 2019, "multi_transfer": 6, "soup": 3, "evaluate": 2019 + 9, "summarize": 1,
                      "all": 1, "total": 4058}, counts
    assert "rule extract:" not in output and "rule cache_frozen:" not in output  # cache_views 0: online
    print(f"dry run after the checkpoint ({counts['total']} jobs): {seconds:.1f} s")


def test_a_misspelled_tag_fails_the_dry_run_naming_the_model_and_the_tag(imagenet: Path, tmp_path: Path) -> None:
    text = PAPER.read_text()
    assert text.count("timm:volo_d2_224.sail_in1k\"") == 1
    (tmp_path / "paper.yaml").write_text(text.replace("timm:volo_d2_224.sail_in1k\"", "timm:volo_d2_224.sail_inlk\""))
    done = dry_run("--configfile", str(tmp_path / "paper.yaml"), "--config",
                   f"dataset={json.dumps({'root': str(imagenet)})}", f"results={tmp_path / 'results'}")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "config model 'volo_d2'" in output and "no weights 'sail_inlk' for volo_d2_224" in output, output[-3000:]
    assert "Did you mean: sail_in1k?" in output, output[-3000:]
    assert "Traceback" not in output and not (tmp_path / "results").exists()
