"""The data path at image-folder scale (issue: paper scale, part 1), on a tiny JPEG folder.

Checked: a sample's augmented view depends on the pass seed and its position only (never on the
number of workers, batch size or order); RandomResizedCrop boxes stay inside the image with timm's
scale/ratio; a 2-epoch kl_dp transfer gives bit-identical weights with 0 and 2 loader workers; the
frozen-output cache streams per batch, stores float16 on request, refuses a build the disk cannot
hold, and resumes after SIGKILL to the same file an uninterrupted build writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RESNET_ARGS
from PIL import Image

import kt.transfer
import kt.transfer.cache
from kt.artifacts import open_h5, read_logits
from kt.augment import RRC_RATIO, RRC_SCALE, SampleAugment, rrc_box
from kt.data import Loader, load_split
from kt.errors import KtError
from kt.models import ModelSpec, create_model
from kt.preprocess import Preprocessing
from kt.transfer import TransferSettings, build_cache, transfer

PREP = {"size": 32, "crop_pct": 0.875}
SETTINGS = TransferSettings(epochs=2, batch_size=8, lr=0.01, device="cpu", augment="rrc_flip", eval_batch_size=16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An ImageNet-style folder: 3 classes, 12 train and 4 val JPEGs each, sizes 40-70 px (random noise
    over a class colour, so that classes differ)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
            (root / split / f"n0{c}").mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(40, 71, 2)
                pixels = np.clip(rng.normal(colour, 60, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"n0{c}" / f"{i}.jpg", quality=90)
    return {"name": "imagefolder", "root": str(root)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, ModelSpec]:
    """(teacher, student): tiny timm ResNets at 32 px, seeded random weights in files."""
    folder = tmp_path_factory.mktemp("weights")
    specs = []
    for role, seed in (("teacher", 1), ("student", 2)):
        torch.manual_seed(seed)
        model = create_model(ModelSpec(id="timm:resnet18", num_classes=3, args=TINY_RESNET_ARGS, preprocess=PREP,
                                       pretrained=False))
        torch.save(model.body.state_dict(), folder / f"{role}.pth")
        specs.append(ModelSpec(id="timm:resnet18", weights=str(folder / f"{role}.pth"), num_classes=3,
                               args=TINY_RESNET_ARGS, preprocess=PREP, name=f"jpeg_{role}"))
    return specs[0], specs[1]


def views(loader: Loader, positions: np.ndarray, seed: int) -> dict[int, torch.Tensor]:
    batches = loader.batches(positions, seed)
    return {int(p): image for images, _, pos in batches for p, image in zip(pos, images, strict=True)}


@pytest.mark.parametrize("augment", ["none", "rrc_flip", "paper", "flip_crop"])
def test_a_view_depends_on_pass_seed_and_position_only(folder: dict, augment: str) -> None:
    train = load_split(folder, "train")
    prep = Preprocessing(**PREP)
    order = np.random.default_rng(1).permutation(len(train))
    serial = views(Loader(train, prep, 8, 0, augment), order, seed=5)
    parallel = Loader(train, prep, 5, 2, augment)  # other batch size, other order, workers
    assert all(image.shape == (3, 32, 32) and image.dtype == torch.uint8 for image in serial.values())
    for _ in range(2):  # persistent workers: a second pass is the same pass again
        again = views(parallel, np.arange(len(train)), seed=5)
        assert all(torch.equal(serial[p], again[p]) for p in range(len(train)))
    other = views(parallel, np.arange(len(train)), seed=6)
    changed = sum(not torch.equal(serial[p], other[p]) for p in range(len(train)))
    assert changed == 0 if augment == "none" else changed > len(train) // 2


def test_random_resized_crop_boxes_follow_timm_defaults() -> None:
    for seed in range(300):
        rng = np.random.default_rng(seed)
        top, left, h, w = rrc_box(60, 90, rng)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90
        assert RRC_SCALE[0] * 5400 * 0.9 <= h * w <= 5400
        # rounding aside, the aspect ratio stays in range (or the fallback keeps the whole image)
        assert RRC_RATIO[0] * 0.9 <= w / h <= RRC_RATIO[1] * 1.1 or (h, w) == (60, 80)
    image = torch.arange(3 * 50 * 70, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 50, 70)
    prep = Preprocessing(size=24)
    a, b = SampleAugment("rrc_flip", 3)(image, 17, prep), SampleAugment("rrc_flip", 3)(image, 17, prep)
    assert a.shape == (3, 24, 24) and torch.equal(a, b)
    gray = [SampleAugment("paper", s)(image, 0, prep) for s in range(200)]
    share = np.mean([bool(torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])) for g in gray])
    assert 0.1 < share < 0.3  # grayscale with p 0.2


def test_transfer_weights_do_not_depend_on_workers(tmp_path: Path, folder: dict, pair) -> None:
    metrics = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        metrics[workers] = transfer(*pair, "kl_dp", folder, out, replace(SETTINGS, workers=workers))
        assert json.loads((out / "config.json").read_text())["settings"]["workers"] == workers
    a = torch.load(tmp_path / "w0/student.pth")
    b = torch.load(tmp_path / "w2/student.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics[0]["train_loss"].to_list() == metrics[2]["train_loss"].to_list()
    assert metrics[0]["train_loss"][2] is not None and metrics[0]["step"][2] == 2 * 5  # ceil(36 / 8) steps an epoch
    assert np.array_equal(read_logits(tmp_path / "w0/eval_after.h5").logits,
                          read_logits(tmp_path / "w2/eval_after.h5").logits)


def test_cache_float16_streamed_and_equal_to_online(tmp_path: Path, folder: dict, pair,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    settings = replace(SETTINGS, augment="none", cache_views=1, epochs=1, batch_size=6, eval_batch_size=6)
    online = transfer(*pair, "kl_dp", folder, tmp_path / "online", settings)
    half = replace(settings, cache_dtype="float16")
    build_cache(*pair, folder, half, tmp_path / "half.h5")
    with open_h5(tmp_path / "half.h5") as f:
        assert f["teacher"].dtype == np.float16 and f["teacher"].shape == (1, 36, 3)
        assert f.attrs["dtype"] == "float16"
    assert not (tmp_path / "half.h5.partial").exists()
    # the full-precision cache reproduces the online run exactly, read batch by batch
    full = tmp_path / "full.h5"
    build_cache(*pair, folder, settings, full)
    reads = []
    read = kt.transfer.FrozenCache.read
    monkeypatch.setattr(kt.transfer.FrozenCache, "read", lambda self, *a: reads.append(len(a[2])) or read(self, *a))
    cached = transfer(*pair, "kl_dp", folder, tmp_path / "cached", settings, cache=full)
    assert reads == [6] * 12  # both frozen models, batch by batch
    # equal up to rounding: a CPU convolution rounds a sample differently in another batch (the cache
    # builds in file order, the transfer in a shuffled one; ~1e-8 here)
    np.testing.assert_allclose(cached["train_loss"][1], online["train_loss"][1], rtol=1e-5)
    np.testing.assert_allclose(read_logits(tmp_path / "cached/eval_after.h5").logits,
                               read_logits(tmp_path / "online/eval_after.h5").logits, atol=1e-4)
    with open_h5(full) as f32, open_h5(tmp_path / "half.h5") as f16:
        np.testing.assert_allclose(f16["teacher"][:].astype(np.float32), f32["teacher"][:], rtol=1e-3, atol=1e-3)
    with pytest.raises(KtError, match="does not match.*dtype"):
        transfer(*pair, "kl_dp", folder, tmp_path / "refused", half, cache=full)


def test_cache_refuses_a_build_the_disk_cannot_hold(tmp_path: Path, folder: dict, pair,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    free = type("Usage", (), {"free": 1000})
    monkeypatch.setattr(kt.transfer.cache.shutil, "disk_usage", lambda path: free)
    with pytest.raises(KtError, match=r"needs 0\.0 GB \(20 views x 36 images x 3 classes.*cache_dtype: float16"):
        build_cache(*pair, folder, replace(SETTINGS, cache_views=20), tmp_path / "cache.h5")
    assert list(tmp_path.iterdir()) == []


BUILD = """
import json, sys
from kt.models import ModelSpec
from kt.transfer import TransferSettings, build_cache
teacher, student, dataset, settings, out = json.loads(sys.argv[1])
build_cache(ModelSpec(**teacher), ModelSpec(**student), dataset, TransferSettings(**settings), out)
"""


def test_cache_build_resumes_after_sigkill(tmp_path: Path, folder: dict, pair, caplog) -> None:
    settings = replace(SETTINGS, cache_views=40, eval_batch_size=4)  # 9 batches a view: flushed per view
    killed, progress = tmp_path / "killed.h5", tmp_path / "killed.h5.partial/progress.json"
    args = json.dumps([pair[0].to_dict(), pair[1].to_dict(), folder, vars(settings), str(killed)])
    proc = subprocess.Popen([sys.executable, "-c", BUILD, args], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())
    assert proc.returncode == -signal.SIGKILL and not killed.exists()
    assert 1 <= done["view"] < settings.cache_views, done

    with caplog.at_level("INFO", logger="kt"):
        build_cache(*pair, folder, settings, killed)
    assert any("resuming the cache build" in r.message for r in caplog.records)
    fresh = tmp_path / "fresh.h5"
    build_cache(*pair, folder, settings, fresh)
    with open_h5(killed) as a, open_h5(fresh) as b:
        for name in ("teacher", "initial"):
            assert np.array_equal(a[name][:], b[name][:]), name
        assert dict(a.attrs) == dict(b.attrs)
    assert not progress.parent.exists()


def test_prefetched_keeps_order_and_raises_the_threads_error_in_the_caller() -> None:
    """With no loader workers the next batch is made in a background thread (kt.data.loader.prefetched):
    the items come in order, and an error raised while making one reaches the caller at that item."""
    from kt.data.loader import prefetched

    assert list(prefetched(iter(range(5)))) == [0, 1, 2, 3, 4]

    def broken():
        yield 1
        raise OSError("image file is truncated")

    items = prefetched(broken())
    assert next(items) == 1
    with pytest.raises(OSError, match="truncated"):
        next(items)
