"""Preprocessing: the single source of truth for how a model sees an image.

Images travel as uint8 (N, 3, H, W) tensors, decoded and resized once; each model then
normalises them on its own device with its own mean/std (teachers and students differ).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from kt.errors import KtError


@dataclass(frozen=True)
class Preprocessing:
    """Input size (square), per-channel mean/std in [0, 1] units, interpolation and crop fraction."""

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, overrides: dict[str, Any] | None) -> Preprocessing:
        """A copy with config overrides applied (unknown keys are an error naming them)."""
        if not overrides:
            return self
        unknown = set(overrides) - set(asdict(self))
        if unknown:
            raise KtError(f"unknown preprocessing key(s) {sorted(unknown)}; "
                          f"allowed: {sorted(asdict(self))}.")
        fixed = {k: tuple(float(x) for x in v) if k in ("mean", "std") else v for k, v in overrides.items()}
        return replace(self, **fixed)


def resize_uint8(images: torch.Tensor, size: int, crop_pct: float = 1.0,
                 interpolation: str = "bilinear") -> torch.Tensor:
    """Resize the short side to ``size / crop_pct`` and centre-crop ``size``; uint8 in, uint8 out."""
    if images.shape[-1] == size and images.shape[-2] == size and crop_pct == 1.0:
        return images
    scale = int(round(size / crop_pct))
    out = TF.resize(images, [scale], interpolation=InterpolationMode(interpolation), antialias=True)
    return TF.center_crop(out, [size, size])


def normalize(images: torch.Tensor, prep: Preprocessing, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised float on the images' device."""
    mean = torch.tensor(prep.mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    std = torch.tensor(prep.std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    return images.to(torch.float32, copy=True).sub_(mean).div_(std).to(dtype)
