"""The ``kt models`` listing (all three built-in model sources, offline), the folders ``kt plugins`` lists,
the sub-commands' lines in ``kt --help``, and ``kt inspect``'s summary and ``--json`` output on a logits file
written by a real extraction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import kt
from kt.artifacts import artifact_info, summarize_artifact
from kt.cli import COMMANDS, parser, summary
from kt.data import TensorSplit
from kt.extract import extract
from kt.models import ModelSource, ModelSpec
from kt.registry import Registry


def _lines(result) -> list[str]:
    return result.stdout.splitlines()


# ---------------------------------------------------------------------------------------------- kt models


def test_models_timm_pattern_lists_matching_architectures(kt_cli) -> None:
    result = kt_cli("models", "timm", "resnet1*")
    assert result.returncode == 0, result.stderr
    names = _lines(result)
    assert {"resnet18", "resnet101", "resnet152"} <= set(names)
    assert "resnet50" not in names and "resnet34" not in names
    assert all(n.startswith("resnet1") for n in names)
    assert not any("." in n for n in names)  # architectures, not pretrained tags


def test_models_timm_pretrained_gives_arch_dot_tag_ids(kt_cli) -> None:
    result = kt_cli("models", "timm", "resnet18*", "--pretrained")
    assert result.returncode == 0, result.stderr
    names = _lines(result)
    assert {"resnet18.a1_in1k", "resnet18.tv_in1k", "resnet18d.ra2_in1k"} <= set(names)
    assert all(n.startswith("resnet18") and "." in n for n in names)


def test_models_torchvision_pretrained_lists_every_weights_enum(kt_cli) -> None:
    result = kt_cli("models", "torchvision", "resnet50*", "--pretrained")
    assert result.returncode == 0, result.stderr
    assert _lines(result) == ["resnet50/IMAGENET1K_V1", "resnet50/IMAGENET1K_V2"]
    # the pattern may also match the whole arch/TAG
    swag = _lines(kt_cli("models", "torchvision", "vit_b_16/*SWAG*", "--pretrained"))
    assert swag == ["vit_b_16/IMAGENET1K_SWAG_E2E_V1", "vit_b_16/IMAGENET1K_SWAG_LINEAR_V1"]


def test_models_torchvision_without_pretrained_lists_architectures(kt_cli) -> None:
    result = kt_cli("models", "torchvision", "resnet5*")
    assert result.returncode == 0, result.stderr
    assert _lines(result) == ["resnet50"]


def test_models_open_clip_pretrained_gives_arch_slash_tag(kt_cli) -> None:
    result = kt_cli("models", "open_clip", "RN50", "--pretrained")
    assert result.returncode == 0, result.stderr
    names = _lines(result)
    assert "RN50/openai" in names
    assert all(n.startswith("RN50/") for n in names)  # not RN50x4 or RN50-quickgelu: the pattern has no *
    assert "RN50-quickgelu" in _lines(kt_cli("models", "open_clip", "RN50*"))


def test_models_unknown_source_names_the_closest(kt_cli) -> None:
    result = kt_cli("models", "timmm", "resnet*")
    assert result.returncode == 2
    assert result.stderr.startswith("kt: error: unknown model source 'timmm'")
    assert "Did you mean: timm?" in result.stderr
    assert result.stdout == ""


def test_models_pattern_matching_nothing_fails_with_a_message(kt_cli) -> None:
    result = kt_cli("models", "timm", "no_such_net*")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == ("kt: error: no timm model matches 'no_such_net*' "
                                     "(a case-sensitive glob, e.g. 'resnet*').")
    # patterns are case-sensitive
    assert kt_cli("models", "timm", "RESNET18").returncode == 2


def test_base_class_default_is_a_sorted_case_sensitive_glob() -> None:
    class Fixed(ModelSource):
        def known_models(self) -> list[str]:
            return ["netB", "net_a", "Net_c", "other"]

        def create(self, spec, classes):  # pragma: no cover - never built
            raise NotImplementedError

    src = Fixed()
    assert src.list_models() == ["Net_c", "netB", "net_a", "other"]
    assert src.list_models("net*") == ["netB", "net_a"]
    assert src.list_models("net*", pretrained=True) == ["netB", "net_a"]
    assert src.list_models("zzz") == []


# ---------------------------------------------------------------------------------------------- kt plugins

STRATEGY_PLUGIN = """
import kt
from kt.strategies import KL


