"""Preprocessing: the single source of truth for how a model sees an image.

Images travel as uint8 (N, 3, H, W) tensors; each model then normalises them on its own device
with its own mean/std (teachers and students differ). Two ways make a model's view of an image:

* ``reference`` (every evaluation by default): the model library's own eval transform on a PIL
  image (timm's ``create_transform``, open_clip's preprocess, torchvision's ``weights.transforms()``)
  without its float conversion and normalisation, so logits match the library's own evaluation;
* ``fast``: JPEG draft decoding and an antialiased tensor resize (:func:`fast_view`), cheaper and
  usable on a GPU, a few grey levels away from the reference (README: the deviation it costs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from kt.errors import KtError


@dataclass(frozen=True)
class Preprocessing:
    """Input size (square), per-channel mean/std in [0, 1] units, interpolation, crop fraction and
    timm's crop mode (``center``: short side to size / crop_pct, centre crop; ``squash``: both sides
    to it; ``border``: long side to it, padded with the mean colour)."""

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.crop_mode not in CROP_MODES:
            raise KtError(f"preprocessing crop_mode {self.crop_mode!r} is not one of {', '.join(CROP_MODES)}.")

    @property
    def scale_size(self) -> int:
        """The side an image is resized to before the crop: timm's floor(size / crop_pct) (the
        epsilon keeps a ratio such as torchvision's 224 / 232 from flooring to 231)."""
        return math.floor(self.size / self.crop_pct + 1e-6)

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


CROP_MODES = ("center", "squash", "border")
TENSOR_STEPS = {"ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "Normalize", "ConvertImageDtype"}
ViewTransform = Callable[[Any], torch.Tensor]  # PIL image (RGB) -> uint8 (3, size, size)


def resize_uint8(images: torch.Tensor, size: int, crop_pct: float = 1.0,
                 interpolation: str = "bilinear") -> torch.Tensor:
    """Resize the short side to timm's scale size and centre-crop ``size``; uint8 in, uint8 out."""
    return fast_view(images, Preprocessing(size=size, crop_pct=crop_pct, interpolation=interpolation))


def fast_view(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """The fast path's view (uint8 in and out, any leading dims): ``prep``'s resize and crop mode with
    torchvision's antialiased tensor resize."""
    size, interpolation = prep.size, InterpolationMode(prep.interpolation)
    h, w = images.shape[-2:]
    if h == w == size and prep.crop_pct == 1.0:
        return images
    scale = prep.scale_size
    if prep.crop_mode == "center":
        return TF.center_crop(TF.resize(images, [scale], interpolation=interpolation, antialias=True), [size, size])
    if prep.crop_mode == "squash":
        return TF.center_crop(TF.resize(images, [scale, scale], interpolation=interpolation, antialias=True),
                              [size, size])
    ratio = scale / max(h, w)  # border: the long side to the scale size, then pad with the mean colour
    out = TF.resize(images, [max(1, round(h * ratio)), max(1, round(w * ratio))], interpolation=interpolation,
                    antialias=True)
    out = TF.center_crop(out, [min(size, out.shape[-2]), min(size, out.shape[-1])])
    pad_h, pad_w = size - out.shape[-2], size - out.shape[-1]
    fill = torch.tensor([round(255 * m) for m in prep.mean], dtype=images.dtype, device=images.device)
    canvas = fill.view(3, 1, 1).expand(*out.shape[:-3], 3, size, size).clone()
    canvas[..., pad_h // 2:pad_h // 2 + out.shape[-2], pad_w // 2:pad_w // 2 + out.shape[-1]] = out
    return canvas


def reference_transform(prep: Preprocessing) -> ViewTransform:
    """timm's eval transform for ``prep`` (``resolve_data_config`` + ``create_transform``: PIL resize
    with the model's interpolation to the scale size, its crop mode), ending in a uint8 tensor as
    timm's prefetcher path does: the reference for any model that does not bring its own."""
    from timm.data import create_transform

    return create_transform(input_size=(3, prep.size, prep.size), interpolation=prep.interpolation,
                            crop_pct=prep.crop_pct, crop_mode=prep.crop_mode, mean=prep.mean, std=prep.std,
                            is_training=False, use_prefetcher=True)


def uint8_transform(transform: Any) -> ViewTransform:
    """A library's composed eval transform (a torchvision ``Compose``: open_clip's preprocess, timm's
    transform) up to its tensor conversion, then ``PILToTensor``: the same geometry, uint8 out, the
    normalisation left to :func:`normalize` on the model's device."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    cut = next((i for i, step in enumerate(steps) if type(step).__name__ in TENSOR_STEPS), None)
    if cut is None:
        raise KtError(f"eval transform {transform!r} is not a torchvision Compose ending in ToTensor/Normalize; "
                      "a model source gives Classifier a transform from PIL image to uint8 (3, H, W) tensor.")
    return T.Compose([*steps[:cut], T.PILToTensor()])


def normalize(images: torch.Tensor, prep: Preprocessing, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised float on the images' device."""
    mean = torch.tensor(prep.mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    std = torch.tensor(prep.std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    return images.to(torch.float32, copy=True).sub_(mean).div_(std).to(dtype)
