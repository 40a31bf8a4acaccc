"""The complete examples of docs/plugins.md, run as written: each ```python block whose first line
is ``# example: KIND`` is executed in a fresh module, registered with ``Registry(extra_plugins=...)`` and
driven through kt's own entry points (create_model, load_split, make_strategy, transfer)."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kt.check import check_strategy_options
from kt.data import DatasetInfo, load_split, open_dataset
from kt.errors import KtError
from kt.models import Classifier, ModelSpec, create_model
from kt.preprocess import Preprocessing, normalize
from kt.registry import Registry
from kt.strategies import Outputs, kl_div
from kt.trackers import check_trackers
from kt.transfer import TransferSettings, make_strategy, transfer  # make_strategy: re-exported from kt.strategies

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"# example: (.+)")
HOOKS = {"model source": "register_model_sources", "any-name model source": "register_model_sources",
         "preparing model source": "register_model_sources", "dataset": "register_datasets",
         "strategy": "register_strategies", "feature strategy": "register_strategies",
         "tracker": "register_trackers"}


def doc_examples() -> dict[str, str]:
    """KIND -> code of every ```python block of the page that defines a ``@kt.hookimpl`` function."""
    examples = {}
    for code in BLOCK.findall(DOC.read_text()):
        if "@kt.hookimpl" not in code:
            continue
        marker = MARKER.fullmatch(code.splitlines()[0].strip())
        assert marker, f"a hook example in {DOC.name} must start with '# example: KIND': {code.splitlines()[0]!r}"
        assert marker.group(1) not in examples, f"two examples marked {marker.group(1)!r}"
        examples[marker.group(1)] = code
    return examples


def load_example(kind: str) -> types.ModuleType:
    """A fresh module holding the example's code, named ``docs_example_KIND``."""
    name = "docs_example_" + kind.replace(" ", "_")
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while decorating
    try:
        exec(compile(doc_examples()[kind], f"{DOC}#{kind}", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


def registry_of(*kinds: str) -> Registry:
    registry = Registry(extra_plugins=tuple(load_example(k) for k in kinds), entry_points=False)
    assert registry.failures == []
    return registry


@pytest.fixture
def sources() -> Registry:
    return registry_of("model source")


@pytest.fixture
def datasets() -> Registry:
    return registry_of("dataset")


@pytest.fixture
def strategies() -> Registry:
    return registry_of("strategy")


def test_the_page_has_one_example_per_hook() -> None:
    examples = doc_examples()
    assert sorted(examples) == sorted(HOOKS)
    for kind, hook in HOOKS.items():
        assert f"def {hook}(register):" in examples[kind]
        assert hasattr(getattr(load_example(kind), hook), "kt_impl")  # marked @kt.hookimpl


def test_all_examples_load_together_and_kt_plugins_shows_them() -> None:
    registry = registry_of(*HOOKS)
    records = {r["name"]: r for r in registry.plugin_records()}
    assert records["docs_example_model_source"]["registered"] == {"model_sources": ["linear"]}
    assert records["docs_example_model_source"]["origin"] == "registered in code"
    assert records["docs_example_any-name_model_source"]["registered"] == {"model_sources": ["npz"]}
    assert records["docs_example_dataset"]["registered"] == {"datasets": ["colours"]}
    assert records["docs_example_strategy"]["registered"] == {"strategies": ["kl_confident", "kl_very_confident"]}
    # the option listings the page quotes are what `kt plugins` prints
    text = DOC.read_text()
    colours = records["docs_example_dataset"]["options"]["datasets"]["colours"]
    assert colours == {"n_train": 60, "n_eval": 30, "size": 16}
    assert f'"colours": {json.dumps(colours)}' in text
    confident = records["docs_example_strategy"]["options"]["strategies"]["kl_confident"]
    assert confident == {"temperature": 1.0, "lr": None, "threshold": 0.6}
    assert f'"kl_confident": {json.dumps(confident)}' in text


# --- model source --------------------------------------------------------------------------------------


def test_model_source_builds_classifiers_with_logits_and_features(sources: Registry) -> None:
    model = create_model("linear:flat", ["a", "b", "c"], sources)
    assert isinstance(model, Classifier) and not model.training
    assert (model.num_classes, model.classes, model.origin) == (3, ["a", "b", "c"], "random init (seed 0)")
    assert model.preprocess == Preprocessing(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.rand(5, 3, 8, 8)
    logits, features = model.logits_and_features(x)
    assert logits.shape == (5, 3) and features.shape == (5, 3 * 8 * 8)
    torch.testing.assert_close(features, x.flatten(1))  # flat: the head's input is the pixels
    head = model.body[1]
    torch.testing.assert_close(logits, x.flatten(1) @ head.weight.T + head.bias)
    torch.testing.assert_close(model(x), logits)

    mlp = create_model({"id": "linear:mlp", "args": {"hidden": 32}, "num_classes": 4}, registry=sources)
    logits, features = mlp.logits_and_features(x)
    assert logits.shape == (5, 4) and features.shape == (5, 32)
    assert bool((features >= 0).all())  # the head's input comes after the ReLU
    assert create_model("linear:mlp", registry=sources).num_classes == 10  # no classes, no num_classes

    small = create_model({"id": "linear:flat", "preprocess": {"size": 4, "crop_pct": 0.5}}, ["a", "b"], sources)
    assert (small.preprocess.size, small.preprocess.crop_pct) == (4, 0.5)
    assert small.logits_and_features(torch.rand(2, 3, 4, 4))[1].shape == (2, 48)


def test_model_source_is_deterministic_and_loads_its_own_weight_files(sources: Registry, tmp_path: Path) -> None:
    rng = torch.get_rng_state()
    first, second = (create_model("linear:mlp", ["a", "b"], sources) for _ in range(2))
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    other = create_model({"id": "linear:mlp", "args": {"seed": 1}}, ["a", "b"], sources)
    path = tmp_path / "mlp.pth"
    torch.save(other.body.state_dict(), path)  # the format kt writes (zoo, transfer's student.pth)
    loaded = create_model({"id": "linear:mlp", "weights": str(path)}, ["a", "b"], sources)
    assert loaded.origin == f"file:{path.resolve()}"
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(loaded(x), other(x)) and not torch.equal(first(x), other(x))

    with pytest.raises(KtError, match=r"mlp\.pth does not fit linear:flat"):
        create_model({"id": "linear:flat", "weights": str(path)}, ["a", "b"], sources)


def test_model_source_mistakes_are_kt_errors(sources: Registry) -> None:
    with pytest.raises(KtError, match=r"linear has no model 'mpl'\. Did you mean: mlp\?"):
        create_model("linear:mpl", registry=sources)
    with pytest.raises(KtError, match=r"unknown args \['hiden'\]; linear takes \['hidden', 'seed'\]"):
        create_model({"id": "linear:mlp", "args": {"hiden": 8}}, registry=sources)
    with pytest.raises(KtError, match="predicts 4 classes but the dataset has 3"):
        create_model({"id": "linear:flat", "num_classes": 4}, ["a", "b", "c"], sources)
    source = sources.get("model_sources", "linear")
    assert source.list_models() == ["flat", "mlp"]
    assert source.list_models("m*", pretrained=True) == ["mlp"]


# --- a model source that accepts any name ---------------------------------------------------------------


def write_npz(path: Path, classes: int = 3, size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight, bias = torch.randn(classes, 3 * size * size, generator=g), torch.randn(classes, generator=g)
    np.savez(path, weight=weight.numpy(), bias=bias.numpy())
    return weight, bias


def test_any_name_source_builds_the_file_its_name_gives(tmp_path: Path) -> None:
    registry = registry_of("any-name model source")
    weight, bias = write_npz(tmp_path / "lin.npz")
    rng = torch.get_rng_state()
    model = create_model({"id": f"npz:{tmp_path / 'lin.npz'}", "name": "lin"}, ["a", "b", "c"], registry)
    assert torch.equal(torch.get_rng_state(), rng)  # skip_init: no random draw
    assert (model.num_classes, model.preprocess.size) == (3, 4)
    assert model.origin == f"file:{(tmp_path / 'lin.npz').resolve()}"
    x = torch.rand(5, 3, 4, 4)
    logits, features = model.logits_and_features(x)
    torch.testing.assert_close(logits, x.flatten(1) @ weight.T + bias)
    torch.testing.assert_close(features, x.flatten(1))

    # a student kt trained from it (transfer's student.pth: body.state_dict()) loads over the file's values
    other_weight, other_bias = write_npz(tmp_path / "other.npz", seed=1)
    other = create_model(f"npz:{tmp_path / 'other.npz'}", registry=registry)
    torch.save(other.body.state_dict(), tmp_path / "student.pth")
    student = create_model({"id": f"npz:{tmp_path / 'lin.npz'}", "weights": str(tmp_path / "student.pth")},
                           registry=registry)
    torch.testing.assert_close(student(x), x.flatten(1) @ other_weight.T + other_bias)
    assert student.origin == f"file:{(tmp_path / 'student.pth').resolve()}"


def test_any_name_source_lists_nothing_and_its_check_does_not_name_the_model(tmp_path: Path) -> None:
    registry = registry_of("any-name model source")
    source = registry.get("model_sources", "npz")
    assert source.known_models() == [] and source.list_models() is None and source.list_models("x*", True) is None
    write_npz(tmp_path / "lin.npz")
    source.check(ModelSpec(id=f"npz:{tmp_path / 'lin.npz'}"))  # accepted
    with pytest.raises(KtError) as err:
        source.check(ModelSpec(id="npz:weights/missing.npz", name="mine"))
    assert str(err.value) == "no .npz file 'weights/missing.npz' (npz:PATH, relative to the working directory)."
    assert "mine" not in str(err.value) and "npz__" not in str(err.value)  # the caller names the model
    with pytest.raises(KtError, match=r"no \.npz file 'lin\.pth'"):
        source.check(ModelSpec(id="npz:lin.pth"))
    # create runs in the jobs, where nothing else names the model
    np.savez(tmp_path / "bad.npz", w=np.zeros((3, 48)))
    with pytest.raises(KtError, match=r"^model 'bad': .*bad\.npz holds \['w'\], not weight and bias\.$"):
        create_model({"id": f"npz:{tmp_path / 'bad.npz'}", "name": "bad"}, registry=registry)
    np.savez(tmp_path / "odd.npz", weight=np.zeros((3, 50)), bias=np.zeros(3))
    with pytest.raises(KtError, match=r"^model 'odd': .* not \(3, 50\) and \(3,\)\.$"):
        create_model({"id": f"npz:{tmp_path / 'odd.npz'}", "name": "odd"}, registry=registry)


def test_the_dry_run_names_the_model_once(tmp_path: Path) -> None:
    """The config check puts `config model 'SLUG': ` before check's message, which does not name it again."""
    from kt.check import check

    registry = registry_of("any-name model source", "model source", "dataset")
    config = {"dataset": {"name": "colours"}, "models": [{"id": "npz:weights/lin.npz", "name": "lin"}, "linear:flat"],
              "zoo": {"models": []}, "transfer": {"strategies": [], "options": {}}}
    with pytest.raises(KtError) as err:
        check(config, registry)
    assert str(err.value) == ("config model 'lin': no .npz file 'weights/lin.npz' (npz:PATH, relative to the "
                              "working directory).")
    assert str(err.value) in DOC.read_text()  # as the page quotes it


def test_kt_models_says_an_any_name_source_accepts_any_name(tmp_path: Path, kt_cli) -> None:
    """The example as a plugin-folder file, through the CLI: no names on stdout, one line on stderr, exit 0."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "npz_source.py").write_text(doc_examples()["any-name model source"])
    result = kt_cli("--plugin-dir", str(folder), "models", "npz")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == ("kt: npz accepts any name (npz:NAME, see its plugin's documentation); "
                                              "it has no list to show.")


# --- dataset -------------------------------------------------------------------------------------------


def test_dataset_loads_through_kt_with_a_stratified_subset(datasets: Registry) -> None:
    assert datasets.options("datasets", "colours") == {"n_train": 60, "n_eval": 30, "size": 16}
    train = load_split({"name": "colours", "subset": {"train": 30}}, "train", datasets)
    assert (len(train), train.classes) == (30, ["red", "green", "blue"])
    assert np.bincount(train.labels).tolist() == [10, 10, 10]

    batches = list(train.batches(Preprocessing(size=8), batch_size=12))
    assert [tuple(images.shape) for images, _, _ in batches] == [(12, 3, 8, 8), (12, 3, 8, 8), (6, 3, 8, 8)]
    assert all(images.dtype == torch.uint8 for images, _, _ in batches)
    assert torch.cat([pos for _, _, pos in batches]).tolist() == list(range(30))
    assert torch.cat([labels for _, labels, _ in batches]).tolist() == train.labels.tolist()

    # at the native size the label's channel is 128..255 and the others 0..127, pixel by pixel
    images, labels, _ = next(train.batches(Preprocessing(size=16), batch_size=30))
    bright = images.int() >= 128
    assert torch.equal(bright, torch.nn.functional.one_hot(labels, 3)[:, :, None, None].bool().expand_as(bright))

    evald = load_split({"name": "colours", "n_eval": 9}, "eval", datasets)
    assert len(evald) == 9 and evald.ids[0] == "eval/0"
    assert evald.fingerprint() == load_split({"name": "colours", "n_eval": 9}, "eval", datasets).fingerprint()
    assert evald.fingerprint() != load_split({"name": "colours", "n_eval": 9}, "train", datasets).fingerprint()


def test_dataset_declares_its_statistics(datasets: Registry) -> None:
    dataset = open_dataset({"name": "colours"}, datasets)
    info = DatasetInfo.of(dataset)
    assert (info.size, info.hflip) == (16, True)
    assert info.preprocess() == {"size": 16, "crop_pct": 1.0, "mean": [0.4163] * 3, "std": [0.2775] * 3}
    # the declared statistics are the train split's (exactly: 0.41634 and 0.27747 in expectation)
    pixels = load_split({"name": "colours", "n_train": 300}, "train", datasets).images.double() / 255
    mean, std = pixels.mean((0, 2, 3)), pixels.std((0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor(dataset.mean, dtype=torch.double), atol=0.005, rtol=0)
    torch.testing.assert_close(std, torch.tensor(dataset.std, dtype=torch.double), atol=0.005, rtol=0)
    assert dataset.mean[0] == pytest.approx((128 + 3 * 63.5) / 3 / 255, abs=1e-4)


def test_dataset_option_mistakes_name_the_config_key(datasets: Registry) -> None:
    with pytest.raises(KtError, match=r"config key dataset\.n_trian: .*Did you mean: n_train\?"):
        open_dataset({"name": "colours", "n_trian": 6}, datasets)
    with pytest.raises(KtError, match="n_train and n_eval must be at least 3"):
        open_dataset({"name": "colours", "n_train": 2}, datasets)


# --- strategy ------------------------------------------------------------------------------------------


def test_strategy_worked_loss(strategies: Registry) -> None:
    """Teacher [2, 0] is confident (p = e^2 / (e^2 + 1) = 0.881 >= 0.6), teacher [0, 0] is not (0.5): the loss is
    the KL of sample 0 alone, toward a uniform student: sum_i p_i log(2 p_i) = 0.3278."""
    strategy = make_strategy("kl_confident", {}, strategies)
    assert (strategy.threshold, strategy.needs_teacher, strategy.needs_initial, strategy.multi_teacher) == (
        0.6, True, False, False)
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    student = torch.zeros(2, 2, requires_grad=True)
    loss, mask = strategy.loss(Outputs(student=student, teachers=[teacher]))
    p = math.exp(2) / (math.exp(2) + 1)
    by_hand = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert loss.item() == pytest.approx(by_hand, abs=1e-6) and by_hand == pytest.approx(0.3278, abs=1e-4)
    log_t = torch.log_softmax(teacher[0], 0)
    assert loss.item() == pytest.approx(float((log_t.exp() * (log_t - math.log(0.5))).sum()), abs=1e-6)
    assert mask.tolist() == [True, False]  # returned with the loss: the teacher_share of metrics.parquet
    loss.backward()
    assert student.grad[1].abs().sum() == 0 and student.grad[0].abs().sum() > 0
    torch.testing.assert_close(student.grad[0], torch.tensor([0.5 - p, p - 0.5]))  # softmax(student) - p

    hot = make_strategy("kl_confident", {"temperature": 2.0}, strategies)
    log_t, log_s = torch.log_softmax(teacher[0] / 2, 0), torch.log_softmax(torch.zeros(2), 0)
    expected = float((log_t.exp() * (log_t - log_s)).sum()) * 4
    assert hot.loss(Outputs(student=torch.zeros(2, 2), teachers=[teacher])).value.item() == pytest.approx(expected)


def test_strategy_on_random_logits(strategies: Registry) -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=g).requires_grad_()
    teacher = torch.randn(8, 10, generator=g) * 3
    everywhere = make_strategy("kl_confident", {"threshold": 0.0}, strategies)
    loss, mask = everywhere.loss(Outputs(student=student, teachers=[teacher]))
    assert loss.dim() == 0 and loss.requires_grad and torch.isfinite(loss)
    torch.testing.assert_close(loss, kl_div(student, teacher).mean())
    assert mask.all()

    nowhere = make_strategy("kl_confident", {"threshold": 1.01}, strategies)
    loss, mask = nowhere.loss(Outputs(student=student, teachers=[teacher]))
    assert loss.item() == 0.0 and torch.isfinite(loss) and not mask.any()
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))

    variant = make_strategy("kl_very_confident", {}, strategies)
    assert variant.threshold == 0.9
    assert strategies.options("strategies", "kl_very_confident")["threshold"] == 0.9


def test_strategy_option_mistakes_name_the_config_key(strategies: Registry) -> None:
    with pytest.raises(KtError, match=r"strategy 'kl_confident' does not accept options \['treshold'\] "
                                      r"\(config key transfer\.options\.kl_confident\)"):
        make_strategy("kl_confident", {"treshold": 0.5}, strategies)
    config = {"transfer": {"options": {"kl_confident": {"treshold": 0.5}}}}
    with pytest.raises(KtError, match=r"config key transfer\.options\.kl_confident\.treshold: strategy "
                                      r"'kl_confident' has no option 'treshold'\. Did you mean: threshold\?"):
        check_strategy_options(config, strategies)


# --- tracker ---------------------------------------------------------------------------------------------


def test_tracker_gets_every_row_of_a_transfer(tmp_path: Path) -> None:
    """linear:mlp teaches linear:flat on colours with kl_confident, a step row every step (3 an epoch): the
    jsonl file holds the run's identity, then every row of metrics.parquet at its step, as kt.trackers.scalars
    names it; `kt plugins` shows the option the page quotes, and a misspelt option stops the config check."""
    registry = registry_of("model source", "dataset", "strategy", "tracker")
    record = {r["name"]: r for r in registry.plugin_records()}["docs_example_tracker"]
    assert record["registered"] == {"trackers": ["jsonl"]}
    assert f'"jsonl": {json.dumps(record["options"]["trackers"]["jsonl"])}' in DOC.read_text()
    settings = TransferSettings(epochs=2, batch_size=10, augment="none", device="cpu", eval_batch_size=64,
                                log_every=1, trackers=[{"name": "jsonl", "dir": str(tmp_path / "curves")}],
                                results=str(tmp_path), options={"threshold": 0.34})
    metrics = transfer(ModelSpec(id="linear:mlp", args={"hidden": 16}), ModelSpec(id="linear:flat"), "kl_confident",
                       {"name": "colours", "n_train": 30, "n_eval": 12}, tmp_path / "transfer" / "kl_confident" / "run",
                       settings, registry=registry)
    header, *lines = map(json.loads, (tmp_path / "curves" / "transfer" / "kl_confident" / "run.jsonl").open())
    assert header == {"run": {"pair": "linear__mlp -> linear__flat [kl_confident]", "strategy": "kl_confident",
                              "seed": 0}}
    assert [line["step"] for line in lines] == metrics["step"].to_list() == [0, 1, 2, 3, 3, 4, 5, 6, 6]
    for line, row in zip(lines, metrics.iter_rows(named=True), strict=True):
        assert line.get(f"{row['kind']}/train_loss") == row["train_loss"]
        assert line.get(f"{row['kind']}/eval_accuracy") == row["eval_accuracy"]
    with pytest.raises(KtError, match=r"tracker 'jsonl' has no option 'dri'. Did you mean: dir\?"):
        check_trackers([{"name": "jsonl", "dri": "x"}], registry)


# --- all three in kt's training loop -------------------------------------------------------------------


def test_the_three_examples_run_a_transfer(tmp_path: Path) -> None:
    """linear:mlp teaches linear:flat on colours with kl_confident: a complete run folder, a teacher_share,
    and a student.pth the model source loads back."""
    registry = registry_of(*HOOKS)
    dataset = {"name": "colours", "n_train": 30, "n_eval": 12}
    teacher = ModelSpec(id="linear:mlp", args={"hidden": 16})
    student = ModelSpec(id="linear:flat")
    settings = TransferSettings(epochs=2, batch_size=10, augment="none", device="cpu", eval_batch_size=64,
                                options={"threshold": 0.34})
    metrics = transfer(teacher, student, "kl_confident", dataset, tmp_path / "run", settings, registry=registry)
    assert metrics["epoch"].to_list() == [0, 1, 2] and metrics["step"].to_list() == [0, 3, 6]
    shares = metrics["teacher_share"].to_list()
    assert shares[0] is None and all(0.0 <= s <= 1.0 for s in shares[1:])
    assert all(math.isfinite(v) for v in metrics["train_loss"].to_list()[1:])
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"config.json", "eval_after.h5", "eval_before.h5",
                                                             "metrics.parquet", "student.pth"}

    trained = create_model(ModelSpec(id="linear:flat", weights=str(tmp_path / "run" / "student.pth")),
                           ["red", "green", "blue"], registry)
    images, _, _ = next(load_split(dataset, "eval", registry).batches(trained.preprocess, 12))
    assert trained(normalize(images, trained.preprocess)).shape == (12, 3)


def test_the_preparing_source_builds_its_artifact_once_and_loads_it(tmp_path: Path) -> None:
    registry = registry_of("preparing model source")
    source = registry.get("model_sources", "proto")
    spec, classes = ModelSpec(id="proto:names"), ["cat", "dog", "fish"]
    assert source.preparation(spec, classes) == 3
    assert source.prepare(spec, classes, tmp_path / "p.h5", torch.device("cpu")) == "3 prototypes"
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left
    prepared = create_model(ModelSpec(id="proto:names", args={"prepared": str(tmp_path / "p.h5")}), classes, registry)
    direct = create_model(spec, classes, registry)
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(prepared(x), direct(x))  # the stored prototypes are the ones it derives
    with pytest.raises(KtError, match="prepared for other classes"):
        create_model(ModelSpec(id="proto:names", args={"prepared": str(tmp_path / "p.h5")}), ["cat"], registry)


def test_feature_strategy_worked_loss() -> None:
    """fitnet_pooled with weight 2, hint w = [1, -1], b = 0.5: student features [1, 0] and [0, 2] map to
    1.5 and -1.5, the teacher's are 1.0 and 0.5, so the hint is ((0.5)² + (-2)²) / 2 = 2.125; equal
    logits make KL 0, and the loss is 2 x 2.125 = 4.25."""
    from kt.strategies import Context

    strategy = make_strategy("fitnet_pooled", {"weight": 2.0}, registry_of("feature strategy"))
    assert strategy.features == ("pooled",) and not strategy.cacheable and not strategy.trains_teacher
    modules = strategy.build(Context(4, 3, torch.tensor([0, 1, 2, 0]), {"student": {"pooled": 2},
                                                                       "teacher": {"pooled": 1}}))
    assert set(modules) == {"hint"}
    with torch.no_grad():
        strategy.hint.weight.copy_(torch.tensor([[1.0, -1.0]]))
        strategy.hint.bias.fill_(0.5)
    out = Outputs(student=torch.zeros(2, 3), teachers=[torch.zeros(2, 3)],
                  student_features={"pooled": torch.tensor([[1.0, 0.0], [0.0, 2.0]])},
                  teacher_features=[{"pooled": torch.tensor([[1.0], [0.5]])}])
    result = strategy.loss(out)
    assert result.value.item() == pytest.approx(4.25) and result.terms["hint"].item() == pytest.approx(2.125)
    assert result.terms["kl"].item() == pytest.approx(0.0, abs=1e-7)


def test_feature_strategy_trains_its_hint_in_a_transfer(tmp_path: Path) -> None:
    """linear:mlp teaches linear:flat on colours with fitnet_pooled: the hint maps the student's pooled
    features (its flattened input: 3 x 8 x 8 at linear's size 8) onto the teacher's (its 16 hidden units)."""
    registry = registry_of("model source", "dataset", "feature strategy")
    dataset = {"name": "colours", "n_train": 30, "n_eval": 12}
    settings = TransferSettings(epochs=2, batch_size=10, augment="none", device="cpu", eval_batch_size=64)
    transfer(ModelSpec(id="linear:mlp", args={"hidden": 16}), ModelSpec(id="linear:flat"), "fitnet_pooled",
             dataset, tmp_path, settings, registry=registry)
    transfer(ModelSpec(id="linear:mlp", args={"hidden": 16}), ModelSpec(id="linear:flat"), "fitnet_pooled",
             dataset, tmp_path / "untrained", replace(settings, epochs=0), registry=registry)
    hint = torch.load(tmp_path / "strategy.pt", weights_only=True)
    assert hint["hint.weight"].shape == (16, 3 * 8 * 8) and hint["hint.bias"].shape == (16,)
    built = torch.load(tmp_path / "untrained" / "strategy.pt", weights_only=True)  # same seed, no step
    assert not torch.equal(hint["hint.weight"], built["hint.weight"])  # trained with the student
