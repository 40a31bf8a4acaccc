"""Image files to uint8 tensors or PIL images: the one place kt decodes, so an undecodable file
fails the same way (a KtError naming it) on every path."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kt.errors import KtError


def decode(path: Path, short_side: int | None = None) -> torch.Tensor:
    """An image file as uint8 (3, H, W), by the fastest path measured (benchmarks/loader.py): a JPEG
    whose short side is at least twice ``short_side`` is decoded by PIL at a reduced DCT scale
    (``draft``: 1/2, 1/4 or 1/8, still at least ``short_side``), another JPEG by libjpeg-turbo through
    ``torchvision.io.decode_jpeg`` (1.4x PIL's full decode), anything else by PIL. The file is read
    once; PIL parses only its header from memory to choose."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and not (short_side and min(image.size) >= 2 * short_side):
                with warnings.catch_warnings():  # torchvision 0.29 deprecates torchvision.io for TorchCodec
                    warnings.simplefilter("ignore", DeprecationWarning)
                    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if short_side and image.format == "JPEG":
                image.draft("RGB", (short_side, short_side))
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, RuntimeError) as e:  # PIL's UnidentifiedImageError, truncated files, libjpeg errors
        raise KtError(f"cannot decode image {path}: {e}. Remove or replace the file.") from None


def decode_pil(path: Path) -> Any:
    """An image file as an RGB PIL image, decoded as timm's and torchvision's datasets do."""
    from PIL import Image

    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return image.convert("RGB")
    except (OSError, RuntimeError) as e:
        raise KtError(f"cannot decode image {path}: {e}. Remove or replace the file.") from None
