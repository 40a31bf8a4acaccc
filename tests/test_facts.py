"""What a dry run knows without loading the plugins: the cached facts and their key, the dataset's
file fingerprint, the versions of plugin code a result records, and the files checked on every parse."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import kt
from kt import facts as kt_facts
from kt.config import check_files, validate
from kt.errors import KtError
from kt.facts import cache_key, code_record, dataset_fingerprint, facts
from kt.registry import Registry

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
STRATEGY = textwrap.dedent('''
    import kt
    from kt.strategies import KL

    SCALE = 1.0

    @kt.hookimpl
    def register_strategies(register):
        register("kl_mine", KL)
''')


def config() -> dict:
    out = copy.deepcopy(DEFAULT)
    validate(out, SCHEMA)
    return out


def test_a_folder_fingerprint_sees_added_removed_and_renamed_files_not_rewrites(tmp_path: Path) -> None:
    cls = tmp_path / "root" / "train" / "n01440764"
    cls.mkdir(parents=True)
    (cls / "a.jpg").write_bytes(b"1")
    dataset = {"name": "imagefolder", "root": str(tmp_path / "root")}
    seen = [dataset_fingerprint(dataset)["root"]]
    for change in (lambda: (cls / "b.jpg").write_bytes(b"2"), lambda: (cls / "b.jpg").rename(cls / "c.jpg"),
                   lambda: (cls / "c.jpg").unlink()):
        os.utime(cls, ns=(0, 0))  # a folder's mtime has a clock tick's resolution: start each change from 0
        seen.append(dataset_fingerprint(dataset)["root"])
        change()
        seen.append(dataset_fingerprint(dataset)["root"])
        assert seen[-1] != seen[-2]
    before = dataset_fingerprint(dataset)
    (cls / "a.jpg").write_bytes(b"another image, same name")  # rewritten in place: documented as not seen
    assert dataset_fingerprint(dataset) == before
    assert dataset_fingerprint({"root": str(tmp_path / "nowhere"), "name": "imagefolder"}) == {
        "root": "absent", "name": "absent"}


def test_a_file_fingerprint_is_its_size_and_mtime(tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("n01440764\n")
    os.utime(classes, ns=(5, 7))
    assert dataset_fingerprint({"classes_file": str(classes)}) == {"classes_file": f"{classes.resolve()}: file 10 7"}


def test_plugin_code_is_versioned_by_content(tmp_path: Path) -> None:
    plugin = tmp_path / "mine.py"
    plugin.write_text(STRATEGY)
    first = Registry(plugin_dirs=(str(tmp_path),), entry_points=False)
    assert first.code("strategies", "kl") == f"kt {kt.__version__}"  # built-ins: kt's version
    assert first.code("strategies", "kl_mine").startswith("mine.py sha256:")
    plugin.write_text(STRATEGY.replace("SCALE = 1.0", "SCALE = 2.0"))
    second = Registry(plugin_dirs=(str(tmp_path),), entry_points=False)
    assert second.code("strategies", "kl_mine") != first.code("strategies", "kl_mine")
    assert code_record(second.code_table(), ["timm", "timm"], "fashion_mnist", ["kl_mine"]) == {
        "dataset fashion_mnist": f"kt {kt.__version__}", "model source timm": f"kt {kt.__version__}",
        "strategy kl_mine": second.code("strategies", "kl_mine")}


def test_facts_are_computed_once_per_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "mine.py").write_text(STRATEGY)
    calls = []
    real = kt_facts.compute
    monkeypatch.setattr(kt_facts, "compute", lambda *a: calls.append(a) or real(*a))
    cfg = config()
    first = facts(cfg, [str(plugins)], tmp_path / "cache")
    assert facts(cfg, [str(plugins)], tmp_path / "cache") == first and len(calls) == 1
    assert first.teacher_free == ["ce"] and first.split_sizes == {"train": 6000, "eval": 10000}
    assert first.classes == 10 and not first.decodes and first.codes["strategies"]["kl_mine"].startswith("mine.py")
    key = cache_key(cfg, [str(plugins)])
    (plugins / "mine.py").write_text(STRATEGY + "\n# edited\n")
    assert cache_key(cfg, [str(plugins)]) != key
    facts(cfg, [str(plugins)], tmp_path / "cache")
    assert len(calls) == 2


def test_a_cached_parse_imports_no_model_library(tmp_path: Path) -> None:
    """What the workflow's parse does (common.smk), in a fresh process after the cache is warm."""
    code = textwrap.dedent(f'''
        import copy, json, sys, yaml
        from kt.config import check_files, validate
        from kt.facts import facts
        cfg = yaml.safe_load(open({str(REPO / "config.yaml")!r}))
        validate(cfg, {str(SCHEMA)!r}); check_files(cfg)
        found = facts(cfg, [], {str(tmp_path)!r})
        print(json.dumps([found.teacher_free, sorted(m for m in ("torch", "torchvision", "timm", "scipy")
                                                     if m in sys.modules)]))
    ''')
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout for _ in range(2)]
    assert {"timm", "torch", "torchvision"} <= set(json.loads(outputs[0])[1])  # cold: the plugins loaded
    assert json.loads(outputs[1]) == [["ce"], []]  # warm: none of them


def test_a_missing_file_is_named_with_its_key(tmp_path: Path) -> None:
    cfg = config()
    cfg["models"] = ["timm:resnet18", {"id": "timm:resnet18", "name": "mine", "weights": str(tmp_path / "x.pth")}]
    with pytest.raises(KtError, match=r"models\[1\]\.weights: model 'mine': weight file .*x\.pth' does not exist"):
        check_files(cfg)
    (tmp_path / "x.pth").write_bytes(b"")
    check_files(cfg)
    cfg["dataset"] = {"name": "imagefolder", "root": str(tmp_path / "photos")}
    with pytest.raises(KtError, match=r"dataset\.root: .*photos' is not a folder"):
        check_files(cfg)
    cfg["dataset"] = {"name": "imagefolder", "root": str(tmp_path), "classes_file": str(tmp_path / "c.txt")}
    with pytest.raises(KtError, match=r"dataset\.classes_file: .*c\.txt' is not a file"):
        check_files(cfg)


def test_a_plugins_own_option_check_ends_the_parse_in_one_line(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "picky.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        import kt
        from kt.strategies import KL

        @dataclass
        class Picky(KL):
            k: int = 1

            def __post_init__(self):
                if self.k < 1:
                    raise ValueError(f"k must be at least 1, got {self.k}")

        @kt.hookimpl
        def register_strategies(register):
            register("picky", Picky)
    '''))
    cfg = config()
    cfg["transfer"]["strategies"] = ["picky"]
    cfg["transfer"]["options"] = {"picky": {"k": 0}}
    with pytest.raises(KtError) as caught:
        facts(cfg, [str(plugins)], tmp_path / "cache")
    assert str(caught.value) == (
        f"config key transfer.options.picky: strategy 'picky' (plugin 'kt_local_picky', {plugins / 'picky.py'}) "
        "rejected the options {'k': 0}: ValueError: k must be at least 1, got 0")
    assert not (tmp_path / "cache").exists()  # an error is never cached
