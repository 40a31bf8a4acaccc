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
    assert memory_mb(students=[RESNET50], frozen=[VIT_L], batch=128, workers=8, cpu=False) == 9500
    assert memory_mb(students=[RESNET50], frozen=[VIT_L], batch=128, workers=8, attempt=2, cpu=False) == 18500
    assert memory_mb(students=[], frozen=[RESNET50], batch=256, workers=0, cpu=False) == 3000  # 2000 + 195.0 + 588


def test_cpu_jobs_add_their_activations() -> None:
    """ResNet-50's activation bytes per image (model_sizes: 6,422,528 for inference, 139,208,608 for
    training) times the measured factors (4 and 1)."""
    r50 = ModelCost(25_557_032, 1000.0, infer_bytes=6_422_528, train_bytes=139_208_608)
    # extraction at 256: 2000 + 2 x 97.49 + 588 (inputs) + 500 (a worker) + 256 x 4 x 6.125 MiB (6272) = 9555
    assert memory_mb(students=[], frozen=[r50], batch=256, workers=1) == 10000
    # transfer, batch 128, evaluations at 256: 2000 + 7 x 97.49 + 588 + 500 + the larger of the training step,
    # 128 x (132.76 + 4 x 6.125 MiB) = 20129, and the evaluation, 256 x 4 x 6.125 = 6272: 23900
    assert memory_mb(students=[r50], frozen=[r50], batch=128, workers=1, eval_batch=256) == 24000
    # not measured: stand-ins scaled to the input side (10 MB and 250 MB an image at 224 px)
    small = ModelCost(1_000_000, 100.0, size=112)
    assert small.activations() == (10e6 / 4, 250e6 / 4)


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
    of 256 x 3 x 28^2 (9.2) + 4 x 500 + activations (device auto: maybe a CPU) from the stand-ins scaled to
    28 px, 250 MB and 10 MB an image / 64: 128 x (3.73 + 4 x 0.149 MiB) = 554, so 7234 -> 7500 MB."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["transfer"]["workers"] = 4
    config["results"] = str(tmp_path / "res")
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    target = f"{tmp_path}/res/transfer/kl/resnet_a__vit_p4/student.pth"
    done = dry_run(target, "--configfile", str(tmp_path / "my.yaml"))  # the target first
    assert done.returncode == 0, done.stderr[-3000:]
    assert _resources(done.stdout, "transfer") == [{"runtime": 16, "mem_mb": 7500}]
    # the cache: 6,000 x (1/200 + 1/200) = 60 s -> 10 min; 2000 + 4 x 381.5 + 9.2 + 4 x 500 + 256 x 4 x 0.149
    # (153) = 5688 -> 6000 MB
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
    assert {name: (s["params"], s["size"]) for name, s in sizes.items()} == {
        "r50": (25_557_032, 224), "tv": (11_689_512, 224), "vit384": (86_859_496, 384)}
    # inference: the largest input + output of a module, float32: the stem's batch norm, 64 x 112 x 112 in
    # and out, in both ResNets; training: every leaf module's output
    assert sizes["r50"]["infer_bytes"] == sizes["tv"]["infer_bytes"] == 4 * 2 * 64 * 112 * 112
    assert sizes["r50"]["train_bytes"] == 139_208_608 and sizes["tv"]["train_bytes"] == 29_910_944
    # ViT-B/16 at 384 px: 577 tokens; the largest module is the MLP's GELU (577 x 3072 in and out)
    assert sizes["vit384"]["infer_bytes"] == 4 * 577 * 3072 * 2


def test_pretrained_models_are_sized_before_their_extraction(tmp_path: Path) -> None:
    """A hub model's extraction waits for model_sizes.json and asks for memory from it (device auto: its
    activations count): 2000 + 2 x 97.5 MB (ResNet-50) + 4 batches of 256 x 3 x 224^2 (588 MB) + 256 x 4 x
    6.125 MiB (6272) = 9055 -> 9500 MB; before the file exists, the stand-ins (100M parameters, 10 MB an
    image): 2000 + 2 x 381.5 + 588 + 256 x 4 x 9.54 (9766) = 13117 -> 13500 MB."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp_path / "res")
    config["models"] = [{"id": "timm:resnet50.a1_in1k", "name": "r50", "num_classes": 10}]
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    target = f"{tmp_path}/res/logits/eval/r50.h5"
    done = dry_run(target, "--configfile", str(tmp_path / "my.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rule model_sizes:" in done.stdout
    assert _resources(done.stdout, "extract") == [{"runtime": 10, "mem_mb": 13500}]
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "model_sizes.json").write_text(
        '{"r50": {"params": 25557032, "size": 224, "infer_bytes": 6422528, "train_bytes": 139208608}}')
    done = dry_run(target, "--configfile", str(tmp_path / "my.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rule model_sizes:" not in done.stdout
    assert _resources(done.stdout, "extract") == [{"runtime": 10, "mem_mb": 9500}]
    config["device"] = "cuda"  # a GPU job: activations stay on the GPU
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    done = dry_run(target, "--configfile", str(tmp_path / "my.yaml"))
    assert _resources(done.stdout, "extract") == [{"runtime": 10, "mem_mb": 3000}]


def test_the_memory_asked_covers_a_measured_cpu_extraction(tmp_path: Path, lite_file) -> None:
    """EfficientNet-Lite0 (ImageNet weights) extracting 128 real-size JPEGs at batch 128 on the CPU with one
    loader worker, run as a workflow job runs it (the kt CLI, kt's allocator): the peak resident memory of
    its process tree stays under what the job asks for (activations from model_sizes), and the ask is not
    wasteful (under 2.5 x the peak)."""
    import json
    import sys

    from measure import peak_rss
    from photos import write_photo_jpegs

    from kt.resources import model_sizes

    write_photo_jpegs(tmp_path, 128, split="val")
    write_photo_jpegs(tmp_path, 4, split="train")
    sized = model_sizes({"lite0": "timm:tf_efficientnet_lite0"})["lite0"]
    asked = memory_mb(students=[], frozen=[ModelCost(sized["params"], 100.0).with_sizes(sized)], batch=128, workers=1)
    spec = json.dumps({"id": "timm:tf_efficientnet_lite0", "weights": str(lite_file("lite0"))})
    cmd = [sys.executable, "-m", "kt", "--threads", "2", "extract", "--model", spec, "--dataset",
           json.dumps({"name": "imagefolder", "root": str(tmp_path)}), "--batch-size", "128", "--workers", "1",
           "--device", "cpu", "--out", str(tmp_path / "lite0.h5")]
    peak, _pss, code = peak_rss(cmd, REPO)
    assert code == 0
    assert peak < asked < 2.5 * peak, (peak, asked)
