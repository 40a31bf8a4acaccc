"""The example plugin of the repository's top-level plugins/ folder (plugins/kl_correct.py), loaded the way
the workflow loads it: as a plugin folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kt.errors import KtError
from kt.registry import Registry
from kt.strategies import Outputs, kl_div
from kt.transfer import make_strategy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(plugin_dirs=(str(REPO / "plugins"),), entry_points=False)


def test_kt_plugins_lists_the_example_by_default_from_the_repository_root(kt_cli) -> None:
    """No --plugin-dir: kt run from the repository root loads ./plugins, as the workflow does."""
    result = kt_cli("plugins")  # cwd: the repository root
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["kt_local_kl_correct"]["registered"] == {"strategies": ["kl_correct"]}
    assert records["kt_local_kl_correct"]["options"] == {"strategies": {"kl_correct": {"temperature": 1.0,
                                                                                       "lr": None}}}


def test_the_folder_registers_kl_correct_with_its_options(registry: Registry) -> None:
    assert registry.failures == []
    assert "kl_correct" in registry.names("strategies")
    assert registry.options("strategies", "kl_correct") == {"temperature": 1.0, "lr": None}
    record = next(r for r in registry.plugin_records() if r["name"] == "kt_local_kl_correct")
    assert record["origin"] == str(REPO / "plugins" / "kl_correct.py")
    assert record["registered"] == {"strategies": ["kl_correct"]}
    assert record["options"] == {"strategies": {"kl_correct": {"temperature": 1.0, "lr": None}}}
    strategy = make_strategy("kl_correct", {}, registry)
    assert (strategy.needs_teacher, strategy.needs_initial, strategy.multi_teacher) == (True, False, False)


def by_hand(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2 of one sample, from log_softmax."""
    log_t = torch.log_softmax(teacher / temperature, 0)
    log_s = torch.log_softmax(student / temperature, 0)
    return (log_t.exp() * (log_t - log_s)).sum() * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_loss_is_the_kl_of_the_samples_the_teacher_gets_right(registry: Registry, temperature: float) -> None:
    """Labels [0, 0]; the teacher predicts class 0 on sample 0 (right) and class 2 on sample 1 (wrong): the
    loss is the KL of sample 0 alone (a mean over one sample)."""
    strategy = make_strategy("kl_correct", {"temperature": temperature}, registry)
    student = torch.tensor([[0.5, -1.0, 0.0], [1.0, 2.0, -0.5]], requires_grad=True)
    teacher = torch.tensor([[3.0, 0.0, 1.0], [0.0, 1.0, 4.0]])
    labels = torch.tensor([0, 0])
    loss, mask = strategy.loss(Outputs(student=student, teachers=[teacher], labels=labels))
    expected = by_hand(student[0].detach(), teacher[0], temperature)
    torch.testing.assert_close(loss.detach(), expected)
    assert 0 < expected.item() != by_hand(student[1].detach(), teacher[1], temperature).item()
    assert mask.tolist() == [True, False]
    loss.backward()
    assert student.grad[1].abs().sum() == 0 and student.grad[0].abs().sum() > 0  # sample 1 teaches nothing


def test_right_everywhere_is_plain_kl(registry: Registry) -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 4, generator=g)
    teacher = torch.randn(6, 4, generator=g)
    strategy = make_strategy("kl_correct", {}, registry)
    loss, mask = strategy.loss(Outputs(student=student, teachers=[teacher], labels=teacher.argmax(1)))
    torch.testing.assert_close(loss, kl_div(student, teacher).mean())
    assert mask.all()


def test_a_teacher_wrong_everywhere_gives_zero_loss(registry: Registry) -> None:
    strategy = make_strategy("kl_correct", {}, registry)
    student = torch.tensor([[0.5, -1.0, 0.0], [1.0, 2.0, -0.5]], requires_grad=True)
    teacher = torch.tensor([[3.0, 0.0, 1.0], [0.0, 1.0, 4.0]])
    loss, mask = strategy.loss(Outputs(student=student, teachers=[teacher], labels=torch.tensor([1, 1])))
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert mask.tolist() == [False, False]
    loss.backward()  # still part of the graph: the training loop can step on it
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_a_misspelled_option_is_a_kt_error(registry: Registry) -> None:
    with pytest.raises(KtError, match=r"transfer\.options\.kl_correct"):
        make_strategy("kl_correct", {"temprature": 2.0}, registry)
