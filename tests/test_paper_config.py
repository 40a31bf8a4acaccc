"""configs/paper.yaml, the paper's 20 x 20 ImageNet grid: it plans offline on an ImageNet-style folder
(the 1000 synset folders, a handful of images), with ``dataset.root`` the only thing given, and a
misspelled timm tag fails the dry run naming the model and the right tag."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
import timm.data
import yaml
from PIL import Image
from test_config import DEFAULT, REPO, SCHEMA, dry_run

from kt.check import check
from kt.config import validate
from kt.errors import KtError

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


def merged(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` key by key, as Snakemake merges config files."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def plan(config: Path, root: Path, results: Path) -> tuple[dict[str, int], str, float]:
    """The config's own command as a dry run (``-p``: with the shell commands) from the repository root,
    with the results redirected into the test's folder: the job counts, the output, the seconds."""
    start = time.perf_counter()
    done = dry_run("-p", "--profile", "slurm", "--configfile", str(config),
                   "--config", f"dataset={json.dumps({'root': str(root)})}", f"results={results}")
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
    # Over config.yaml, without a root: the schema accepts it, and the check names the missing key.
    config = merged(DEFAULT, config)
    validate(config, SCHEMA)
    with pytest.raises(KtError, match=r"config key dataset\.root is required by dataset 'imagefolder'"):
        check(config)


def test_the_paper_config_plans_offline_with_only_the_root(imagenet: Path, tmp_path: Path) -> None:
    """Every job at once (the grid does not wait for the select checkpoint): the 39 eval extractions,
    one transfer per (paired strategy, grid pair) plus the control per student, the multi-teacher
    modes and their members, one evaluation per run."""
    config = paper()
    counts, output, seconds = plan(PAPER, imagenet, tmp_path / "results")
    students, teachers = config["select"]["students"], config["select"]["teachers"]
    groups = config["multi_teacher"]["groups"]
    pairs = {(t, s) for s in students for t in teachers if t != s}
    members = {(t, g["student"]) for g in groups for t in g["teachers"]}
    paired = [s for s in config["transfer"]["strategies"] if s != "ce"]
    controls = set(students) | {g["student"] for g in groups}  # ce: once per student
    transfers = len(pairs) * len(paired) + len(controls) + len(members - pairs)
    assert (len(pairs), len(paired), len(controls), len(members - pairs)) == (399, 5, 21, 3)  # twins_svt_l's members
    assert transfers == 2019
    modes = len(groups) * len(config["multi_teacher"]["modes"])  # sequential, parallel, soup for 3 groups
    assert counts == {"model_sizes": 1, "extract": 39, "complementarity": 1, "select_pairs": 1, "transfer": 2019,
                      "multi_transfer": 6, "soup": 3, "evaluate": 2019 + modes, "summarize": 1, "all": 1,
                      "total": 4100}, counts
    assert "rule cache_frozen:" not in output  # cache_views 0: the frozen models run online

    extracted = re.findall(r"wildcards: split=(\w+), model=(\w+)", output)
    assert sorted(m for _, m in extracted) == sorted(m["name"] for m in config["models"])
    assert {split for split, _ in extracted} == {"eval"}
    # The command-line root merges into the config's dataset section; jobs get the paper's settings.
    dataset = {"name": "imagefolder", "root": str(imagenet), "train": "train", "eval": "val", "classes_file": None,
               "seed": 0, "subset": {"train": 0.1, "eval": None}}
    assert f"--dataset '{json.dumps(dataset, sort_keys=True)}'" in output
    command = next(line for line in output.splitlines()
                   if " transfer --teacher " in line and "--strategy kl_dp " in line and "volo_d2_224" in line)
    settings = json.loads(command.split("--settings '", 1)[1].split("'", 1)[0])
    assert {k: settings[k] for k in ("epochs", "lr", "momentum", "weight_decay", "auto_batch_size", "augment",
                                     "cache_views", "workers", "seed")} == {
        "epochs": 20, "lr": None, "momentum": 0.9, "weight_decay": 0.0001, "auto_batch_size": True,
        "augment": "paper", "cache_views": 0, "workers": 8, "seed": 0}
    assert all("--workers 8 " in line for line in output.splitlines() if " extract --model " in line)
    print(f"dry run, {counts['total']} jobs: {seconds:.1f} s")


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