@kt.hookimpl
def register_strategies(register):
    register({name!r}, KL)
"""


def _plugin_folder(root: Path, folder: str, name: str) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / f"{name}_plugin.py").write_text(STRATEGY_PLUGIN.format(name=name))
    return path


def _strategies(result) -> dict[str, list[str]]:
    """plugin name -> the strategies it registered, from `kt plugins`' JSON (built-ins left out)."""
    return {r["name"]: r["registered"]["strategies"] for r in json.loads(result.stdout)
            if r["origin"] != "builtin" and "strategies" in r.get("registered", {})}


def test_kt_plugins_lists_the_workflows_folders_the_configs_and_every_plugin_dir(tmp_path: Path, kt_cli) -> None:
    """As the workflow run from here loads them: ./plugins, config.yaml's plugin_dirs, then --plugin-dir (which
    no longer hides ./plugins); --config FILE is read over ./config.yaml, as `snakemake --configfile FILE`."""
    _plugin_folder(tmp_path, "plugins", "from_workflow")
    _plugin_folder(tmp_path, "mine", "from_config")
    _plugin_folder(tmp_path, "theirs", "from_other_config")
    extra = _plugin_folder(tmp_path, "extra", "from_cli")
    (tmp_path / "config.yaml").write_text("results: out\nplugin_dirs: [mine]\n")
    (tmp_path / "other.yaml").write_text("plugin_dirs: [theirs]\n")
    (tmp_path / "no_dirs.yaml").write_text("results: elsewhere\n")

    result = kt_cli("--plugin-dir", str(extra), "plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _strategies(result) == {"kt_local_from_workflow_plugin": ["from_workflow"],
                                   "kt_local_from_config_plugin": ["from_config"],
                                   "kt_local_from_cli_plugin": ["from_cli"]}
    assert _strategies(kt_cli("plugins", "--config", "other.yaml", cwd=tmp_path)) == {
        "kt_local_from_workflow_plugin": ["from_workflow"], "kt_local_from_other_config_plugin": ["from_other_config"]}
    assert list(_strategies(kt_cli("plugins", "--config", "no_dirs.yaml", cwd=tmp_path))) == [
        "kt_local_from_workflow_plugin", "kt_local_from_config_plugin"]  # config.yaml's plugin_dirs still hold
    # the same folder twice (./plugins given as --plugin-dir too) loads once
    assert list(_strategies(kt_cli("--plugin-dir", "plugins", "plugins", cwd=tmp_path))) == [
        "kt_local_from_workflow_plugin", "kt_local_from_config_plugin"]


