"""The plugin registry: code plugins, plugin folders, the ``kt plugins`` command, and the errors for
misspelled hooks, duplicate names and unknown names."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kt
from kt.data import load_split
from kt.errors import KtError
from kt.models import Classifier, ModelSource, ModelSpec, create_model
from kt.preprocess import Preprocessing
from kt.registry import BUILTIN_PLUGINS, Registry, get_registry


class FakeSource(ModelSource):
    """Builds a linear classifier on 4x4 images; ``fake:anything`` and ``fake:other`` are known."""

    def known_models(self) -> list[str]:
        return ["anything", "other"]

    def create(self, spec: ModelSpec, classes: list[str] | None) -> Classifier:
        n = spec.num_classes or (len(classes) if classes else 3)
        torch.manual_seed(0)
        head = nn.Linear(48, n)
        body = nn.Sequential(nn.Flatten(), head)
        return Classifier(body, head, Preprocessing(size=4), n, spec, "fake origin", classes)


FAKE_STRATEGY = object()


class FakePlugin:
    @kt.hookimpl
    def register_model_sources(self, register):
        register("fake", FakeSource())

    @kt.hookimpl
    def register_strategies(self, register):
        register("fake_strategy", FAKE_STRATEGY)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(extra_plugins=(FakePlugin(),))


def _record(reg: Registry, name: str) -> dict:
    records = {r["name"]: r for r in reg.plugin_records()}
    assert name in records, sorted(records)
    return records[name]


def test_builtin_plugins_register_the_builtin_names() -> None:
    reg = Registry()
    assert reg.names("model_sources") == ["open_clip", "timm", "torchvision"]
    assert {"fashion_mnist", "imagefolder"} <= set(reg.names("datasets"))
    records = {r["name"]: r for r in reg.plugin_records()}
    for name in BUILTIN_PLUGINS:
        assert records[name]["origin"] == "builtin"
    assert records["kt.plugins.timm_source"]["registered"] == {"model_sources": ["timm"]}
    assert records["kt.plugins.timm_source"]["hooks"] == ["register_model_sources"]
    assert records["kt.plugins.datasets"]["registered"] == {"datasets": ["fashion_mnist", "imagefolder"]}
    assert records["kt.plugins.trackers"]["registered"] == {"trackers": ["mlflow", "tensorboard", "wandb"]}


def test_code_plugin_appears_in_the_records_and_builds_models(registry: Registry) -> None:
    record = _record(registry, "FakePlugin-0")
    assert record["origin"] == "registered in code"
    assert record["hooks"] == ["register_model_sources", "register_strategies"]
    assert record["registered"] == {"model_sources": ["fake"], "strategies": ["fake_strategy"]}
    assert registry.get("strategies", "fake_strategy") is FAKE_STRATEGY
    assert "fake" in registry.names("model_sources")

    model = create_model("fake:anything", classes=["a", "b"], registry=registry)
    assert isinstance(model, Classifier)
    assert (model.num_classes, model.origin, model.spec.id) == (2, "fake origin", "fake:anything")
    assert not model.training
    x = torch.rand(5, 3, 4, 4)
    logits, features = model.logits_and_features(x)
    assert logits.shape == (5, 2) and features.shape == (5, 48)
    assert torch.allclose(logits, model.body[1](x.flatten(1)))

    # the process-wide registry does not see code plugins
    with pytest.raises(KtError, match="unknown model source 'fake'"):
        create_model("fake:anything")


def test_code_plugin_model_source_validates_its_names(registry: Registry) -> None:
    with pytest.raises(KtError, match=r"fake has no model 'anythin'\. Did you mean: anything\?"):
        create_model("fake:anythin", registry=registry)
    with pytest.raises(KtError, match="predicts 7 classes but the dataset has 2"):
        create_model({"id": "fake:other", "num_classes": 7}, classes=["a", "b"], registry=registry)


def test_plugin_objects_with_a_module_name_are_named_after_it(tiny_dataset_plugin) -> None:
    import types

    module = types.ModuleType("my_kt_plugin")
    module.register_datasets = tiny_dataset_plugin.register_datasets
    reg = Registry(extra_plugins=(module,))
    assert _record(reg, "my_kt_plugin")["registered"] == {"datasets": ["tiny"]}
    split = load_split({"name": "tiny", "subset": {"eval": 6}}, "eval", registry=reg)
    assert len(split) == 6
    assert np.bincount(split.labels).tolist() == [2, 2, 2]  # stratified


PLUGIN_FILE = '''
import numpy as np
import torch

import kt
from kt.data import TensorSplit


class Ones:
    classes = ["a", "b"]

    def __init__(self, n=4):
        self.n = n

    def split(self, name):
        images = torch.full((self.n, 1, 2, 2), 255, dtype=torch.uint8)
        return TensorSplit(name, np.arange(self.n), np.arange(self.n) % 2, self.classes, images=images)


@kt.hookimpl
def register_datasets(register):
    register("ones", Ones)


@kt.hookimpl
def register_strategies(register):
    register("folder_strategy", {"kind": "from a folder"})
'''


def _write_plugin(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def test_plugin_folder_loads(tmp_path: Path) -> None:
    path = _write_plugin(tmp_path, "ones_plugin", PLUGIN_FILE)
    (tmp_path / "notes.txt").write_text("not a plugin")
    reg = Registry(plugin_dirs=(str(tmp_path),))
    record = _record(reg, "kt_local_ones_plugin")
    assert record["origin"] == str(path)
    assert record["registered"] == {"datasets": ["ones"], "strategies": ["folder_strategy"]}
    assert reg.get("strategies", "folder_strategy") == {"kind": "from a folder"}

    split = load_split({"name": "ones", "n": 6}, "train", registry=reg)
    assert len(split) == 6 and split.classes == ["a", "b"]
    images, labels, pos = next(split.batches(Preprocessing(size=2), batch_size=4))
    assert images.shape == (4, 3, 2, 2) and bool((images == 255).all())
    assert labels.tolist() == [0, 1, 0, 1] and pos.tolist() == [0, 1, 2, 3]
    with pytest.raises(KtError, match=r"config key dataset\.colour: dataset .ones. does not take this option\. "
                                      r"Its options: n"):
        load_split({"name": "ones", "colour": "red"}, "train", registry=reg)


def test_get_registry_caches_per_plugin_folder(tmp_path: Path) -> None:
    _write_plugin(tmp_path, "ones_plugin", PLUGIN_FILE)
    first = get_registry([str(tmp_path)])
    assert get_registry((str(tmp_path / "."),)) is first
    assert "ones" in first.names("datasets")
    assert "ones" not in get_registry().names("datasets")


def test_missing_plugin_folder_is_a_kt_error(tmp_path: Path) -> None:
    with pytest.raises(KtError, match="plugin folder .*nope.* does not exist"):
        Registry(plugin_dirs=(str(tmp_path / "nope"),))


def test_kt_plugins_command_lists_a_plugin_folder(tmp_path: Path, kt_cli) -> None:
    folder = tmp_path / "plugins"
    path = _write_plugin(folder, "ones_plugin", PLUGIN_FILE)
    result = kt_cli("--plugin-dir", str(folder), "plugins")
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["kt_local_ones_plugin"]["origin"] == str(path.resolve())
    assert records["kt_local_ones_plugin"]["registered"] == {"datasets": ["ones"],
                                                            "strategies": ["folder_strategy"]}
    assert records["kt_local_ones_plugin"]["options"] == {"datasets": {"ones": {"n": 4}},
                                                         "strategies": {"folder_strategy": {}}}
    assert records["kt.plugins.open_clip_source"] == {
        "name": "kt.plugins.open_clip_source", "origin": "builtin", "code": f"kt {kt.__version__}",
        "status": "loaded", "hooks": ["register_model_sources"], "registered": {"model_sources": ["open_clip"]}}
    # every built-in strategy and dataset shows its options with their defaults
    strategies = records["kt.plugins.strategies"]["options"]["strategies"]
    assert strategies["kl"] == {"temperature": 1.0, "lr": None}
    assert strategies["xekl"] == {"temperature": 1.0, "lr": None, "alpha": 0.5}
    assert strategies["kl_dp_unsup"]["supervised"] is False
    datasets = records["kt.plugins.datasets"]["options"]["datasets"]
    assert datasets["imagefolder"] == {"root": "(required)", "train": "train", "eval": "val", "classes_file": None}
    assert datasets["fashion_mnist"] == {"root": None, "download": True}


def test_misspelled_hook_is_a_named_failure_and_the_others_keep_working(tmp_path: Path, kt_cli) -> None:
    path = _write_plugin(tmp_path, "typo_plugin", """
        import kt

        @kt.hookimpl
        def register_strategy(register):
            register("x", object())
        """)
    _write_plugin(tmp_path, "ones_plugin", PLUGIN_FILE)
    reg = Registry(plugin_dirs=(str(tmp_path),))
    [failure] = reg.failures
    assert (failure.name, failure.origin) == ("kt_local_typo_plugin", str(path))
    assert failure.error == ("implements an unknown hook register_strategy. "
                             "Known hooks: register_model_sources, register_datasets, register_strategies, "
                             "register_trackers.")
    assert "ones" in reg.names("datasets")  # the folder's other plugin still works
    # a name the broken plugin might have registered: the error points at the failure
    with pytest.raises(KtError, match=r"unknown strategy 'x'\..* Note: plugin 'kt_local_typo_plugin' "
                                      r"\(.*typo_plugin\.py\) failed to load: implements an unknown hook"):
        reg.get("strategies", "x")

    result = kt_cli("--plugin-dir", str(tmp_path), "plugins")
    assert result.returncode == 1  # listed, but a failure is a failure
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["kt_local_typo_plugin"] == {"name": "kt_local_typo_plugin", "origin": str(path.resolve()),
                                               "status": "failed", "error": failure.error}
    assert records["kt_local_ones_plugin"]["status"] == "loaded"
    assert "kt_local_typo_plugin" in result.stderr and "Traceback" not in result.stderr


def test_misspelled_hook_in_a_code_plugin() -> None:
    class Typo:
        @kt.hookimpl
        def register_dataset(self, register):
            pass

    reg = Registry(extra_plugins=(Typo(),))
    assert [(f.name, f.origin) for f in reg.failures] == [("Typo-0", "registered in code")]
    assert "register_dataset" in reg.failures[0].error


def test_a_plugin_that_fails_to_import_is_named_and_the_others_load(tmp_path: Path, kt_cli) -> None:
    broken = _write_plugin(tmp_path, "broken", "import no_such_package_for_kt\n")
    _write_plugin(tmp_path, "ones_plugin", PLUGIN_FILE)
    reg = Registry(plugin_dirs=(str(tmp_path),))
    assert [(f.name, f.origin, f.error) for f in reg.failures] == [
        ("kt_local_broken", str(broken), "ModuleNotFoundError: No module named 'no_such_package_for_kt'")]
    assert "ones" in reg.names("datasets")
    # every other command keeps working, with one warning line naming the plugin
    result = kt_cli("--plugin-dir", str(tmp_path), "models", "timm", "resnet18")
    assert result.returncode == 0 and result.stdout.split() == ["resnet18"]
    assert "plugin 'kt_local_broken'" in result.stderr and "no_such_package_for_kt" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_hook_with_a_wrong_signature_or_that_raises_is_a_named_failure(tmp_path: Path) -> None:
    _write_plugin(tmp_path, "bad_signature", """
        import kt

        @kt.hookimpl
        def register_strategies(reg):
            reg("never", dict)
        """)
    _write_plugin(tmp_path, "raises", """
        import kt

        @kt.hookimpl
        def register_datasets(register):
            register("half_done", dict)

        @kt.hookimpl
        def register_strategies(register):
            raise RuntimeError("no GPU driver")
        """)
    _write_plugin(tmp_path, "ones_plugin", PLUGIN_FILE)
    reg = Registry(plugin_dirs=(str(tmp_path),))
    failures = {f.name: f.error for f in reg.failures}
    assert set(failures) == {"kt_local_bad_signature", "kt_local_raises"}
    assert "reg" in failures["kt_local_bad_signature"]
    assert failures["kt_local_raises"] == "register_strategies raised RuntimeError: no GPU driver"
    assert "half_done" not in reg.names("datasets") and "ones" in reg.names("datasets")
    records = reg.plugin_records()
    assert [r["name"] for r in records][:len(BUILTIN_PLUGINS)] == list(BUILTIN_PLUGINS)  # load order, failures last
    assert [r["status"] for r in records][-2:] == ["failed", "failed"]


def test_two_folders_with_a_file_of_the_same_name_both_load(tmp_path: Path) -> None:
    first = _write_plugin(tmp_path / "a", "extra", PLUGIN_FILE)
    second = _write_plugin(tmp_path / "b", "extra", """
        import kt

        @kt.hookimpl
        def register_strategies(register):
            register("from_b", dict)
        """)
    reg = Registry(plugin_dirs=(str(tmp_path / "a"), str(tmp_path / "b")))
    assert not reg.failures
    assert _record(reg, "kt_local_extra")["origin"] == str(first)
    assert _record(reg, "kt_local_b_extra")["origin"] == str(second)
    assert {"ones", "from_b"} <= set(reg.names("datasets")) | set(reg.names("strategies"))


def test_entry_points_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed third-party plugin (here a fake entry point that would clash with a built-in)
    is skipped with KT_NO_ENTRY_POINTS=1 or entry_points=False, and loaded otherwise."""
    import importlib.metadata
    import types

    clash = types.ModuleType("clash")

    @kt.hookimpl
    def register_datasets(register):
        register("fashion_mnist", dict)

    clash.register_datasets = register_datasets
    sys_modules = {"kt_test_clash": clash}
    monkeypatch.setattr("sys.modules", {**__import__("sys").modules, **sys_modules})
    ep = importlib.metadata.EntryPoint("clash", "kt_test_clash", "kt")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == "kt" else [])

    monkeypatch.setenv("KT_NO_ENTRY_POINTS", "1")
    assert Registry().names("datasets") == ["fashion_mnist", "imagefolder"]
    monkeypatch.delenv("KT_NO_ENTRY_POINTS")
    assert Registry(entry_points=False).names("datasets") == ["fashion_mnist", "imagefolder"]
    with pytest.raises(KtError, match="dataset 'fashion_mnist' is registered twice"):
        Registry()


