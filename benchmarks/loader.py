"""Benchmark: the transfer data path on an ImageNet-style JPEG folder at 224 px.

It makes its own folder (``--images`` JPEGs of ~430x360 px, ImageNet's typical size, smooth random
content so that they compress like photos, 10 classes) and measures, in one run:

(a) **decode paths**, per image on one core: PIL decode + resize to 256 and centre crop 224 (the
    baseline, what a plain torchvision ImageFolder pipeline does), PIL with ``draft`` (JPEG DCT
    scaling to the smallest scale still >= 256 px), ``torchvision.io.decode_jpeg`` (libjpeg-turbo,
    no DCT scaling) and ``kt.data.decode`` (draft where it can halve the image, else
    torchvision), each followed by the same antialiased resize; ``--large`` adds a run on
    1600x1200 JPEGs, where DCT scaling pays;
(b) **kt's Loader** (``kt.data.Loader``, what transfer, evaluation and cache building use): images/s
    delivered at 224 px with W = 0, 1, 2 workers, eval-style (``none``) and ``rrc_flip``, printed as
    ratios against the single-process baseline of (a);
(c) **peak RSS of a transfer epoch** (tiny timm ResNets at 224 px, ``kl_dp``, online, workers 0) at
    N and 4N images, each in a fresh process: memory must stay flat, O(batch) not O(N).

Usage::

    .venv/bin/python benchmarks/loader.py                 # ~3 minutes on 2 idle cores
    .venv/bin/python benchmarks/loader.py --images 256 --rss-images 64 --skip-rss
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine  # benchmarks/machine.py: scripts run with benchmarks/ on sys.path
from PIL import Image

from kt.data import Loader, decode, load_split
from kt.preprocess import Preprocessing, resize_uint8

PREP = Preprocessing(size=224, crop_pct=0.875)  # timm's eval default: resize 256, centre crop 224
TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16, "stem_type": "deep"}


def make_folder(root: Path, n: int, classes: int = 10, seed: int = 0, scale: float = 1.0) -> dict:
    """``root/{train,val}/nXXXXXXXX/*.JPEG``: smooth random photo-like images, ~430x360 px x ``scale``."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i in range(n if split == "train" else max(classes, n // 10)):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(330, 390) * scale), int(rng.integers(400, 460) * scale)
            small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            noise = rng.normal(0, 12, (h, w, 3))
            pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:06d}.JPEG", quality=90)
    return {"name": "imagefolder", "root": str(root)}


def decode_torchvision(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)


def decode_pil(path: Path, short_side: int | None = None) -> torch.Tensor:
    with Image.open(path) as image:
        if short_side:
            image.draft("RGB", (short_side, short_side))
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def decode_paths(paths: list[Path], repeats: int) -> float:
    """Print (a) for ``paths``; return the baseline's ms per image."""
    short = round(PREP.size / PREP.crop_pct)
    base = per_image_ms(paths, decode_pil, repeats)
    decoders = {"PIL (baseline)": decode_pil, "PIL + draft": lambda p: decode_pil(p, short),
                "torchvision.io.decode_jpeg": decode_torchvision, "kt.data.decode": lambda p: decode(p, short)}
    for name, decoder in decoders.items():
        ms = base if decoder is decode_pil else per_image_ms(paths, decoder, repeats)
        print(f"    {name:28s} {ms:6.2f} ms  {1e3 / ms:7.0f} img/s  x{base / ms:.2f} vs baseline")
    return base


def per_image_ms(paths: list[Path], decoder, repeats: int) -> float:
    """Best-of-``repeats`` mean ms per image: decode + resize/crop to 224 px, one process."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for path in paths:
            resize_uint8(decoder(path), PREP.size, PREP.crop_pct, PREP.interpolation)
        best = min(best, (time.perf_counter() - t0) / len(paths) * 1e3)
    return best


def loader_rate(dataset: dict, workers: int, augment: str, batch: int, repeats: int) -> float:
    """Images/s one Loader pass delivers (best of ``repeats`` passes; the workers start once)."""
    train = load_split(dataset, "train")
    loader = Loader(train, PREP, batch, workers, augment)
    best = 0.0
    for r in range(repeats + 1):  # the first pass starts the workers: not counted
        t0 = time.perf_counter()
        n = sum(len(pos) for _, _, pos in loader.batches(None, seed=r))
        if r:
            best = max(best, n / (time.perf_counter() - t0))
    return best


RSS_CHILD = """
import json, resource, sys
from kt.models import ModelSpec
from kt.transfer import TransferSettings, transfer
dataset, n, out, args = json.loads(sys.argv[1])
spec = lambda name: ModelSpec(id="timm:resnet18", args=args, pretrained=False, name=name, num_classes=10,
                              preprocess={"size": 224, "crop_pct": 0.875})
dataset = dataset | {"subset": {"train": n, "eval": 10}}
transfer(spec("teacher"), spec("student"), "kl_dp", dataset, out,
         TransferSettings(epochs=1, batch_size=32, lr=0.01, device="cpu", augment="rrc_flip", eval_every=0))
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def transfer_rss(dataset: dict, n: int, folder: Path) -> float:
    """Peak RSS (MB) of a fresh process running one transfer epoch on ``n`` images."""
    args = json.dumps([dataset, n, str(folder / f"run{n}"), TINY_RESNET])
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    if done.returncode:
        raise SystemExit(f"transfer child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["maxrss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512, help="train JPEGs for (a) and (b)")
    ap.add_argument("--rss-images", type=int, default=200, help="N of (c); 4N is also run")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--large", action="store_true", help="also (a) on 1600x1200 JPEGs (64 of them)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_folder(Path(tmp) / "jpegs", max(args.images, 4 * args.rss_images))
        train = load_split(dataset, "train")
        paths = [train.root / str(i) for i in train.ids[: args.images]]
        megapixels = statistics.mean(Image.open(p).size[0] * Image.open(p).size[1] for p in paths[:50]) / 1e6
        print(f"(a) {len(paths)} JPEGs, {megapixels:.3f} MP on average; ms per image, decode + resize 256 + crop 224:")
        base = decode_paths(paths, args.repeats)
        if args.large:
            large = make_folder(Path(tmp) / "large", 64, scale=3.7)
            print("    the same on 64 JPEGs of ~1600x1200 px:")
            decode_paths(sorted(Path(large["root"], "train").rglob("*.JPEG")), args.repeats)
        print(f"(b) kt Loader, batch {args.batch}, images/s at 224 px (ratio vs single-process PIL baseline "
              f"{1e3 / base:.0f} img/s):")
        subset = dataset | {"subset": {"train": args.images}}
        for augment in ("none", "rrc_flip"):
            for workers in (0, 1, 2):
                rate = loader_rate(subset, workers, augment, args.batch, args.repeats)
                print(f"    {augment:9s} W={workers}  {rate:7.0f} img/s  x{rate * base / 1e3:.2f}")
        if not args.skip_rss:
            n = args.rss_images
            rss = {k: transfer_rss(dataset, k, Path(tmp)) for k in (n, 4 * n)}
            print(f"(c) peak RSS of a transfer epoch (kl_dp, rrc_flip, 224 px, batch 32): {n} images "
                  f"{rss[n]:.0f} MB, {4 * n} images {rss[4 * n]:.0f} MB: x{rss[4 * n] / rss[n]:.3f} "
                  f"(O(N) would add {3 * n * 3 * 224 * 224 / 2**20:.0f} MB of uint8 images alone)")


if __name__ == "__main__":
    main()
