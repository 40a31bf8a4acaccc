"""The wider strategy contract on the tiny pair of test_transfer (28-px random-init ResNets, 256 train /
200 eval Fashion-MNIST images, 2 epochs on the CPU): features read by forward hooks, modules a strategy
owns, a teacher that trains too; what each saves and resumes, where the frozen-output cache is refused,
and the evaluation's row per direction for a strategy that trains both models."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
import pytest
import torch
from test_transfer import DATASET, SETTINGS, Died, assert_same_weights, plugin_registry

from kt.artifacts import read_logits, top1
from kt.errors import KtError
from kt.metrics import run_table
from kt.strategies import Context, Loss, Outputs, Strategy
from kt.transfer import RunFolder, build_cache, transfer


def run_twice_with_a_crash(tmp_path: Path, models, strategy: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(uninterrupted run folder, run folder killed after epoch 1's resume point and resumed)."""
    whole = tmp_path / "whole"
    transfer(*models, strategy, DATASET, whole, SETTINGS)
    save_state = RunFolder.save_state

    def die_after_first_checkpoint(folder, state):
        save_state(folder, state)
        raise Died

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(RunFolder, "save_state", die_after_first_checkpoint)
        with pytest.raises(Died):
            transfer(*models, strategy, DATASET, resumed, SETTINGS)
    transfer(*models, strategy, DATASET, resumed, SETTINGS)
    return whole, resumed


def same_logits(a: Path, b: Path) -> bool:
    return torch.equal(torch.from_numpy(read_logits(a).logits), torch.from_numpy(read_logits(b).logits))


def test_crd_resume_restores_its_heads_and_memory_bit_for_bit(tmp_path: Path, pair, monkeypatch) -> None:
    whole, resumed = run_twice_with_a_crash(tmp_path, pair, "crd", monkeypatch)
    modules = torch.load(whole / "strategy.pt", weights_only=True)
    assert modules["memory.memory_s"].shape == (256, 128) and modules["embed_s.linear.weight"].shape == (128, 128)
    assert (modules["memory.z"] > 0).all()  # the normalisers were fixed on the first batch
    again = torch.load(resumed / "strategy.pt", weights_only=True)
    assert modules.keys() == again.keys() and all(torch.equal(modules[k], again[k]) for k in modules)
    assert same_logits(whole / "eval_after.h5", resumed / "eval_after.h5")
    assert_same_weights(whole / "student.pth", resumed / "student.pth")


def test_bikd_trains_both_models_resumes_both_and_evaluates_both_directions(tmp_path: Path, pair,
                                                                            monkeypatch) -> None:
    whole, resumed = run_twice_with_a_crash(tmp_path, pair, "bikd", monkeypatch)
    teacher_folder = RunFolder(whole).trained("tiny_teacher")
    assert RunFolder(whole).trained_teachers() == ["tiny_teacher"]
    for name in ("before", "after", "weights"):
        assert teacher_folder.file(name).is_file()
    teacher_weights = torch.load(teacher_folder.weights, weights_only=True)
    initial = torch.load(pair[0].weights, weights_only=True)
    assert not torch.equal(teacher_weights["fc.weight"], initial["fc.weight"])  # the teacher learned
    assert_same_weights(teacher_folder.weights, RunFolder(resumed).trained("tiny_teacher").weights)
    assert_same_weights(whole / "student.pth", resumed / "student.pth")
    assert same_logits(teacher_folder.after, RunFolder(resumed).trained("tiny_teacher").after)

    table = run_table(whole, None, "bikd", "tiny_teacher", "tiny_student")
    wide = table.pivot("metric", index=["teacher", "student"], values="value")
    directions = [("tiny_teacher", "tiny_student"), ("tiny_student", "tiny_teacher")]
    assert wide.select("teacher", "student").rows() == directions
    assert table["strategy"].unique(maintain_order=True).to_list() == ["bikd", "bikd:reverse"]
    reverse = wide.row(1, named=True)
    before, after = read_logits(teacher_folder.before), read_logits(teacher_folder.after)
    assert reverse["acc_before"] == pytest.approx(top1(before.logits, before.labels))
    assert reverse["delta"] == pytest.approx(top1(after.logits, after.labels) - top1(before.logits, before.labels))


