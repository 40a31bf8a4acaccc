"""The transfer loop end to end on real data: tiny random-init timm ResNets (28 px, teacher and student from
different seeds) on a 256/200-image Fashion-MNIST subset, 2 epochs of batch 64 on the CPU.

Checked: the run folder's artifacts against plain PyTorch loops, a plugin strategy without a teacher, reuse
of the student's extracted eval logits as the before-evaluation, the same augmented view for every model,
bit-exact resume after a crash, the non-finite-loss stop, the frozen-output cache (bit-exact against the
online loop, refused when built for other settings), the paper's default learning rate, the automatic batch
size and the out-of-memory back-off to micro-batches."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

import kt
import kt.strategies
import kt.transfer
import kt.transfer.cache
import kt.transfer.loop
from kt.artifacts import open_h5, read_logits
from kt.augment import AugmentPlan
from kt.data import load_split
from kt.device import find_batch_size
from kt.errors import KtError
from kt.extract import extract
from kt.models import ModelSpec, create_model
from kt.registry import Registry
from kt.strategies import KL, KLDP, XEKL, XEKLMCL, Outputs, Strategy
from kt.transfer import RunFolder, TransferSettings, build_cache, load_cache, transfer

DATASET = {"name": "fashion_mnist", "subset": {"train": 256, "eval": 200}}
# device pinned to the CPU: the bit-exact comparisons below rely on its deterministic kernels
SETTINGS = TransferSettings(epochs=2, batch_size=64, lr=0.01, device="cpu")
RUN_FILES = {"student.pth", "eval_before.h5", "eval_after.h5", "metrics.parquet", "config.json"}
STEPS_PER_EPOCH = 256 // 64


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, pair) -> tuple[Path, pl.DataFrame]:
    """An uninterrupted online kl_dp run with SETTINGS: (run folder, returned metrics)."""
    out = tmp_path_factory.mktemp("reference") / "kl_dp"
    metrics = transfer(*pair, "kl_dp", DATASET, out, SETTINGS)
    return out, metrics


def plain_logits(spec: ModelSpec) -> np.ndarray:
    """The eval split through ``spec``'s model in a plain loop, normalising by hand (images are 28 px already)."""
    split = load_split(DATASET, "eval")
    model = create_model(spec).eval()
    mean = torch.tensor(model.preprocess.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1) * 255
    images = split.images.expand(-1, 3, -1, -1)
    assert images.shape == (200, 3, 28, 28) and images.dtype == torch.uint8
    with torch.no_grad():
        return torch.cat([model((images[s:s + 100].float() - mean) / std) for s in range(0, 200, 100)]).numpy()


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights_of(a), weights_of(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def patch_view_for(monkeypatch: pytest.MonkeyPatch, spy) -> None:
    """Replace view_for where the loop (the student) and the frozen models (online or cached) call it."""
    for module in (kt.transfer.loop, kt.transfer.cache):
        monkeypatch.setattr(module, "view_for", spy)


def plugin_registry(name: str, factory) -> Registry:
    class Plugin:
        @kt.hookimpl
        def register_strategies(self, register):
            register(name, factory)

    return Registry(extra_plugins=(Plugin(),))


# ---------------------------------------------------------------------------------------------- the run folder


def test_run_folder_artifacts(reference, pair) -> None:
    out, metrics = reference
    teacher, student = pair
    assert {p.name for p in out.iterdir()} == RUN_FILES  # no state.pt, no temp files left

    before, after = read_logits(out / "eval_before.h5"), read_logits(out / "eval_after.h5")
    split = load_split(DATASET, "eval")
    for f in (before, after):
        assert f.logits.shape == (200, 10) and f.logits.dtype == np.float32
        np.testing.assert_array_equal(f.labels, split.labels)
        np.testing.assert_array_equal(f.index, split.ids)
        assert f.attrs["dataset_fingerprint"] == split.fingerprint() and f.attrs["model"] == "tiny_student"
    # before: the untrained student; after: student.pth reloaded through create_model
    np.testing.assert_allclose(before.logits, plain_logits(student), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after.logits, plain_logits(replace(student, weights=str(out / "student.pth"))),
                               rtol=1e-5, atol=1e-5)
    assert np.abs(after.logits - before.logits).max() > 1e-3  # training changed the student
    assert after.attrs["transfer"]["strategy"] == "kl_dp"

    saved = pl.read_parquet(out / "metrics.parquet")
    assert saved.equals(metrics)
    assert saved["epoch"].to_list() == [0, 1, 2]
    assert saved["step"].to_list() == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    shares = saved["teacher_share"].to_list()
    assert shares[0] is None and all(0.0 <= s <= 1.0 for s in shares[1:])
    assert all(np.isfinite(saved["train_loss"].to_list()[1:]))
    acc = saved["eval_accuracy"].to_list()
    assert acc[0] == pytest.approx(before.accuracy) and acc[2] == pytest.approx(after.accuracy)
    assert 0 <= acc[1] <= 100
    assert set(saved["strategy"]) == {"kl_dp"} and set(saved["teacher"]) == {"tiny_teacher"}

    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == "kl_dp" and config["lr"] == 0.01
    assert config["teacher"]["name"] == "tiny_teacher" and config["student"]["name"] == "tiny_student"
    assert config["settings"]["epochs"] == 2 and config["digest"] == SETTINGS.digest()


def test_run_folder_names_the_files_and_imports_without_torch() -> None:
    """RunFolder names a transfer rule's outputs when the workflow is parsed, where torch must not load."""
    assert set(RunFolder.OUTPUTS.values()) == RUN_FILES
    folder = RunFolder("runs/kl")
    assert folder.file("after") == folder.after == Path("runs/kl/eval_after.h5")
    assert folder.stage(2, "vit").weights == Path("runs/kl/stages/2_vit/student.pth")
    with pytest.raises(KeyError, match="no output 'state'"):
        folder.file("state")
    code = ("import sys; sys.modules['torch'] = None  # any import of torch fails\n"
            "from kt.transfer import RunFolder\n"
            "print(RunFolder.outputs('{results}/transfer/{strategy}')['after'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "{results}/transfer/{strategy}/eval_after.h5"  # wildcards kept


def test_every_name_kt_transfer_exports_resolves() -> None:
    for name in kt.transfer.__all__:
        assert getattr(kt.transfer, name) is not None, name
    assert kt.transfer.make_strategy is kt.strategies.make_strategy  # re-exported: docs name it
    assert kt.transfer.TransferSettings is TransferSettings


# ---------------------------------------------------------------------------------------------- plugin strategy


@dataclass
class CrossEntropyOnly(Strategy):
    """A throwaway strategy: plain supervised training, no teacher, no initial student."""

    def __post_init__(self) -> None:
        self.needs_teacher = False

    def loss(self, out: Outputs) -> torch.Tensor:
        assert out.teacher is None and out.initial is None
        return F.cross_entropy(out.student, out.labels)


def test_plugin_strategy_without_teacher(tmp_path: Path, pair) -> None:
    _, student = pair
    registry = plugin_registry("xe_only", CrossEntropyOnly)
    metrics = transfer(None, student, "xe_only", DATASET, tmp_path, replace(SETTINGS, epochs=1), registry=registry)
    assert {p.name for p in tmp_path.iterdir()} == RUN_FILES
    assert metrics["teacher"].to_list() == [None, None] and metrics["strategy"].to_list() == ["xe_only"] * 2
    assert metrics["teacher_share"].to_list() == [None, None]  # no partition: null, never NaN
    trained, initial = weights_of(tmp_path / "student.pth"), weights_of(Path(student.weights))
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)

    # a strategy that needs a teacher refuses to run without one, before loading anything
    with pytest.raises(KtError, match="needs a teacher"):
        transfer(None, student, "kl", DATASET, tmp_path / "kl", SETTINGS)


def test_metrics_and_log_hold_only_real_numbers(tmp_path: Path, pair, caplog: pytest.LogCaptureFixture) -> None:
    """kl sets no partition mask and eval_every 0 skips the middle epoch: those values are null in
    metrics.parquet (never NaN) and absent from the log, which ends with the real accuracies."""
    caplog.set_level("INFO", logger="kt")
    metrics = transfer(*pair, "kl", DATASET, tmp_path, replace(SETTINGS, eval_every=0), registry=Registry())
    saved = pl.read_parquet(tmp_path / "metrics.parquet")
    assert dict(saved.schema) == {**kt.transfer.METRIC_COLUMNS, "strategy": pl.String, "teacher": pl.String,
                                  "student": pl.String}
    assert saved["teacher_share"].to_list() == [None, None, None]
    assert saved["train_loss"][0] is None and all(np.isfinite(saved["train_loss"].to_list()[1:]))
    acc = saved["eval_accuracy"].to_list()
    assert acc[1] is None
    assert acc[0] == pytest.approx(read_logits(tmp_path / "eval_before.h5").accuracy)
    assert acc[2] == pytest.approx(read_logits(tmp_path / "eval_after.h5").accuracy)
    assert not any(saved.select(pl.selectors.float().is_nan().any()).row(0))
    text = caplog.text
    assert "nan" not in text.lower()
    assert "epoch 1: loss" in text and f"eval {acc[2]:.2f} % after transfer ({acc[0]:.2f} % before)" in text
    assert metrics.equals(saved)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"`{column}`" in readme for column in kt.transfer.METRIC_COLUMNS)  # every column documented