def test_a_name_registered_twice_names_both_plugins(tmp_path: Path, kt_cli) -> None:
    class Dup:
        @kt.hookimpl
        def register_model_sources(self, register):
            register("timm", FakeSource())

    with pytest.raises(KtError) as err:
        Registry(extra_plugins=(Dup(),))
    message = str(err.value)
    assert "model source 'timm' is registered twice" in message
    assert "'kt.plugins.timm_source'" in message and "'Dup-0'" in message

    # the same from a plugin folder, through the CLI: one error line, exit status 2
    folder = tmp_path / "dup"
    _write_plugin(folder, "dup_plugin", """
        import kt

        @kt.hookimpl
        def register_datasets(register):
            register("fashion_mnist", dict)
        """)
    result = kt_cli("--plugin-dir", str(folder), "plugins")
    assert result.returncode == 2
    assert result.stderr.startswith("kt: error: dataset 'fashion_mnist' is registered twice: by plugin ")
    assert "'kt.plugins.datasets'" in result.stderr and "'kt_local_dup_plugin'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unknown_dataset_and_strategy_names_suggest_close_matches(registry: Registry) -> None:
    with pytest.raises(KtError) as err:
        load_split({"name": "fashion-mnist"}, "eval", registry=registry)
    assert "unknown dataset 'fashion-mnist'. Did you mean: fashion_mnist?" in str(err.value)
    assert "Known: fashion_mnist, imagefolder." in str(err.value)

    with pytest.raises(KtError, match=r"unknown strategy 'fake_strategi'\. Did you mean: fake_strategy\?"):
        registry.get("strategies", "fake_strategi")
    with pytest.raises(KtError, match=r"unknown model source 'torchvison'\. Did you mean: torchvision\?"):
        registry.get("model_sources", "torchvison")