@pytest.mark.parametrize("strategy", ["crd", "bikd"])
def test_the_frozen_output_cache_is_refused_where_it_is_not_exact(tmp_path: Path, pair, strategy: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache.h5"
    one = replace(SETTINGS, epochs=1, cache_views=1)
    build_cache(*pair, DATASET, one, cache)
    caplog.set_level(logging.INFO, logger="kt")
    transfer(*pair, strategy, DATASET, tmp_path / "cached", one, cache=cache)
    reason = "trains the teacher" if strategy == "bikd" else "reads features ['pooled']"
    assert any("frozen-output cache is not used" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    transfer(*pair, strategy, DATASET, tmp_path / "online", one)
    assert same_logits(tmp_path / "cached" / "eval_after.h5", tmp_path / "online" / "eval_after.h5")


@dataclass
class ProjectLayer1(Strategy):
    """A feature strategy in plugin form: match a trained projection of the student's ``layer1``
    output to the teacher's (pooled over space), plus KL."""

    def __post_init__(self) -> None:
        self.features = ("layer1",)

    def build(self, context: Context) -> dict[str, torch.nn.Module]:
        dims = context.feature_dims
        self.project = torch.nn.Linear(dims["student"]["layer1"], dims["teacher"]["layer1"])
        return {"project": self.project}

    def loss(self, out: Outputs) -> Loss:
        fs = out.student_features["layer1"].flatten(1)
        ft = out.teacher_features[0]["layer1"].flatten(1)
        match = (self.project(fs) - ft).pow(2).mean()
        return Loss(match, terms={"match": match.detach()})


def test_a_plugin_reads_named_module_features_and_trains_its_own_module(tmp_path: Path, pair) -> None:
    registry = plugin_registry("project_layer1", ProjectLayer1)
    transfer(*pair, "project_layer1", DATASET, tmp_path, replace(SETTINGS, epochs=1), registry=registry)
    modules = torch.load(tmp_path / "strategy.pt", weights_only=True)
    # tiny ResNet layer1: 16 channels at 14 x 14 after the deep stem's stride-2 and max-pool
    assert modules["project.weight"].shape == (16 * 7 * 7, 16 * 7 * 7)
    torch.manual_seed(0)
    fresh = torch.nn.Linear(16 * 7 * 7, 16 * 7 * 7)
    assert not torch.equal(modules["project.weight"], fresh.weight)


def test_an_unknown_feature_module_names_the_model_and_the_strategy(tmp_path: Path, pair) -> None:
    @dataclass
    class Nowhere(Strategy):
        def __post_init__(self) -> None:
            self.features = ("layer9",)

        def loss(self, out: Outputs) -> torch.Tensor:
            return out.student.sum()

    with pytest.raises(KtError, match=r"strategy 'nowhere' reads the features of module 'layer9', which model "
                                      r"'tiny_student' does not have.*Did you mean: layer4, layer3"):
        transfer(*pair, "nowhere", DATASET, tmp_path, SETTINGS, registry=plugin_registry("nowhere", Nowhere))
    assert not (tmp_path / "config.json").exists()


def test_metrics_table_types_survive_a_strategy_with_terms(tmp_path: Path, pair) -> None:
    metrics = transfer(*pair, "crd", DATASET, tmp_path, replace(SETTINGS, epochs=1))
    assert isinstance(metrics, pl.DataFrame) and metrics["train_loss"].drop_nulls().len() >= 1


def test_bikd_with_three_models_trains_all_and_reports_each_direction(tmp_path: Path, pair,
                                                                       tiny_resnet_spec) -> None:
    """A parallel group of two teachers and the student: all three train, the most confident teaches."""
    transfer(list(pair[:1]) + [tiny_resnet_spec], pair[1], "bikd", DATASET, tmp_path, replace(SETTINGS, epochs=1))
    folder = RunFolder(tmp_path)
    assert folder.trained_teachers() == ["tiny_resnet18", "tiny_teacher"]
    teachers = [folder.trained(t).before for t in ("tiny_teacher", "tiny_resnet18")]
    table = run_table(tmp_path, teachers, "bikd", "tiny_teacher+tiny_resnet18", "tiny_student")
    wide = table.pivot("metric", index=["strategy", "teacher", "student"], values="value")
    assert wide.select("strategy", "teacher", "student").rows() == [
        ("bikd", "tiny_teacher+tiny_resnet18", "tiny_student"),
        ("bikd:reverse", "tiny_student+tiny_teacher", "tiny_resnet18"),
        ("bikd:reverse", "tiny_student+tiny_resnet18", "tiny_teacher")]
    assert "group_oracle_acc" in wide.columns  # flips against several teachers
