"""The config as a user writes it: paths follow ``results:``, the profile is found by name, and every
misspelling a user or a plugin writer can make fails ``snakemake -n`` with its key path."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from kt.check import check
from kt.config import plugin_folders, validate
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


def test_seeds_put_each_run_and_cache_under_its_seed_and_the_control_runs_once_per_student(tmp_path: Path) -> None:
    (tmp_path / "my.yaml").write_text("results: out\ntransfer: {seeds: [0, 3], strategies: [kl, ce], augment: flip}\n")
    targets = ["out/transfer/kl/resnet_a__vit/seed3/transfer_metrics.parquet",
               "out/transfer/ce/none__vit/seed3/student.pth"]
    done = dry_run(*targets, "-p", "--configfile", str(tmp_path / "my.yaml"))  # targets first
    assert done.returncode == 0, done.stderr[-2000:]
    for path in ("out/transfer/cache/resnet_a__vit/seed3.h5", "out/transfer/kl/resnet_a__vit/seed3/student.pth",
                 "out/transfer/ce/none__vit/seed3/eval_after.h5",  # the evaluation compares with the control
                 "--control out/transfer/ce/none__vit/seed3/eval_after.h5"):
        assert path in done.stdout, path
    jobs = [line for line in done.stdout.splitlines() if " transfer " in line or " cache-frozen " in line]
    assert len(jobs) == 3 and all('"seed": 3' in line for line in jobs)  # the settings' seed (sorted keys)
    control = [line for line in jobs if "--strategy ce" in line]
    assert len(control) == 1 and "--teacher" not in control[0] and "--cache" not in control[0]
    (tmp_path / "plain.yaml").write_text("results: out\ntransfer: {seeds: [0, 3], augment: none}\n")
    plain = dry_run("out/transfer/kl/resnet_a__vit/seed3/student.pth", "-p",
                    "--configfile", str(tmp_path / "plain.yaml"))
    assert plain.returncode == 0 and "out/transfer/cache/resnet_a__vit.h5" in plain.stdout  # same views: one cache
    (tmp_path / "one.yaml").write_text("results: out\ntransfer: {seeds: [0]}\n")
    one = dry_run("out/transfer/kl/resnet_a__vit/transfer_metrics.parquet", "--configfile", str(tmp_path / "one.yaml"))
    assert one.returncode == 0 and "seed0" not in one.stdout  # one seed keeps the paths without it


def test_the_science_config_merges_over_the_default_and_plans_offline() -> None:
    """configs/science.yaml: every ordered pair, three seeds, the paper's strategies and the control."""
    science = yaml.safe_load((REPO / "configs" / "science.yaml").read_text())
    merged = config_with(lambda c: [c[k].update(v) if isinstance(v, dict) else c.update({k: v})
                                    for k, v in science.items()])
    assert merged["transfer"]["seeds"] == [0, 1, 2] and merged["select"]["policy"] == "all"
    assert set(merged["transfer"]["strategies"]) >= {"kl", "kl_dp", "kl_dp_unsup", "ce"}
    assert merged["transfer"]["epochs"] == DEFAULT["transfer"]["epochs"]  # the default's regime
    assert len(check(merged)) == 6  # the default's zoo
    done = dry_run("--configfile", "configs/science.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "results/science/zoo/resnet_a.pth" in done.stdout


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
    (lambda c: c["transfer"].update(trackers=["tensorboard", "wandbb"]),
     r"config key transfer\.trackers\[1\]: unknown tracker 'wandbb'\. Did you mean: wandb\? "
     r"Known: mlflow, tensorboard, wandb\."),
    (lambda c: c["transfer"].update(trackers=[{"name": "mlflow", "url": "x"}]),
     r"config key transfer\.trackers\[0\]\.url: tracker 'mlflow' has no option 'url'\. Did you mean: uri\?"),
])
def test_misspellings_are_named_with_their_key(change, message: str) -> None:
    with pytest.raises(KtError, match=message):
        check(config_with(change))


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c["transfer"].update(options={"kl": {"temprature": 2}}), "transfer.options.kl.temprature"),
    (lambda c: c.update(models=["timm:resnet50.no_such_tag"]), "no_such_tag"),
    (lambda c: c.update(dataset={"name": "imagefolder", "rooot": "/data"}), "dataset.rooot"),
    (lambda c: c["transfer"].update(trackers=["tensorbord"]), "transfer.trackers[0]: unknown tracker 'tensorbord'"),
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


# ----------------------------------------------------------------- schema and name checks


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c.update(transfr={}), ["transfr", "Did you mean: transfer"]),
    (lambda c: c["transfer"].update(epochs="two"), ["transfer.epochs", "not of type 'integer'"]),
    (lambda c: c["zoo"]["models"][0].update(id="timm:resnet1B"), ["resnet_a", "resnet18"]),
    (lambda c: c["transfer"].update(strategies=["kl_db"]), ["transfer.strategies[0]", "kl_dp"]),
    (lambda c: c["select"].update(policy="best"), ["select.policy", "'best' is not one of"]),
    (lambda c: c["dataset"].update(name="fashion_mnst"), ["unknown dataset 'fashion_mnst'", "fashion_mnist"]),
])
def test_config_mistakes_fail_the_dry_run_naming_the_key(tmp_path: Path, change, expected: list[str]) -> None:
    config = copy.deepcopy(DEFAULT)
    change(config)
    done = dry_run(config=config, tmp_path=tmp_path)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    for text in expected:
        assert text in output, output[-2000:]
    assert "Traceback" not in output
    assert not (tmp_path / "results").exists()


