"""Logit extraction: the HDF5 layout and attrs, agreement with a plain PyTorch loop, the CLI, atomic
writes on failure, and the out-of-memory batch back-off."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import kt
from kt.artifacts import FORMAT_VERSION, read_logits, row_chunks, top1
from kt.data import load_split
from kt.device import BatchBackoff
from kt.errors import KtError
from kt.extract import extract
from kt.models import Classifier, ModelSource, ModelSpec, create_model
from kt.preprocess import Preprocessing
from kt.registry import Registry

ATTRS = {"logits", "labels", "index"}
REQUIRED_ATTRS = {"model_id", "weights_origin", "preprocessing", "dataset_fingerprint", "accuracy",
                  "images_per_s", "warm_images_per_s", "versions", "created", "format_version"}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, tiny_resnet_spec: ModelSpec, fmnist: dict):
    """One extraction through the Python API (no features): (path, returned attrs)."""
    out = tmp_path_factory.mktemp("extract") / "logits" / "eval" / "tiny.h5"
    attrs = extract(tiny_resnet_spec, fmnist, "eval", out, batch_size=64, device="cpu")
    return out, attrs


@pytest.fixture(scope="module")
def plain_logits(tiny_resnet_spec: ModelSpec, fmnist: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The reference: the same model over the same split in a plain PyTorch loop, normalising by hand."""
    split = load_split(fmnist, "eval")
    model = create_model(tiny_resnet_spec).eval()
    mean = torch.tensor(model.preprocess.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1) * 255
    images = split.images.expand(-1, 3, -1, -1)  # grey -> RGB, already 28x28: no resize
    assert images.shape == (200, 3, 28, 28) and images.dtype == torch.uint8
    outs = []
    with torch.no_grad():
        for start in range(0, len(images), 50):
            outs.append(model((images[start:start + 50].float() - mean) / std))
    return torch.cat(outs), split.labels


def test_extract_writes_the_documented_layout(extracted, fmnist: dict, tiny_resnet_spec: ModelSpec) -> None:
    out, attrs = extracted
    split = load_split(fmnist, "eval")
    assert len(split) == 200
    with h5py.File(out, "r") as f:
        assert set(f) == ATTRS  # no features unless asked
        logits, labels, index = f["logits"], f["labels"], f["index"]
        assert logits.shape == (200, 10) and logits.dtype == np.float32
        assert labels.shape == (200,) and labels.dtype == np.int64
        assert index.shape == (200,)
        # chunks hold whole rows
        assert logits.chunks[1:] == logits.shape[1:]
        assert logits.chunks == row_chunks(logits.shape, 4)
        assert np.array_equal(labels[:], split.labels)
        assert np.array_equal(index[:], split.ids)
        raw = dict(f.attrs)
    assert REQUIRED_ATTRS <= set(raw)
    assert raw["model_id"] == "timm:resnet18"
    assert raw["model"] == "tiny_resnet18"
    assert raw["weights_origin"] == f"file:{Path(tiny_resnet_spec.weights).resolve()}"
    assert json.loads(raw["preprocessing"]) == {"size": 28, "mean": [0.485, 0.456, 0.406],
                                                "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
                                                "crop_pct": 1.0, "crop_mode": "center"}
    assert raw["dataset_fingerprint"] == split.fingerprint()
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["num_samples"] == 200 and raw["split"] == "eval" and raw["device"] == "cpu"
    assert json.loads(raw["classes"])[0] == "T-shirt/top"
    assert json.loads(raw["dataset"]) == fmnist
    assert raw["images_per_s"] > 0
    versions = json.loads(raw["versions"])
    assert versions["torch"] == torch.__version__ and versions["kt"] == kt.__version__
    assert datetime.fromisoformat(raw["created"]).tzinfo is not None
    # the returned attrs are what was written
    assert attrs["accuracy"] == pytest.approx(float(raw["accuracy"]), abs=0)
    assert attrs["dataset_fingerprint"] == raw["dataset_fingerprint"]
    assert _leftovers(out.parent) == []


