"""Multi-teacher transfer: the parallel target on hand-made logits of three models, the curriculum
order, the frozen-student reset between sequential stages (and their resume), the parallel run
folder, and the soup as the arithmetic mean of state dicts (buffers included) that refuses mixed
architectures. Models: tiny random-init timm ResNets on a 128/100-image Fashion-MNIST subset."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import TINY_PREPROCESS, TINY_RESNET_ARGS

import kt
import kt.multi
from kt.artifacts import read_logits
from kt.errors import KtError
from kt.models import ModelSpec, create_model
from kt.multi import average_state_dicts, curriculum, parallel, sequential, soup
from kt.registry import Registry
from kt.strategies import KL, KLDP, Outputs, kl_div, most_confident
from kt.transfer import TransferSettings, transfer

DATASET = {"name": "fashion_mnist", "subset": {"train": 128, "eval": 100}}
SETTINGS = TransferSettings(epochs=1, batch_size=64, lr=0.01, device="cpu")
RUN_FILES = {"student.pth", "eval_before.h5", "eval_after.h5", "metrics.parquet", "config.json"}


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------------------------------------- parallel target

# Three models on five samples of three classes: the frozen initial student and two teachers.
INITIAL = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.5], [1.0, 1.0, 0.0], [0.0, 3.0, 0.0]]
TEACHER1 = [[0.0, 2.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 0.0, 4.0]]
TEACHER2 = [[0.0, 0.0, 3.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0], [1.0, 1.0, 0.0], [5.0, 0.0, 0.0]]
LABELS = [0, 1, 2, 1, 2]


def test_parallel_target_is_the_most_confident_of_initial_and_teachers() -> None:
    models = [INITIAL, TEACHER1, TEACHER2]
    # supervised: the highest probability of the true class; exact ties (sample 3) go to the initial student
    expected = [max(range(3), key=lambda k: (softmax(models[k][i])[y], -k)) for i, y in enumerate(LABELS)]
    assert expected == [0, 1, 2, 0, 1]
    pick = most_confident(torch.stack([t(m) for m in models]), torch.tensor(LABELS))
    assert pick.tolist() == expected

    # unsupervised: the highest top-1 confidence, whatever the class
    expected_unsup = [max(range(3), key=lambda k: (max(softmax(models[k][i])), -k)) for i in range(5)]
    assert expected_unsup == [2, 1, 2, 0, 2]
    assert most_confident(torch.stack([t(m) for m in models]), None).tolist() == expected_unsup


@pytest.mark.parametrize("supervised", [True, False])
def test_kl_dp_with_several_teachers_distils_each_sample_from_its_most_confident_model(supervised: bool) -> None:
    student = [[0.2, -0.3, 1.1], [1.0, 0.0, 0.0], [0.0, 2.0, -1.0], [0.3, 0.3, 0.3], [-1.0, 0.5, 2.0]]
    models = [INITIAL, TEACHER1, TEACHER2]
    pick = most_confident(torch.stack([t(m) for m in models]), torch.tensor(LABELS) if supervised else None)
    strategy = KLDP(supervised=supervised)
    assert strategy.multi_teacher
    loss, mask = strategy.loss(Outputs(student=t(student), initial=t(INITIAL), teachers=[t(TEACHER1), t(TEACHER2)],
                                       labels=torch.tensor(LABELS)))
    targets = t([models[k][i] for i, k in enumerate(pick.tolist())])
    assert float(loss) == pytest.approx(float(kl_div(t(student), targets).mean()), rel=1e-6)
    assert mask.tolist() == [k > 0 for k in pick.tolist()]


def test_kl_dp_with_one_teacher_is_unchanged_by_the_generalisation() -> None:
    student = t([[0.2, -0.3, 1.1], [1.0, 0.0, 0.0], [0.0, 2.0, -1.0], [0.3, 0.3, 0.3], [-1.0, 0.5, 2.0]])
    one = KLDP().loss(Outputs(student=student, teacher=t(TEACHER1), initial=t(INITIAL), labels=torch.tensor(LABELS)))
    listed = KLDP().loss(Outputs(student=student, teachers=[t(TEACHER1)], initial=t(INITIAL),
                                 labels=torch.tensor(LABELS)))
    assert torch.equal(one.value, listed.value) and torch.equal(one.teacher_mask, listed.teacher_mask)
    mask = [softmax(a)[y] > softmax(b)[y] for a, b, y in zip(TEACHER1, INITIAL, LABELS, strict=True)]
    targets = t([a if m else b for a, b, m in zip(TEACHER1, INITIAL, mask, strict=True)])
    assert float(one.value) == pytest.approx(float(kl_div(student, targets).mean()), rel=1e-6)
    assert one.teacher_mask.tolist() == mask
    assert not KL().multi_teacher


# ---------------------------------------------------------------------------------------------- curriculum


def spec(name: str) -> ModelSpec:
    return ModelSpec(id="timm:resnet18", name=name)


def test_curriculum_orders_teachers_by_accuracy() -> None:
    teachers = [spec("b"), spec("a"), spec("c"), spec("d")]
    accuracies = [85.0, 80.0, 90.0, 85.0]
    assert [s.slug for s in curriculum(teachers, accuracies)] == ["a", "b", "d", "c"]  # ties keep their order
    assert [s.slug for s in curriculum(teachers, accuracies, "descending")] == ["c", "b", "d", "a"]
    with pytest.raises(KtError, match=r"multi_teacher\.order"):
        curriculum(teachers, accuracies, "random")
    with pytest.raises(KtError, match="4 teachers but 3 accuracies"):
        curriculum(teachers, accuracies[:3])
    with pytest.raises(KtError, match="one eval logits file per teacher"):
        kt.multi.teacher_accuracies(["a.h5"], teachers)


# ---------------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory, fmnist: dict) -> dict[str, ModelSpec]:
    """Two teachers and a student: tiny timm ResNets with seeded random weights saved to files."""
    folder = tmp_path_factory.mktemp("multi-weights")
    specs = {}
    for name, seed in (("t1", 1), ("t2", 2), ("student", 3)):
        torch.manual_seed(seed)
        model = create_model(ModelSpec(id="timm:resnet18", num_classes=10, args=TINY_RESNET_ARGS,
                                       preprocess=TINY_PREPROCESS, pretrained=False))
        torch.save(model.body.state_dict(), folder / f"{name}.pth")
        specs[name] = ModelSpec(id="timm:resnet18", weights=str(folder / f"{name}.pth"), num_classes=10,
                                args=TINY_RESNET_ARGS, preprocess=TINY_PREPROCESS, name=name)
    return specs


def weights_of(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


STARTS: list[dict[str, torch.Tensor]] = []


@dataclass
class Probe(KLDP):
    """kl_dp that records the weights it starts from: the frozen initial student is a copy of them."""

    def setup(self, student: torch.nn.Module) -> None:
        STARTS.append({k: v.detach().clone() for k, v in student.body.state_dict().items()})


def probe_registry() -> Registry:
    class Plugin:
        @kt.hookimpl
        def register_strategies(self, register):
            register("probe_dp", Probe)

    return Registry(extra_plugins=(Plugin(),))


# ---------------------------------------------------------------------------------------------- sequential


def test_sequential_resets_the_frozen_student_at_each_stage(tmp_path: Path, trio, monkeypatch) -> None:
    STARTS.clear()
    registry = probe_registry()
    out = tmp_path / "sequential"
    # t2 is the weaker teacher here, so the ascending curriculum runs it first
    metrics = sequential([trio["t1"], trio["t2"]], trio["student"], "probe_dp", DATASET, out, "pair",
                         SETTINGS, registry=registry, accuracies=[60.0, 40.0], order="ascending")
    stages = [out / "stages" / "1_t2", out / "stages" / "2_t1"]
    assert all({p.name for p in s.iterdir()} == RUN_FILES for s in stages)
    assert RUN_FILES <= {p.name for p in out.iterdir()}

    # stage 1 starts from the student's own weights, stage 2 from stage 1's result
    assert len(STARTS) == 2
    assert same_weights(STARTS[0], weights_of(trio["student"].weights))
    assert same_weights(STARTS[1], weights_of(stages[0] / "student.pth"))
    assert not same_weights(STARTS[1], STARTS[0])
    stage_configs = [json.loads((s / "config.json").read_text()) for s in stages]
    assert [c["teacher"]["name"] for c in stage_configs] == ["t2", "t1"]
    assert stage_configs[1]["student"]["weights"] == str(stages[0] / "student.pth")

    # the group's folder: first stage's before, last stage's after and weights, metrics over the stages
    np.testing.assert_array_equal(read_logits(out / "eval_before.h5").logits,
                                  read_logits(stages[0] / "eval_before.h5").logits)
    np.testing.assert_array_equal(read_logits(out / "eval_after.h5").logits,
                                  read_logits(stages[1] / "eval_after.h5").logits)
    np.testing.assert_array_equal(read_logits(stages[1] / "eval_before.h5").logits,
                                  read_logits(stages[0] / "eval_after.h5").logits)
    assert same_weights(weights_of(out / "student.pth"), weights_of(stages[1] / "student.pth"))
    assert metrics["epoch"].to_list() == [0, 1, 2] and metrics["stage"].to_list() == [1, 1, 2]
    assert metrics["stage_teacher"].to_list() == ["t2", "t2", "t1"]
    assert set(metrics["strategy"]) == {"sequential"} and set(metrics["teacher"]) == {"pair"}
    assert pl.read_parquet(out / "metrics.parquet").equals(metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "sequential" and config["members"] == ["t2", "t1"] and config["teacher"] is None
    assert [t["name"] for t in config["teachers"]] == ["t2", "t1"] and "stage" not in config
    assert config["base_strategy"] == "probe_dp" and config["student"]["name"] == "student"

    # finished stages are not run again
    def no_transfer(*args, **kwargs):
        raise AssertionError("a finished stage was run again")

    monkeypatch.setattr(kt.multi, "transfer", no_transfer)
    again = sequential([trio["t1"], trio["t2"]], trio["student"], "probe_dp", DATASET, out, "pair",
                       SETTINGS, registry=registry, accuracies=[60.0, 40.0], order="ascending")
    assert again.equals(metrics)


# ---------------------------------------------------------------------------------------------- parallel


def test_parallel_run_folder_names_the_group(tmp_path: Path, trio) -> None:
    metrics = parallel([trio["t1"], trio["t2"]], trio["student"], "kl_dp", DATASET, tmp_path, "pair", SETTINGS)
    assert {p.name for p in tmp_path.iterdir()} == RUN_FILES
    assert set(metrics["teacher"]) == {"pair"} and set(metrics["strategy"]) == {"kl_dp"}
    share = metrics["teacher_share"].to_list()[1]
    assert 0.0 < share <= 1.0  # some samples were taken from a teacher
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["mode"] == "parallel" and config["members"] == ["t1", "t2"] and config["teacher"] is None
    assert [t["name"] for t in config["teachers"]] == ["t1", "t2"]

    with pytest.raises(KtError, match="learns from one teacher"):
        parallel([trio["t1"], trio["t2"]], trio["student"], "kl", DATASET, tmp_path / "kl", "pair", SETTINGS)
    with pytest.raises(KtError, match="holds one teacher"):
        transfer([trio["t1"], trio["t2"]], trio["student"], "kl_dp", DATASET, tmp_path / "c", SETTINGS,
                 cache=tmp_path / "cache.h5")
    assert not (tmp_path / "kl").exists() and not (tmp_path / "c").exists()  # refused before writing


# ---------------------------------------------------------------------------------------------- soup


def test_average_state_dicts_is_the_arithmetic_mean_buffers_included(trio) -> None:
    states = [weights_of(trio[n].weights) for n in ("t1", "t2", "student")]
    for i, s in enumerate(states):  # make the integer buffers differ: 3, 4, 6 -> mean 4.33 -> 4
        for k in s:
            if k.endswith("num_batches_tracked"):
                s[k] = torch.tensor((3, 4, 6)[i])
    soup_state = average_state_dicts(states)
    assert soup_state.keys() == states[0].keys()
    floats = [k for k in soup_state if soup_state[k].dtype.is_floating_point]
    assert any("running_var" in k for k in floats) and any("running_mean" in k for k in floats)
    for k in floats:
        torch.testing.assert_close(soup_state[k], (states[0][k] + states[1][k] + states[2][k]) / 3)
        assert soup_state[k].dtype == states[0][k].dtype
    counters = [k for k in soup_state if k.endswith("num_batches_tracked")]
    assert counters and all(int(soup_state[k]) == 4 and soup_state[k].dtype == torch.int64 for k in counters)

    other = {k: v for k, v in states[0].items() if not k.startswith("fc.")}
    with pytest.raises(KtError, match="different architecture"):
        average_state_dicts([states[0], other])


def test_soup_of_single_teacher_students(tmp_path: Path, trio) -> None:
    members = []
    for name in ("t1", "t2"):
        members.append(tmp_path / f"kl_dp-{name}")
        transfer(trio[name], trio["student"], "kl_dp", DATASET, members[-1], SETTINGS)
    out = tmp_path / "soup"
    metrics = soup(members, DATASET, out, "pair", SETTINGS)
    assert {p.name for p in out.iterdir()} == RUN_FILES
    mean = average_state_dicts([weights_of(m / "student.pth") for m in members])
    assert same_weights(weights_of(out / "student.pth"), mean)
    np.testing.assert_array_equal(read_logits(out / "eval_before.h5").logits,
                                  read_logits(members[0] / "eval_before.h5").logits)
    # the soup's eval logits are those of the averaged weights, loaded back through the model source
    from kt.data import load_split
    from kt.transfer import eval_logits

    souped = create_model(replace(trio["student"], weights=str(out / "student.pth")))
    np.testing.assert_allclose(read_logits(out / "eval_after.h5").logits,
                               eval_logits(souped, load_split(DATASET, "eval"), SETTINGS, torch.device("cpu")),
                               rtol=1e-5, atol=1e-5)
    assert metrics["epoch"].to_list() == [0, 1] and set(metrics["strategy"]) == {"soup"}
    config = json.loads((out / "config.json").read_text())
    assert config["members"] == ["t1", "t2"] and config["batchnorm"] == "mean"

    # re-estimated batch-norm statistics: same weights, other running statistics
    recal = tmp_path / "soup-recal"
    soup(members, DATASET, recal, "pair", SETTINGS, batchnorm="recalibrate")
    a, b = weights_of(out / "student.pth"), weights_of(recal / "student.pth")
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)
    assert any(not torch.equal(a[k], b[k]) for k in a if "running_var" in k)

    # members of another architecture are refused before any weight is read
    odd = tmp_path / "odd"
    odd.mkdir()
    config = json.loads((members[1] / "config.json").read_text())
    config["student"]["args"] = {**config["student"]["args"], "channels": [8, 16, 32, 64]}
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(KtError, match="one architecture"):
        soup([members[0], odd], DATASET, tmp_path / "bad", "pair", SETTINGS)
    with pytest.raises(KtError, match="not a finished transfer run"):
        soup([members[0], tmp_path / "missing"], DATASET, tmp_path / "bad", "pair", SETTINGS)
    assert not (tmp_path / "bad").exists()