def test_too_few_models_is_explained() -> None:
    config = copy.deepcopy(DEFAULT)
    config["zoo"]["models"] = config["zoo"]["models"][:1]
    with pytest.raises(KtError, match="fewer than two models"):
        check(config)


@pytest.mark.parametrize(("multi", "message"), [
    ({"groups": [{"student": "resnet_a", "teachers": ["vit", "shufflenett"]}]},
     r"unknown model.*shufflenett.*shufflenet"),
    ({"groups": [{"student": "resnet_a", "teachers": ["vit", "resnet_a"]}]}, "holds the student"),
    ({"groups": [{"student": "resnet_a", "top": 2, "teachers": ["vit", "vit_p4"]}]}, "not both or neither"),
    ({"groups": [{"student": "resnet_a", "top": 9}]}, "only 5 models besides the student"),
    ({"groups": [{"student": "resnet_a", "top": 2}, {"student": "vit", "top": 2}]}, "'top2' is used twice"),
    ({"groups": [{"student": "resnet_a", "top": 2, "name": "vit"}]}, "is a model's name"),
    ({"strategy": "kl", "groups": [{"student": "resnet_a", "top": 2}]}, "mode 'parallel' cannot use it"),
    ({"strategy": "kl_dpp", "groups": [{"student": "resnet_a", "top": 2}]}, "multi_teacher.strategy.*kl_dp"),
])
def test_multi_teacher_group_mistakes_are_named(multi: dict, message: str) -> None:
    config = copy.deepcopy(DEFAULT)
    config["multi_teacher"] = multi
    validate(config, SCHEMA)
    with pytest.raises(KtError, match=message):
        check(config)


def test_multi_teacher_schema_names_the_key() -> None:
    config = copy.deepcopy(DEFAULT)
    config["multi_teacher"]["groups"] = [{"student": "resnet_a", "teacher": ["vit"]}]
    with pytest.raises(KtError, match=r"multi_teacher\.groups\.0.*unknown key\(s\) \['teacher'\].*teachers"):
        validate(config, SCHEMA)


def _mutations(rng: random.Random, config: dict) -> dict:
    """A random malformed variant of the default config: wrong types, unknown keys and names."""
    config = copy.deepcopy(config)
    junk = [None, 0, -3, 2.5, "x", "timm:nope", [], {}, ["kl", 1], {"a": 1}, True]
    for _ in range(rng.randint(1, 4)):
        node, path = config, []
        while isinstance(node, dict | list) and node and rng.random() < 0.7:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            if not isinstance(node[key], dict | list):
                break
            node, path = node[key], [*path, key]
        action = rng.choice(["set", "delete", "add"])
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            if action == "delete":
                del node[key]
            elif action == "add":
                node[f"{key}_typo"] = rng.choice(junk)
            else:
                node[key] = rng.choice(junk)
        elif isinstance(node, list) and node:
            node[rng.randrange(len(node))] = rng.choice(junk)
    return config


def test_random_malformed_configs_never_raise_anything_but_a_clear_error() -> None:
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        config = _mutations(rng, DEFAULT)
        try:
            validate(config, SCHEMA)
            check(config)
            outcomes["ok"] += 1
        except KtError as e:
            assert "config" in str(e), str(e)  # it points at the config (a key, a model entry), not elsewhere
            outcomes["error"] += 1
    assert outcomes["error"] > 150  # most mutations are mistakes, and each one was explained


def test_validation_fills_defaults_in_nested_objects_and_list_items() -> None:
    config = {"zoo": {"models": [{"name": "m", "id": "timm:resnet18"}]}}
    validate(config, SCHEMA)
    assert config["zoo"]["models"][0] == {"name": "m", "id": "timm:resnet18", "args": {}, "epochs": 1,
                                          "lr": 0.002, "augment": "none", "seed": 0}
    assert config["dataset"] == {"name": "fashion_mnist", "seed": 0, "subset": {}}
    assert config["transfer"]["strategies"] == ["kl", "kl_dp"] and config["transfer"]["cache_views"] == 0


def test_a_student_as_its_own_only_teacher_or_an_unknown_selected_model_is_caught_early() -> None:
    config = copy.deepcopy(DEFAULT)
    config["select"] = {"policy": "grid", "teachers": ["vit"], "students": ["vit"]}
    with pytest.raises(KtError, match="select.*never its own teacher"):
        check(config)
    config["select"] = {"policy": "grid", "teachers": ["vitt"], "students": ["vit"]}
    with pytest.raises(KtError, match=r"select.teachers: unknown model\(s\) \['vitt'\]. Did you mean: vit"):
        check(config)