# ---------------------------------------------------------------------------------------------- reused eval logits


def test_extracted_student_logits_are_reused_as_the_before_evaluation(tmp_path: Path, pair) -> None:
    teacher, student = pair
    own, other_model = tmp_path / "student.h5", tmp_path / "teacher.h5"
    other_data = tmp_path / "student-100.h5"
    extract(student, DATASET, "eval", own, device="cpu")
    extract(teacher, DATASET, "eval", other_model, device="cpu")
    extract(student, {"name": "fashion_mnist", "subset": {"eval": 100}}, "eval", other_data, device="cpu")

    out = tmp_path / "run"
    metrics = transfer(*pair, "kl", DATASET, out, replace(SETTINGS, epochs=1), before=own)
    reused = read_logits(out / "eval_before.h5")
    assert np.array_equal(reused.logits, read_logits(own).logits)
    assert metrics["eval_accuracy"][0] == pytest.approx(read_logits(own).accuracy)
    # another model's logits, or the student's on other samples, are refused before any training
    with pytest.raises(KtError, match="tiny_teacher"):
        transfer(*pair, "kl", DATASET, tmp_path / "wrong-model", SETTINGS, before=other_model)
    with pytest.raises(KtError, match="the .eval. split were computed on different data"):
        transfer(*pair, "kl", DATASET, tmp_path / "wrong-data", SETTINGS, before=other_data)
    for name in ("wrong-model", "wrong-data"):
        assert not (tmp_path / name / "eval_before.h5").exists()