def test_kt_plugins_without_a_config_and_with_bad_ones(tmp_path: Path, kt_cli) -> None:
    result = kt_cli("plugins", cwd=tmp_path)  # no ./plugins, no ./config.yaml: the built-ins
    assert result.returncode == 0, result.stderr
    assert _strategies(result) == {} and any(r["name"] == "kt.plugins.strategies" for r in json.loads(result.stdout))

    result = kt_cli("plugins", "--config", "missing.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.strip() == "kt: error: config file 'missing.yaml' does not exist."
    (tmp_path / "bad.yaml").write_text("plugin_dirs: mine\n")
    result = kt_cli("plugins", "--config", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "kt: error: config key plugin_dirs must be a list of folders, got 'mine'."
    (tmp_path / "gone.yaml").write_text("plugin_dirs: [gone]\n")
    result = kt_cli("plugins", "--config", "gone.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "plugin folder" in result.stderr and "gone" in result.stderr


# ---------------------------------------------------------------------------------------------- kt --help


def test_help_shows_each_commands_whole_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sub-command's line in `kt --help` is the whole first paragraph of its docstring (it used to stop at
    the docstring's first line break: "... with its options, and which")."""
    monkeypatch.setenv("COLUMNS", "400")  # one line per command: argparse wraps at the terminal's width
    text = parser().format_help()
    for name, (fn, _) in COMMANDS.items():
        line = summary(fn)
        assert line.endswith("."), (name, line)
        assert line.count("(") == line.count(")") and len(line) <= 140, (name, line)
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(line)}$", text, re.M), (name, line)
    assert summary(COMMANDS["plugins"][0]) == ("List the workflow's plugins, where each came from and what it "
                                               "registered (JSON).")


# ---------------------------------------------------------------------------------------------- kt inspect

CLASSES = [f"c{i}" for i in range(10)]


class TenClassPlugin:
    """An in-memory 10-class dataset (deterministic random 28 px grey images), so that a real extraction
    runs without the Fashion-MNIST package."""

    @kt.hookimpl
    def register_datasets(self, register):
        class Ten:
            classes = CLASSES

            def split(self, name: str) -> TensorSplit:
                n = 30
                g = torch.Generator().manual_seed(3)
                images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
                labels = np.arange(n, dtype=np.int64) % 10
                return TensorSplit(name, np.arange(n), labels, list(CLASSES), images=images)

        register("ten", lambda: Ten())


@pytest.fixture(scope="module")
def logits_file(tmp_path_factory: pytest.TempPathFactory, tiny_resnet_spec: ModelSpec) -> tuple[Path, dict]:
    """A logits file from :func:`kt.extract.extract` of the tiny ResNet: (path, returned attrs)."""
    out = tmp_path_factory.mktemp("inspect") / "tiny.h5"
    attrs = extract(tiny_resnet_spec, {"name": "ten"}, "eval", out, batch_size=8, device="cpu",
                    registry=Registry(extra_plugins=(TenClassPlugin(),)))
    return out, attrs


def test_inspect_prints_a_summary_by_default(kt_cli, logits_file) -> None:
    path, attrs = logits_file
    result = kt_cli("inspect", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "{" not in out
    lines = out.splitlines()
    by_label = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    assert by_label["file"].split()[1] == str(path)
    assert by_label["kind"].split()[1] == "logits"
    assert by_label["model"].split(None, 1)[1] == "timm:resnet18 (tiny_resnet18)"
    # accuracy attr and the recomputed top-1 agree (30 samples: a multiple of 1/30)
    expected = f"{attrs['accuracy']:.2f} % (recomputed {attrs['accuracy']:.2f} %)"
    assert by_label["accuracy"].split(None, 1)[1] == expected
    assert by_label["dataset"].split(None, 1)[1] == f"ten, eval split, fingerprint {attrs['dataset_fingerprint']}"
    assert by_label["classes"].split()[1] == "10"
    assert by_label["weights"].split()[1] == attrs["weights_origin"]
    assert by_label["weights"].split()[1].startswith("file:")
    assert by_label["created"].split()[1] == attrs["created"]
    datasets = [line.split() for line in lines[lines.index(by_label["datasets"]):]]
    assert [d[-3:] if i == 0 else d for i, d in enumerate(datasets)] == [
        ["index", "(30,)", "int64"], ["labels", "(30,)", "int64"], ["logits", "(30,", "10)", "float32"]]
    # labels padded to the longest ("datasets"): every value starts in column 10
    assert all(line[8:10] == "  " and line[10] != " " for line in lines), out


def test_inspect_json_keeps_the_full_description(kt_cli, logits_file) -> None:
    path, attrs = logits_file
    result = kt_cli("inspect", "--json", str(path))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info) == {"file", "datasets", "attrs", "top1_recomputed"}
    assert info == json.loads(json.dumps(artifact_info(path), default=str))
    assert info["datasets"]["logits"]["shape"] == [30, 10]
    assert info["attrs"]["model_id"] == "timm:resnet18"
    assert info["top1_recomputed"] == pytest.approx(attrs["accuracy"], abs=1e-4)


def test_inspect_separates_several_files_by_a_blank_line(kt_cli, logits_file) -> None:
    path, _ = logits_file
    result = kt_cli("inspect", str(path), str(path))
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n\n")
    assert first.strip() == second.strip() == summarize_artifact(artifact_info(path))


def test_summary_skips_absent_attrs_and_reads_a_frozen_cache_kind() -> None:
    info = {"file": "cache.h5", "datasets": {"teacher_logits": {"shape": [4, 3], "dtype": "float32", "chunks": None}},
            "attrs": {"kind": "frozen_cache", "dataset": "plain"}}
    assert summarize_artifact(info) == ("file      cache.h5\n"
                                        "kind      frozen_cache\n"
                                        "dataset   plain\n"
                                        "datasets  teacher_logits  (4, 3) float32")
