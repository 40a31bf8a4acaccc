"""Seeded augmentation plans on uint8 (N, 3, H, W) images.

A plan fixes every sample's flip and shift for one pass over a split, from a seed alone, so that
(a) every model in a transfer sees the very same augmented view, (b) a resumed run replays the
same views, and (c) frozen models' logits can be cached per view (``transfer.cache_views``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "flip", "crop", "flip_crop")


@dataclass(frozen=True)
class AugmentPlan:
    """Per-sample flips and shifts (in pixels, up to ``pad``) for a split of ``n`` samples."""

    flip: torch.Tensor
    dy: torch.Tensor
    dx: torch.Tensor
    pad: int

    @classmethod
    def make(cls, kind: str, n: int, seed: int, pad: int = 2) -> AugmentPlan:
        if kind not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {kind!r}; use one of {AUGMENTATIONS}")
        gen = torch.Generator().manual_seed(seed)
        flip = torch.rand(n, generator=gen) < 0.5 if "flip" in kind else torch.zeros(n, dtype=torch.bool)
        if "crop" in kind:
            dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
        else:
            dy = dx = torch.full((n,), pad)
        return cls(flip, dy, dx, pad if "crop" in kind else 0)

    def apply(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The augmented view of the samples at ``positions``."""
        pos = positions.cpu()
        n, c, h, w = images.shape
        flip = self.flip[pos].to(images.device)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        if not self.pad:
            return images
        p = self.pad
        padded = F.pad(images, (p, p, p, p))
        dy, dx = self.dy[pos].to(images.device), self.dx[pos].to(images.device)
        ar_h, ar_w = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
        rows = (dy.view(-1, 1) + ar_h).view(n, 1, h, 1).expand(n, c, h, w + 2 * p)
        cols = (dx.view(-1, 1) + ar_w).view(n, 1, 1, w).expand(n, c, h, w)
        return padded.gather(2, rows).gather(3, cols)
