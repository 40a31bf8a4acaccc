"""Seeded batch augmentations on uint8 (N, 3, H, W) images, applied before per-model normalisation,
so that every model in a transfer sees the very same augmented view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "flip", "crop", "flip_crop")


def augment(images: torch.Tensor, kind: str, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """``flip``: random horizontal flips; ``crop``: random shifts of up to ``pad`` pixels (zero fill)."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; use one of {AUGMENTATIONS}")
    n, _, h, w = images.shape
    if "flip" in kind:
        flip = torch.rand(n, generator=generator) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if "crop" in kind:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy.view(-1, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, images.shape[1], h, w + 2 * pad)
        padded = padded.gather(2, rows)
        cols = (dx.view(-1, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, images.shape[1], h, w)
        images = padded.gather(3, cols)
    return images
