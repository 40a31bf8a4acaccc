"""Seeded augmentations: every model of a transfer sees the very same augmented view.

Each pass over a split has a seed (``seed * 1000 + epoch`` or ``+ view``); a sample's view depends
on that seed and its position alone, never on batch size, order or the number of loader workers.
So (a) teachers, the initial student and the student share one view, (b) a resumed run replays the
same views, and (c) frozen models' logits can be cached per view (``transfer.cache_views``).

Two kinds:

* batch kinds (``none``, ``flip``, ``crop``, ``flip_crop``) for small images already at the
  model's size: a flip and a ±2 px pad-crop shift per sample (:class:`AugmentPlan`), applied to the
  uint8 batch on whatever device it is on;
* sample kinds, applied where an image is decoded (in the loader's workers), to the full image:
  ``rrc_flip`` (RandomResizedCrop + flip with timm's defaults: scale 0.08-1, ratio 3/4-4/3) and
  ``paper`` (the paper code's eval-style centre crop + flip, colour jitter with p 0.8 and grayscale
  with p 0.2) (:class:`SampleAugment`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from kt.preprocess import Preprocessing, resize_uint8

BATCH_KINDS = ("none", "flip", "crop", "flip_crop")
SAMPLE_KINDS = ("rrc_flip", "paper")
AUGMENTATIONS = BATCH_KINDS + SAMPLE_KINDS
FLIPPING = ("flip", "flip_crop", "rrc_flip", "paper")  # refused where a flip changes the label

RRC_SCALE = (0.08, 1.0)  # timm's (and torchvision's) RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}  # colour jitter, p 0.8
JITTER_P, GRAY_P = 0.8, 0.2


def pass_seed(seed: int, index: int) -> int:
    """The seed of one pass (epoch or cached view ``index``) of the run seeded ``seed``."""
    return seed * 1000 + index


@dataclass(frozen=True)
class AugmentPlan:
    """Per-sample flips and shifts (in pixels, up to ``pad``) for a split of ``n`` samples."""

    flip: torch.Tensor
    dy: torch.Tensor
    dx: torch.Tensor
    pad: int

    @classmethod
    def make(cls, kind: str, n: int, seed: int, pad: int = 2) -> AugmentPlan:
        if kind not in BATCH_KINDS:
            raise ValueError(f"unknown batch augmentation {kind!r}; use one of {BATCH_KINDS}")
        gen = torch.Generator().manual_seed(seed)
        flip = torch.rand(n, generator=gen) < 0.5 if "flip" in kind else torch.zeros(n, dtype=torch.bool)
        if "crop" in kind:
            dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
        else:
            dy = dx = torch.full((n,), pad)
        return cls(flip, dy, dx, pad if "crop" in kind else 0)

    def apply(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The augmented view of the samples at ``positions``, on the images' device."""
        pos = positions.cpu()
        flip = self.flip[pos].to(images.device)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        if not self.pad:
            return images
        p, (h, w) = self.pad, images.shape[-2:]
        padded = F.pad(images, (p, p, p, p))
        shifts = zip(self.dy[pos].tolist(), self.dx[pos].tolist(), strict=True)  # host-side: no device sync
        return torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(shifts)])


@dataclass(frozen=True)
class SampleAugment:
    """A sample kind for one pass: ``augment(image, position, prep)`` turns a decoded uint8
    (3, H, W) image into the model-size view of that sample. Picklable (runs in loader workers)."""

    kind: str
    seed: int

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_KINDS:
            raise ValueError(f"unknown sample augmentation {self.kind!r}; use one of {SAMPLE_KINDS}")

    def __call__(self, image: torch.Tensor, position: int, prep: Preprocessing) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(position)])  # this sample's view, whoever computes it
        if self.kind == "rrc_flip":
            top, left, h, w = rrc_box(*image.shape[-2:], rng)
            image = TF.resized_crop(image, top, left, h, w, [prep.size, prep.size],
                                    interpolation=InterpolationMode(prep.interpolation), antialias=True)
            return image.flip(-1) if rng.random() < 0.5 else image
        image = resize_uint8(image, prep.size, prep.crop_pct, prep.interpolation)
        if rng.random() < 0.5:
            image = image.flip(-1)
        if rng.random() < JITTER_P:
            image = color_jitter(image, rng)
        if rng.random() < GRAY_P:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        return image


def rrc_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box, torchvision's algorithm on a numpy generator."""
    area, log_ratio = height * width, np.log(RRC_RATIO)
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height  # fallback: the central crop of the allowed aspect ratio
    w, h = ((width, round(width / RRC_RATIO[0])) if ratio < RRC_RATIO[0] else
            (round(height * RRC_RATIO[1]), height) if ratio > RRC_RATIO[1] else (width, height))
    return (height - h) // 2, (width - w) // 2, h, w


JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)  # JITTER's order


def color_jitter(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """torchvision's ColorJitter (:data:`JITTER`) on uint8, its factors and order drawn from ``rng``."""
    factors = [rng.uniform(-v, v) if k == "hue" else rng.uniform(1 - v, 1 + v) for k, v in JITTER.items()]
    for i in rng.permutation(len(JITTER_OPS)):
        image = JITTER_OPS[i](image, float(factors[i]))
    return image