def test_bad_split_and_missing_dataset_name(registry: Registry) -> None:
    with pytest.raises(KtError, match="unknown split 'test'; use one of train, eval"):
        load_split({"name": "fashion_mnist"}, "test", registry=registry)
    with pytest.raises(KtError, match=r"dataset\.name is missing"):
        load_split({"subset": {"eval": 10}}, "eval", registry=registry)


def write_idx(path: Path, array: np.ndarray) -> None:
    import gzip

    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes())


def test_fashion_mnist_reads_idx_files_through_a_decoded_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = (np.arange(20) % 10).astype(np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    dataset = {"name": "fashion_mnist", "root": str(tmp_path), "download": False}

    first = load_split(dataset, "eval")
    copies = sorted((tmp_path / "decoded").glob("*.npy"))
    assert [c.name.split("-")[0] for c in copies] == ["t10k"] * 2
    np.testing.assert_array_equal(first.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(first.labels, labels)

    # the second read comes from the copies (made distinguishable here) ...
    np.save(copies[0], np.zeros_like(images))
    assert load_split(dataset, "eval").images.sum() == 0
    # ... a broken copy is rewritten from the source, and a changed source gets a new copy
    copies[0].write_bytes(b"not numpy")
    np.testing.assert_array_equal(load_split(dataset, "eval").images[:, 0].numpy(), images)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[::-1].copy())
    np.testing.assert_array_equal(load_split(dataset, "eval").images[:, 0].numpy(), images[::-1])


SQUARES_PLUGIN = '''
import numpy as np
import torch

import kt
from kt.data import TensorSplit


class Squares:
    """Class k: a bright k-th third of an 8 px image; 24 train images."""

    classes = ["left", "middle", "right"]
    size = 8

    def split(self, name):
        labels = np.arange(24) % 3
        images = torch.zeros((24, 3, 8, 8), dtype=torch.uint8)
        for i, k in enumerate(labels):
            images[i, :, :, 3 * k: 3 * k + 2] = 255
        return TensorSplit(name, np.arange(24), labels, self.classes, images=images)


@kt.hookimpl
def register_datasets(register):
    register("squares", Squares)
'''


def test_train_zoo_uses_the_plugin_folders(tmp_path: Path, kt_cli) -> None:
    """A zoo model trained on a plugin dataset: train-zoo reads --plugin-dir like every command."""
    folder = tmp_path / "plugins"
    _write_plugin(folder, "squares", SQUARES_PLUGIN)
    spec = {"id": "timm:resnet18", "num_classes": 3, "preprocess": {"size": 8, "crop_pct": 1.0},
            "args": {"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8], "stem_width": 8}, "name": "sq"}
    out = tmp_path / "sq.pth"
    result = kt_cli("--plugin-dir", str(folder), "train-zoo", "--model", json.dumps(spec), "--dataset",
                    '{"name": "squares"}', "--epochs", "1", "--batch-size", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    model = create_model(ModelSpec(**spec, weights=str(out)), ["left", "middle", "right"])
    assert model.num_classes == 3
    # with another plugin folder (no *.py of its own) the dataset is unknown again
    result = kt_cli("--plugin-dir", str(tmp_path), "train-zoo", "--model", json.dumps(spec), "--dataset",
                    '{"name": "squares"}', "--out", str(out))
    assert result.returncode == 2 and "unknown dataset 'squares'" in result.stderr