# ---------------------------------------------------------------------------------------------- same view


def test_every_model_sees_the_same_augmented_view(tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch) -> None:
    views, calls = [], []
    apply, view_for = AugmentPlan.apply, kt.transfer.view_for

    def spy_apply(self, images, positions):
        out = apply(self, images, positions)
        views.append((images.clone(), out.clone()))
        return out

    def spy_view_for(model, images):
        calls.append((len(views), model, model.training, images.clone()))
        return view_for(model, images)

    monkeypatch.setattr(AugmentPlan, "apply", spy_apply)
    patch_view_for(monkeypatch, spy_view_for)
    transfer(*pair, "kl_dp", DATASET, tmp_path, replace(SETTINGS, epochs=1))

    assert len(views) == STEPS_PER_EPOCH and len(calls) == 3 * STEPS_PER_EPOCH
    models = None
    for step in range(STEPS_PER_EPOCH):
        raw, augmented = views[step]
        assert augmented.dtype == torch.uint8 and augmented.shape == (64, 3, 28, 28)
        assert not torch.equal(raw, augmented)  # flip_crop really augmented the batch
        step_calls = [c for c in calls if c[0] == step + 1]
        assert len(step_calls) == 3
        assert all(torch.equal(images, augmented) for *_, images in step_calls)  # one view for all three
        # teacher and initial student (frozen, eval mode) and the student being trained (train mode)
        assert sorted(training for _, _, training, _ in step_calls) == [False, False, True]
        step_models = [m for _, m, _, _ in step_calls]
        assert len({id(m) for m in step_models}) == 3
        models = models or step_models
        assert all(a is b for a, b in zip(models, step_models, strict=True))  # the same three models every step


