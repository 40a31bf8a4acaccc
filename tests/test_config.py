"""The config as a user writes it: paths follow ``results:``, the profile is found by name, and every
misspelling a user or a plugin writer can make fails ``snakemake -n`` with its key path."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from kt.config import check, plugin_folders, validate
from kt.errors import KtError
from kt.registry import Registry

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def config_with(change=None) -> dict:
    config = copy.deepcopy(DEFAULT)
    if change:
        change(config)
    validate(config, SCHEMA)
    return config


def dry_run(*args: str, cwd: Path = REPO, config: dict | None = None, tmp_path: Path | None = None
            ) -> subprocess.CompletedProcess:
    extra = []
    if config is not None:
        path = tmp_path / "my.yaml"
        path.write_text(yaml.safe_dump(config))
        extra = ["--directory", str(tmp_path), "--configfile", str(path)]
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", *extra, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def test_every_artifact_path_follows_results(tmp_path: Path) -> None:
    """``results: out`` alone, merged over config.yaml from the repository root (the issue's exact
    command): the zoo checkpoints too live under out/."""
    (tmp_path / "my.yaml").write_text("results: out\n")
    done = dry_run("--configfile", str(tmp_path / "my.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "out/zoo/resnet_a.pth" in done.stdout and "out/logits/eval/vit.h5" in done.stdout
    assert "results/" not in done.stdout
    specs = check(config_with(lambda c: c.update(results="elsewhere")))
    assert specs["resnet_a"].weights == "elsewhere/zoo/resnet_a.pth"


@pytest.mark.parametrize("profile", [["--profile", "slurm"], ["--workflow-profile", "workflow/profiles/slurm"]])
def test_the_slurm_profile_is_found_from_the_repository_root(profile: list[str]) -> None:
    done = dry_run(*profile)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Using profile" in done.stderr + done.stdout or "Using workflow specific profile" in done.stderr


def test_zoo_preprocessing_and_classes_come_from_the_dataset() -> None:
    """No Fashion-MNIST constants in config.yaml: the dataset declares them; zoo keys still override."""
    assert "preprocess" not in DEFAULT["zoo"] and "num_classes" not in DEFAULT["zoo"]
    spec = check(config_with())["vit"]
    assert spec.num_classes == 10
    assert spec.preprocess == {"size": 28, "crop_pct": 1.0, "mean": [0.286] * 3, "std": [0.353] * 3}
    spec = check(config_with(lambda c: c["zoo"].update(preprocess={"size": 32}, num_classes=12)))["vit"]
    assert spec.preprocess["size"] == 32 and spec.preprocess["mean"] == [0.286] * 3 and spec.num_classes == 12


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["transfer"].update(options={"kl": {"temprature": 2}}),
     r"config key transfer\.options\.kl\.temprature: strategy 'kl' has no option 'temprature'\. "
     r"Did you mean: temperature\? Its options: temperature, lr"),
    (lambda c: c["transfer"].update(options={"kl_dq": {}}), r"config key transfer\.options\.kl_dq: unknown strategy"),
    (lambda c: c.update(dataset={"name": "imagefolder", "rooot": "/data"}),
     r"config key dataset\.rooot: dataset 'imagefolder' does not take this option\. Did you mean: root\?"),
    (lambda c: c.update(dataset={"name": "imagefolder"}), r"config key dataset\.root is required by dataset"),
    (lambda c: c.update(dataset={"name": "imagefolder", "root": "/no/such/folder"}),
     r"config key dataset: dataset\.root '/no/such/folder' is not a folder"),
    (lambda c: c.update(models=["timm:resnet50.no_such_tag"]),
     r"timm has no weights 'no_such_tag' for resnet50\..*Known tags: .*a1_in1k"),
    (lambda c: c.update(models=["torchvision:resnet50/IMAGENET1K_V9"]),
     r"torchvision has no weights 'IMAGENET1K_V9' for resnet50\. Did you mean: IMAGENET1K_V2, IMAGENET1K_V1\?"),
    (lambda c: c.update(models=["open_clip:RN50/opena1"]),
     r"open_clip has no weights 'opena1' for RN50\. Did you mean: openai\?"),
])
def test_misspellings_are_named_with_their_key(change, message: str) -> None:
    with pytest.raises(KtError, match=message):
        check(config_with(change))


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c["transfer"].update(options={"kl": {"temprature": 2}}), "transfer.options.kl.temprature"),
    (lambda c: c.update(models=["timm:resnet50.no_such_tag"]), "no_such_tag"),
    (lambda c: c.update(dataset={"name": "imagefolder", "rooot": "/data"}), "dataset.rooot"),
])
def test_misspellings_fail_the_dry_run(tmp_path: Path, change, expected: str) -> None:
    config = copy.deepcopy(DEFAULT)
    change(config)
    done = dry_run(config=config, tmp_path=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and expected in output, output[-2000:]
    assert "Traceback" not in output and not (tmp_path / "results").exists()


DIGITS_PLUGIN = '''
import numpy as np
import torch

import kt
from kt.data import TensorSplit


class Digits:
    """Grey 8 px digits: a mirrored 2 is no 2, so flips are declared invalid."""

    classes = [str(i) for i in range(10)]
    mean, std, size, hflip = (0.1, 0.1, 0.1), (0.3, 0.3, 0.3), 8, False

    def split(self, name):
        g = torch.Generator().manual_seed(0 if name == "train" else 1)
        images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
        return TensorSplit(name, np.arange(40), np.arange(40) % 10, self.classes, images=images)


@kt.hookimpl
def register_datasets(register):
    register("digits", Digits)
'''


def test_a_dataset_declares_its_statistics_size_and_flips(tmp_path: Path) -> None:
    (tmp_path / "digits.py").write_text(textwrap.dedent(DIGITS_PLUGIN))
    registry = Registry(plugin_dirs=(str(tmp_path),))

    def digits(c: dict) -> None:
        c.update(dataset={"name": "digits"}, plugin_dirs=[str(tmp_path)])
        for m in c["zoo"]["models"]:
            m["augment"] = "crop" if "crop" in m["augment"] else "none"
        c["transfer"]["augment"] = "none"

    spec = check(config_with(digits), registry)["resnet_a"]
    assert spec.preprocess == {"size": 8, "crop_pct": 1.0, "mean": [0.1] * 3, "std": [0.3] * 3}
    with pytest.raises(KtError, match=r"config key transfer\.augment: augmentation 'flip_crop' flips images, but "
                                      r"the dataset declares that a horizontal flip changes the label"):
        check(config_with(lambda c: (digits(c), c["transfer"].update(augment="flip_crop"))), registry)
    with pytest.raises(KtError, match=r"config key zoo\.models\[1\]\.augment: augmentation 'flip'"):
        check(config_with(lambda c: (digits(c), c["zoo"]["models"][1].update(augment="flip"))), registry)


def test_the_workflows_plugin_folder_is_found_beside_the_snakefile(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # as with snakemake --directory: the working directory is elsewhere
    (tmp_path / "mine").mkdir()
    folders = plugin_folders({"plugin_dirs": ["mine"]}, REPO)
    assert folders == [str(REPO / "plugins"), str(tmp_path / "mine")]
    registry = Registry(plugin_dirs=tuple(folders))
    assert "kl_correct" in registry.names("strategies")
    check(config_with(lambda c: c["transfer"].update(strategies=["kl_correct"])), registry)  # no error