def test_extract_accuracy_matches_logits_and_a_plain_loop(extracted, plain_logits) -> None:
    out, attrs = extracted
    reference, labels = plain_logits
    data = read_logits(out)
    assert data.attrs["model_id"] == "timm:resnet18"
    assert np.array_equal(data.labels, labels)
    # the stored logits are the model's logits
    assert np.allclose(data.logits, reference.numpy(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(data.predictions, reference.argmax(1).numpy())
    assert np.abs(data.logits).max() > 1e-2  # not a degenerate all-zero output
    # attrs accuracy == top-1 recomputed from the file == top-1 of the plain loop
    plain_top1 = float((reference.argmax(1).numpy() == labels).mean() * 100)
    recomputed = float((data.logits.argmax(1) == data.labels).mean() * 100)
    assert data.attrs["accuracy"] == pytest.approx(recomputed, abs=1e-9)
    assert recomputed == pytest.approx(plain_top1, abs=1e-9)
    assert data.accuracy == pytest.approx(plain_top1, abs=1e-9)
    assert data.attrs["accuracy"] == data.accuracy == top1(data.logits, data.labels)  # one definition, same bits
    assert top1(data.predictions, data.labels) == data.accuracy  # predicted classes or logits alike
    # 200 samples: accuracy is a multiple of 0.5 %
    assert (data.attrs["accuracy"] * 2) == pytest.approx(round(data.attrs["accuracy"] * 2), abs=1e-9)


def test_extract_cli_with_features_and_inspect(tmp_path: Path, extracted, tiny_resnet_spec: ModelSpec,
                                               fmnist: dict, kt_cli) -> None:
    out = tmp_path / "cli" / "tiny.h5"
    result = kt_cli("--threads", "2", "extract", "--model", json.dumps(tiny_resnet_spec.to_dict()),
                    "--dataset", json.dumps(fmnist), "--split", "eval", "--out", str(out), "--features",
                    "--device", "cpu", "--batch-size", "64")
    assert result.returncode == 0, result.stderr
    assert "top-1" in result.stderr  # the summary log line
    assert _leftovers(out.parent) == []

    data = read_logits(out, features=True)
    api = read_logits(extracted[0])
    assert np.allclose(data.logits, api.logits, rtol=1e-6, atol=1e-6)
    assert data.attrs["dataset_fingerprint"] == api.attrs["dataset_fingerprint"]
    assert data.attrs["accuracy"] == api.attrs["accuracy"]
    assert data.features.shape == (200, 128) and data.features.dtype == np.float32
    # features are the pooled input of the fc layer: fc(features) reproduces the logits
    model = create_model(tiny_resnet_spec)
    with torch.no_grad():
        again = model.body.fc(torch.from_numpy(data.features)).numpy()
    assert np.allclose(again, data.logits, atol=1e-5)
    assert (data.features >= 0).all()  # after ReLU and average pooling
    with h5py.File(out, "r") as f:
        assert set(f) == ATTRS | {"features"}
        assert f["features"].chunks[1:] == (128,)

    shown = kt_cli("inspect", "--json", str(out))
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["file"] == str(out)
    assert info["top1_recomputed"] == round(data.accuracy, 4)
    assert info["datasets"]["logits"] == {"shape": [200, 10], "dtype": "float32", "chunks": [200, 10]}
    assert info["datasets"]["features"]["shape"] == [200, 128]
    assert info["attrs"]["model_id"] == "timm:resnet18"
    assert info["attrs"]["preprocessing"]["size"] == 28


def test_class_count_mismatch_leaves_no_file(tmp_path: Path, tiny_resnet_spec: ModelSpec, fmnist: dict,
                                             kt_cli) -> None:
    spec = ModelSpec(id="timm:resnet18", num_classes=5, args=tiny_resnet_spec.args,
                     preprocess=tiny_resnet_spec.preprocess, pretrained=False)
    out = tmp_path / "bad" / "five.h5"
    with pytest.raises(KtError, match="predicts 5 classes but the dataset has 10"):
        extract(spec, fmnist, "eval", out, device="cpu")
    assert not out.exists()

    result = kt_cli("extract", "--model", json.dumps(spec.to_dict()), "--dataset", json.dumps(fmnist),
                    "--out", str(out), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.startswith("kt: error: model 'timm__resnet18' predicts 5 classes but the dataset "
                                    "has 10. Give the dataset the model's label space (dataset.classes_file"), \
        result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not out.parent.exists() or _leftovers(out.parent) == []


def test_cli_errors_for_bad_input(tmp_path: Path, kt_cli) -> None:
    result = kt_cli("inspect", str(tmp_path / "missing.h5"))
    assert result.returncode == 2
    assert result.stderr.startswith("kt: error: ") and "does not exist" in result.stderr
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    result = kt_cli("inspect", str(junk))
    assert result.returncode == 2
    assert result.stderr.startswith("kt: error: ") and "not a readable HDF5 file" in result.stderr


# ------------------------------------------------- a failure in the middle of writing: no artifact


class Flaky(nn.Module):
    """Linear classifier on 8x8 RGB images that raises a KtError on its ``fail_on``-th call."""

    def __init__(self, fail_on: int | None) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 3)
        self.calls = 0
        self.fail_on = fail_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise KtError("simulated failure in batch 2")
        return self.fc(x.flatten(1))


class FlakySource(ModelSource):
    def known_models(self) -> list[str]:
        return ["ok", "fails"]

    def create(self, spec: ModelSpec, classes: list[str] | None) -> Classifier:
        torch.manual_seed(0)
        body = Flaky(2 if spec.arch == "fails" else None)
        return Classifier(body, body.fc, Preprocessing(size=8, mean=(0.5,) * 3, std=(0.25,) * 3), 3, spec,
                          "test", classes)


class FlakyPlugin:
    @kt.hookimpl
    def register_model_sources(self, register):
        register("flaky", FlakySource())


@pytest.fixture
def flaky_registry(tiny_dataset_plugin) -> Registry:
    return Registry(extra_plugins=(tiny_dataset_plugin, FlakyPlugin()))


def test_failure_mid_extraction_leaves_neither_file_nor_temp_file(tmp_path: Path,
                                                                  flaky_registry: Registry) -> None:
    out = tmp_path / "flaky.h5"
    with pytest.raises(KtError, match="simulated failure in batch 2"):
        extract(ModelSpec(id="flaky:fails"), {"name": "tiny"}, "eval", out, batch_size=5, device="cpu",
                registry=flaky_registry)
    assert list(tmp_path.iterdir()) == []

    # an earlier good file is not clobbered by a failed rerun
    extract(ModelSpec(id="flaky:ok"), {"name": "tiny"}, "eval", out, batch_size=5, device="cpu",
            registry=flaky_registry)
    before = out.read_bytes()
    with pytest.raises(KtError):
        extract(ModelSpec(id="flaky:fails"), {"name": "tiny"}, "eval", out, batch_size=5, device="cpu",
                registry=flaky_registry)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["flaky.h5"]


def test_string_ids_and_features_through_a_plugin_dataset(tmp_path: Path, flaky_registry: Registry) -> None:
    out = tmp_path / "ok.h5"
    attrs = extract(ModelSpec(id="flaky:ok"), {"name": "tiny"}, "eval", out, batch_size=5, device="cpu",
                    features=True, registry=flaky_registry)
    split = load_split({"name": "tiny"}, "eval", registry=flaky_registry)
    data = read_logits(out, features=True)
    assert data.index.tolist() == [f"eval-{i}" for i in range(12)]
    assert data.labels.tolist() == split.labels.tolist()
    assert data.features.shape == (12, 192)
    # recompute by hand: features are the normalised, flattened images; logits the linear layer on them
    model = create_model(ModelSpec(id="flaky:ok"), registry=flaky_registry)
    x = (split.images.float() - 0.5 * 255) / (0.25 * 255)
    with torch.no_grad():
        expected = model(x)
    assert np.allclose(data.features, x.flatten(1).numpy(), atol=1e-6)
    assert np.allclose(data.logits, expected.numpy(), atol=1e-5)
    top1 = float((expected.argmax(1).numpy() == split.labels).mean() * 100)
    assert attrs["accuracy"] == pytest.approx(top1)
    assert attrs["batch_size"] == 5 and attrs["weights_origin"] == "test"


# ------------------------------------------------------------------------------- BatchBackoff


def test_batch_backoff_halves_on_oom_and_remembers_the_size() -> None:
    calls: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x * 2 + 1

    backoff = BatchBackoff(16)
    x = torch.arange(10, dtype=torch.float32).view(10, 1)
    parts = backoff(fn, x)
    assert backoff.size == 2  # 16 -> 8 -> 4 -> 2
    assert [len(p) for p in parts] == [2, 2, 2, 2, 2]
    assert torch.equal(torch.cat(parts), x * 2 + 1)
    assert calls == [10, 8, 4, 2, 2, 2, 2, 2]

    # the size that fitted is kept for the next batch: no more failures
    calls.clear()
    y = torch.arange(7, dtype=torch.float32).view(7, 1)
    assert torch.equal(torch.cat(backoff(fn, y)), y * 2 + 1)
    assert calls == [2, 2, 2, 1]


def test_batch_backoff_gives_up_at_size_one() -> None:
    def always_oom(x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("simulated")

    backoff = BatchBackoff(4)
    with pytest.raises(torch.OutOfMemoryError):
        backoff(always_oom, torch.zeros(5, 1))
    assert backoff.size == 1

    def other_error(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("not a memory problem")

    backoff = BatchBackoff(4)
    with pytest.raises(ValueError):
        backoff(other_error, torch.zeros(5, 1))
    assert backoff.size == 4


def test_batch_backoff_over_slices_undoes_the_failed_parts_and_redoes_them_all(
        caplog: pytest.LogCaptureFixture) -> None:
    """The training step's use: parts given as slices of the batch; on out-of-memory in a later part the
    reset undoes what the earlier parts did (their gradients), then every part is redone at half the size."""
    backoff, calls, resets = BatchBackoff(4, "t -> s [kl]"), [], []

    def part(rows: slice) -> list[int]:
        ids = list(range(10))[rows]
        calls.append(ids)
        if len(ids) > 2 and ids[0] > 0:  # the second part of 4 does not fit
            raise torch.OutOfMemoryError("simulated")
        return ids

    with caplog.at_level("WARNING", logger="kt"):
        parts = backoff.over(10, part, lambda: resets.append(len(calls)))
    assert parts == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]] and backoff.size == 2
    assert calls[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]] and resets == [2]  # reset once, right after the failure
    assert [r.getMessage() for r in caplog.records] == ["t -> s [kl]: out of memory: retrying with batch size 2"]


def test_float16_storage_rounds_the_float32_logits_and_reads_back_as_float32(tmp_path: Path, extracted,
                                                                             tiny_resnet_spec: ModelSpec,
                                                                             fmnist: dict) -> None:
    out = tmp_path / "half.h5"
    attrs = extract(tiny_resnet_spec, fmnist, "eval", out, batch_size=64, device="cpu", features=True,
                    dtype="float16")
    assert attrs["dtype"] == "float16" and attrs["workers"] == 0  # auto: in-memory data needs no workers
    with h5py.File(out) as f, h5py.File(extracted[0]) as g:
        assert f["logits"].dtype == np.float16 and f["features"].dtype == np.float16
        assert 2 * f["logits"].id.get_storage_size() == g["logits"].id.get_storage_size()  # half the bytes
    half, full = read_logits(out, features=True), read_logits(extracted[0])
    assert half.logits.dtype == np.float32 and half.features.dtype == np.float32
    np.testing.assert_array_equal(half.logits, full.logits.astype(np.float16).astype(np.float32))


def test_throughput_warm_rate_skips_the_first_two_batches() -> None:
    """Five batches of 10 (the last yield comes with no forward pass of its own) and the closing call:
    the first yield took 3 s (two forward passes, one of them cold), each later forward 0.5 s."""
    from kt.extract import Throughput

    clock = Throughput()
    for seconds, images in [(3.0, 10), (0.5, 10), (0.5, 10), (0.5, 10), (0.0, 10), (0.0, 0)]:
        clock.add(seconds, images)
    assert clock.rate() == pytest.approx(50 / 4.5)
    assert clock.warm_rate() == pytest.approx(30 / 1.5)  # batches 3-5
    short = Throughput()
    for seconds, images in [(2.0, 10), (0.0, 10), (0.0, 0)]:
        short.add(seconds, images)
    assert short.warm_rate() == short.rate() == 10


def test_auto_workers_use_the_jobs_cpus_for_image_files_on_a_gpu_only(monkeypatch: pytest.MonkeyPatch,
                                                                      fmnist: dict) -> None:
    from kt.extract import loader_workers

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    split = load_split(fmnist, "eval")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)  # kt --threads 6: the rule's threads
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert loader_workers("auto", split, gpu) == 0 and loader_workers(3, split, gpu) == 3
    monkeypatch.setattr(type(split), "decodes", True)
    assert loader_workers("auto", split, gpu) == 5
    assert loader_workers("auto", split, cpu) == 0 and loader_workers(2, split, cpu) == 2  # the model has the cores
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})  # SLURM gave the job 2 CPUs
    assert loader_workers("auto", split, gpu) == 1