# ---------------------------------------------------------------------------------------------- resume


class Died(Exception):
    """Stands for the job being killed right after a checkpoint."""


def test_resume_after_a_crash_is_bit_identical(tmp_path: Path, pair, reference, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    save_state = RunFolder.save_state
    saves = []

    def die_after_first_checkpoint(folder, state):
        save_state(folder, state)
        saves.append(state["epoch"])
        raise Died

    with monkeypatch.context() as m:
        m.setattr(RunFolder, "save_state", die_after_first_checkpoint)
        with pytest.raises(Died):
            transfer(*pair, "kl_dp", DATASET, tmp_path, SETTINGS)
    assert saves == [1]
    assert {p.name for p in tmp_path.iterdir()} == {"eval_before.h5", "state.pt"}
    checkpoint = torch.load(tmp_path / "state.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == STEPS_PER_EPOCH

    caplog.set_level(logging.INFO, logger="kt")
    metrics = transfer(*pair, "kl_dp", DATASET, tmp_path, SETTINGS)
    assert any("resuming" in r.getMessage() and "from epoch 1" in r.getMessage() for r in caplog.records)
    assert {p.name for p in tmp_path.iterdir()} == RUN_FILES
    assert metrics["epoch"].to_list() == [0, 1, 2]
    assert metrics.row(1, named=True)["seconds"] == checkpoint["history"][1]["seconds"]  # epoch 1 not rerun

    ref_out, ref_metrics = reference
    assert metrics["train_loss"].to_list()[1:] == ref_metrics["train_loss"].to_list()[1:]
    assert torch.equal(torch.from_numpy(read_logits(tmp_path / "eval_after.h5").logits),
                       torch.from_numpy(read_logits(ref_out / "eval_after.h5").logits))
    assert_same_weights(tmp_path / "student.pth", ref_out / "student.pth")


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path, pair) -> None:
    pair_name = "tiny_teacher -> tiny_student [kl]"
    torch.save({"digest": replace(SETTINGS, lr=0.02).digest(), "pair": pair_name}, tmp_path / "state.pt")
    with pytest.raises(KtError, match="other settings"):
        transfer(*pair, "kl", DATASET, tmp_path, SETTINGS)
    torch.save({"digest": SETTINGS.digest(), "pair": pair_name.replace("[kl]", "[xekl]")}, tmp_path / "state.pt")
    with pytest.raises(KtError, match="other settings"):
        transfer(*pair, "kl", DATASET, tmp_path, SETTINGS)


# ---------------------------------------------------------------------------------------------- non-finite loss


@dataclass
class NanLoss(KL):
    def loss(self, out: Outputs) -> torch.Tensor:
        return super().loss(out) * float("nan")


@dataclass
class NanFromStep6(KL):
    """A plugin bug that shows late: the loss is NaN from its sixth call on (step 6, in epoch 2 here)."""

    def loss(self, out: Outputs) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1
        return super().loss(out) * (float("nan") if self.calls >= 6 else 1.0)


def test_nan_loss_stops_with_a_message_naming_pair_strategy_and_step(tmp_path: Path, pair) -> None:
    registry = plugin_registry("nan_loss", NanLoss)
    with pytest.raises(KtError) as err:
        transfer(*pair, "nan_loss", DATASET, tmp_path, SETTINGS, registry=registry)
    message = str(err.value)
    for part in ("tiny_teacher", "tiny_student", "nan_loss", "step 1", "nan"):
        assert part in message
    # step 1 comes before any optimiser step: the loss itself, not the learning rate
    assert "from strategy 'nan_loss' (plugin 'Plugin-0', registered in code), on the untrained student: " \
           "a bug in the strategy's loss" in message
    assert "learning rate" not in message
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & {"eval_after.h5", "student.pth", "metrics.parquet"}


def test_nan_loss_within_the_first_check_window_points_at_the_strategy(tmp_path: Path, pair) -> None:
    registry = plugin_registry("nan_late", NanFromStep6)
    with pytest.raises(KtError) as err:
        transfer(*pair, "nan_late", DATASET, tmp_path, SETTINGS, registry=registry)
    assert str(err.value) == (
        "non-finite loss (nan) in tiny_teacher -> tiny_student [nan_late] at epoch 2, step 6, from strategy "
        "'nan_late' (plugin 'Plugin-0', registered in code), within the first 50 steps: most likely a bug in "
        "the strategy's loss (e.g. a log of 0, a 0/0 or a mean over no samples on some batch); if the loss is "
        "sound, the learning rate (now 0.01) is far too high.")


def test_diverging_lr_stops_with_a_message(tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the first check window (one step here) a non-finite loss is a divergence: lower the lr."""
    monkeypatch.setattr(kt.transfer.loop, "CHECK_EVERY", 1)
    with pytest.raises(KtError) as err:
        transfer(*pair, "kl", DATASET, tmp_path, replace(SETTINGS, lr=1e30, augment="none"))
    assert re.fullmatch(r"non-finite loss \(\S+\) in tiny_teacher -> tiny_student \[kl\] at epoch 1, step [2-4], "
                        r"from strategy 'kl' \(plugin 'kt\.plugins\.strategies', builtin\): the run diverged; "
                        r"lower the learning rate \(now 1e\+30: transfer\.lr, or the strategy's own lr option\) "
                        r"or check the models' logits\.", str(err.value)), str(err.value)
    assert not {p.name for p in tmp_path.iterdir()} & {"eval_after.h5", "student.pth"}


# ---------------------------------------------------------------------------------------------- frozen-output cache


def test_frozen_output_cache_equals_the_online_loop(tmp_path: Path, pair, reference,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cached = replace(SETTINGS, cache_views=2)
    cache = tmp_path / "cache.h5"
    build_cache(*pair, DATASET, cached, cache)
    with open_h5(cache) as f:
        assert f["teacher"].shape == f["initial"].shape == (2, 256, 10)
        assert f.attrs["views"] == 2 and f.attrs["seed"] == 0

    calls = []
    view_for = kt.transfer.view_for

    def spy(model, images):
        calls.append(model.training)
        return view_for(model, images)

    patch_view_for(monkeypatch, spy)
    out = tmp_path / "run"
    metrics = transfer(*pair, "kl_dp", DATASET, out, cached, cache=cache)
    monkeypatch.undo()
    assert calls == [True] * 2 * STEPS_PER_EPOCH  # only the student runs; the frozen models come from the cache

    ref_out, ref_metrics = reference
    assert metrics["train_loss"].to_list()[1:] == ref_metrics["train_loss"].to_list()[1:]
    assert metrics["teacher_share"].to_list()[1:] == ref_metrics["teacher_share"].to_list()[1:]
    assert torch.equal(torch.from_numpy(read_logits(out / "eval_after.h5").logits),
                       torch.from_numpy(read_logits(ref_out / "eval_after.h5").logits))
    assert_same_weights(out / "student.pth", ref_out / "student.pth")

    # a cache built with other settings, or for another pair, is refused
    for settings, models, what in ((replace(cached, seed=1), pair, "seed"),
                                   (replace(cached, cache_views=3), pair, "views"),
                                   (replace(cached, augment="flip"), pair, "augment"),
                                   (cached, pair[::-1], "teacher")):
        with pytest.raises(KtError, match=f"does not match.*{what}"):
            transfer(*models, "kl_dp", DATASET, tmp_path / f"refused-{what}", settings, cache=cache)

    # un-augmented views are the same for every seed: such a cache serves them all
    plain = replace(cached, augment="none", cache_views=1)
    build_cache(*pair, DATASET, plain, tmp_path / "plain.h5")
    train = load_split(DATASET, "train")
    load_cache(tmp_path / "plain.h5", *pair, train, replace(plain, seed=7)).close()


# ---------------------------------------------------------------------------------------------- learning rate


def test_learning_rate_defaults() -> None:
    assert TransferSettings().learning_rate(KLDP()) == 1e-4 * 128 / 256
    assert TransferSettings(batch_size=64).learning_rate(KL()) == 1e-4 * 64 / 256
    assert TransferSettings(lr=0.01).learning_rate(XEKL()) == 0.01
    assert TransferSettings().learning_rate(XEKLMCL()) == 1e-2 * 128 / 256  # the baseline's own lr wins
    assert TransferSettings(lr=0.5, batch_size=512).learning_rate(XEKLMCL()) == 1e-2 * 512 / 256  # scaled
    assert TransferSettings(lr=0.5).learning_rate(XEKLMCL(lr=3e-2)) == 3e-2  # its option, as configured
    assert TransferSettings().learning_rate(KLDP(lr=3e-3)) == 3e-3


# ---------------------------------------------------------------------------------------------- out of memory


def test_find_batch_size_doubles_until_out_of_memory() -> None:
    tried = []

    def step(size: int) -> None:
        tried.append(size)
        if size > 96:
            raise torch.OutOfMemoryError(f"simulated: {size} images")

    assert find_batch_size(step, 16) == 64 and tried == [16, 32, 64, 128]
    tried.clear()
    assert find_batch_size(step, 256) == 64 and tried == [256, 128, 64, 128]  # halves first, then stops
    assert find_batch_size(lambda size: None, 64, limit=512) == 512
    with pytest.raises(torch.OutOfMemoryError):
        find_batch_size(lambda size: step(size * 1000), 4)


def test_training_backs_off_to_micro_batches_on_out_of_memory(tmp_path: Path, pair, reference, caplog,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A student step over 16 images 'runs out of memory': the run continues in micro-batches of 16
    (64 -> 32 -> 16) and learns what the uninterrupted run learns, up to batch norm's statistics
    being taken over micro-batches."""
    view_for, seen = kt.transfer.view_for, []

    def tight_memory(model, images):
        if model.training:
            seen.append(len(images))
            if len(images) > 16:
                raise torch.OutOfMemoryError("simulated")
        return view_for(model, images)

    patch_view_for(monkeypatch, tight_memory)
    with caplog.at_level("WARNING", logger="kt"):
        metrics = transfer(*pair, "kl_dp", DATASET, tmp_path, SETTINGS)
    assert [r.message.rsplit(" ", 1)[-1] for r in caplog.records if "out of memory" in r.message] == ["32", "16"]
    assert seen[:3] == [64, 32, 16] and set(seen[3:]) == {16}
    ref_out, ref_metrics = reference
    assert metrics["step"].to_list() == ref_metrics["step"].to_list()
    np.testing.assert_allclose(metrics["train_loss"][1:].to_numpy(), ref_metrics["train_loss"][1:].to_numpy(), rtol=0.1)
    assert abs(metrics["eval_accuracy"][-1] - ref_metrics["eval_accuracy"][-1]) <= 3.0


def test_batch_size_probe_leaves_the_student_as_it_was(pair) -> None:
    """The probe behind auto_batch_size (GPU only) trains nothing: weights and batch-norm statistics
    stay, no gradient is left (run here on the CPU, the same code path)."""
    student = create_model(pair[1], [str(c) for c in range(10)]).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    kt.transfer.loop._probe_step([student], [create_model(pair[0], [str(c) for c in range(10)]).eval()], 8,
                                    torch.device("cpu"))
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in student.parameters())
