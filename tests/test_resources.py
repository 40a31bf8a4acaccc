"""Job resources from the models and the data (kt/resources.py, workflow/rules/common.smk): worked
memory and runtime figures, the measured throughput read from a model's eval logits, the values a
dry run asks for, and which rules the cluster profile may retry."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import pytest
import yaml
from test_config import REPO, dry_run

from kt.resources import UNKNOWN_PARAMS, ModelCost, forward_seconds, memory_mb, runtime_min, transfer_seconds

RESNET50 = ModelCost(25_557_032, 1000.0)
VIT_L = ModelCost(304_326_632, 500.0)


def test_memory_follows_parameters_batch_workers_and_the_attempt() -> None:
    # 2000 base + 5 x 97.49 MB (student) + 2 x 1160.96 MB (teacher) + 4 float batches of 128 x 3 x 224^2
    # (294 MB) + 8 x 500 MB (workers) = 9103.4 -> 9500
    assert memory_mb(students=[RESNET50], frozen=[VIT_L], batch=128, workers=8) == 9500
    assert memory_mb(students=[RESNET50], frozen=[VIT_L], batch=128, workers=8, attempt=2) == 18500  # 18206.8
    assert memory_mb(students=[], frozen=[RESNET50], batch=256, workers=0) == 3000  # 2000 + 195.0 + 588


def test_runtime_from_images_passes_and_throughput() -> None:
    # the paper's pair: 128k images x 20 epochs, online: 3/1000 + 1/1000 + 1/500 s an image
    online = transfer_seconds(RESNET50, [VIT_L], train_images=128_000, eval_images=50_000, epochs=20,
                              evaluations=1, cached=False)
    assert online == pytest.approx(128_000 * 20 * 0.006 + 50)  # 15410 s
    cached = transfer_seconds(RESNET50, [VIT_L], train_images=128_000, eval_images=50_000, epochs=20,
                              evaluations=1, cached=True)
    assert cached == pytest.approx(128_000 * 20 * 0.003 + 50)  # 7730 s: the frozen models come from disk
    assert runtime_min(online, safety=2.0) == 519  # ceil(2 x 15410 / 60 + 5)
    assert runtime_min(online, safety=2.0, attempt=2) == 1038
    assert runtime_min(30, safety=2.0) == 10  # never under 10 minutes
    assert forward_seconds([RESNET50, VIT_L], 50_000) == pytest.approx(50 + 100)


def test_model_cost_is_read_from_the_eval_logits(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["params"], f.attrs["images_per_s"] = 1234, 321.5
        f.attrs["preprocessing"] = '{"size": 288, "crop_pct": 1.0}'
    assert ModelCost.read(path, 200.0) == ModelCost(1234, 321.5, 288)
    assert ModelCost.read(tmp_path / "not-extracted-yet.h5", 200.0, 28) == ModelCost(UNKNOWN_PARAMS, 200.0, 28)


def _resources(output: str, rule: str) -> list[dict[str, int]]:
    blocks = re.findall(rf"^rule {rule}:\n(.*?)^\s*$", output + "\n\n", re.M | re.S)
    found = [re.search(r"resources: (.*)", b) for b in blocks]
    return [{k: int(v) for k, v in re.findall(r"(runtime|mem_mb)=(\d+)", m.group(1))} for m in found if m]


def test_a_dry_run_sizes_jobs_from_the_config(tmp_path: Path) -> None:
    """Nothing extracted yet: the stand-ins (100M parameters, 200 images/s) size every job; four
    loader workers add 4 x 500 MB. A transfer with a cache: 6,000 images x 3 epochs x 3 / 200 +
    10,000 / 200 = 320 s -> ceil(2 x 320 / 60 + 5) = 16 min; its memory 2000 + 7 x 381.5 + 4 batches
    of 128 x 3 x 28^2 (4.6) + 4 x 500 = 6675 -> 7000 MB."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["transfer"]["workers"] = 4
    config["results"] = str(tmp_path / "res")
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    target = f"{tmp_path}/res/transfer/kl/resnet_a__vit_p4/student.pth"
    done = dry_run(target, "--configfile", str(tmp_path / "my.yaml"))  # the target first
    assert done.returncode == 0, done.stderr[-3000:]
    assert _resources(done.stdout, "transfer") == [{"runtime": 16, "mem_mb": 7000}]
    # the cache: 6,000 x (1/200 + 1/200) = 60 s -> 10 min; 2000 + 4 x 381.5 + 4.6 + 4 x 500 = 5530 -> 6000 MB
    assert _resources(done.stdout, "cache_frozen") == [{"runtime": 10, "mem_mb": 6000}]


def test_only_resumable_rules_may_be_retried() -> None:
    """The SLURM profile retries failed jobs; every rule that cannot resume declares ``retries: 0``
    and fails at once (the resumable ones resume from their last epoch or cache batch)."""
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["retries"] >= 1
    rules = {}
    for path in (REPO / "workflow/rules").glob("*.smk"):
        for name, body in re.findall(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S):
            rules[name] = "retries: 0" in body
    assert {name for name, pinned in rules.items() if not pinned} == {"cache_frozen", "transfer", "multi_transfer"}
    assert len(rules) >= 10


def test_model_sizes_builds_models_on_the_meta_device() -> None:
    from kt.resources import model_sizes

    sizes = model_sizes({"r50": "timm:resnet50.a1_in1k", "tv": {"id": "torchvision:resnet18/IMAGENET1K_V1"},
                         "vit384": "timm:vit_base_patch16_384.augreg_in21k_ft_in1k"})
    assert sizes == {"r50": {"params": 25_557_032, "size": 224}, "tv": {"params": 11_689_512, "size": 224},
                     "vit384": {"params": 86_859_496, "size": 384}}


def test_pretrained_models_are_sized_before_their_extraction(tmp_path: Path) -> None:
    """A hub model's extraction waits for model_sizes.json and asks for memory from it: 2000 + 2 x
    97.5 MB (ResNet-50) + 4 batches of 256 x 3 x 224^2 (588 MB) = 2783 -> 3000 MB; before the file
    exists, the 100M stand-in: 2000 + 2 x 381.5 + 588 = 3351 -> 3500 MB."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp_path / "res")
    config["models"] = [{"id": "timm:resnet50.a1_in1k", "name": "r50", "num_classes": 10}]
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    target = f"{tmp_path}/res/logits/eval/r50.h5"
    done = dry_run(target, "--configfile", str(tmp_path / "my.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rule model_sizes:" in done.stdout
    assert _resources(done.stdout, "extract") == [{"runtime": 10, "mem_mb": 3500}]
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "model_sizes.json").write_text('{"r50": {"params": 25557032, "size": 224}}')
    done = dry_run(target, "--configfile", str(tmp_path / "my.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rule model_sizes:" not in done.stdout
    assert _resources(done.stdout, "extract") == [{"runtime": 10, "mem_mb": 3000}]
