"""Real photos for tests and benchmarks: scikit-image's bundled ones, written as an ImageNet-style
image folder (class folders named by ImageNet synset) of JPEGs in several sizes and aspect ratios,
some over twice a model's input size, plus a PNG and a greyscale JPEG.

The photos show classes of ImageNet-1k, so pretrained models classify them; the variants (scales,
crops, flips) differ per split, so the transfer set and the evaluation set share no file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

# photo -> (ImageNet synset, its class index in ImageNet-1k's standard order)
PHOTOS = {
    "chelsea": ("n02123045", 281),  # tabby cat
    "coffee": ("n07920052", 967),  # espresso
    "rocket": ("n04008634", 744),  # projectile, missile
    "motorcycle": ("n03785016", 665),  # moped
}


def _photo(name: str) -> Image.Image:
    import skimage.data

    array = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return Image.fromarray(array).convert("RGB")


def _scaled(short_side: int) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        ratio = short_side / min(image.size)
        return image.resize((round(image.width * ratio), round(image.height * ratio)), Image.BICUBIC)

    return apply


def _crop(left: float, top: float, right: float, bottom: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        return image.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))

    return apply


def _flip(image: Image.Image) -> Image.Image:
    return image.transpose(Image.FLIP_LEFT_RIGHT)


# variant name -> (transform, file suffix, grey); "val" and "train" get different variants
VARIANTS = {
    "val": {
        "full": (lambda im: im, ".jpg", False),  # as bundled: 300-480 px short side
        "large": (_scaled(560), ".jpg", False),  # over twice 224: decoders may take shortcuts here
        "small": (_scaled(180), ".jpg", False),  # below the input size: upsampled
        "tall": (_crop(0.2, 0.0, 0.75, 1.0), ".jpg", False),  # portrait aspect ratio
        "png": (_scaled(300), ".png", False),
        "grey": (_scaled(260), ".jpg", True),
    },
    "train": {
        "flip": (_flip, ".jpg", False),
        "wide": (_crop(0.0, 0.15, 1.0, 0.85), ".jpg", False),
        "huge": (_scaled(700), ".jpg", False),
        "centre": (_crop(0.1, 0.1, 0.9, 0.9), ".jpg", False),
        "flip_small": (lambda im: _scaled(200)(_flip(im)), ".jpg", False),
        "grey_flip": (_flip, ".jpg", True),
    },
}


def write_photo_folder(root: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """``root/<split>/<synset>/<photo>_<variant>.<jpg|png>`` for every photo and variant; returns root."""
    for split in splits:
        for name, (synset, _) in PHOTOS.items():
            folder = root / split / synset
            folder.mkdir(parents=True, exist_ok=True)
            photo = _photo(name)
            for variant, (transform, suffix, grey) in VARIANTS[split].items():
                image = transform(photo)
                if grey:
                    image = image.convert("L")
                image.save(folder / f"{name}_{variant}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))
    return root


def label_of(path: Path) -> int:
    """The ImageNet-1k class index of a file written by :func:`write_photo_folder`."""
    synsets = {synset: index for synset, index in PHOTOS.values()}
    return synsets[path.parent.name]


def sizes(root: Path) -> list[tuple[int, int]]:
    return [Image.open(p).size for p in sorted(root.rglob("*.*"))]



def write_photo_jpegs(root: Path, n: int, seed: int = 0, split: str = "train") -> Path:
    """``n`` JPEGs of ImageNet's typical size (short side 300-500 px, aspect 3:4 to 4:3, quality 90):
    seeded random crops and scales of the photos, in ``root/<split>/<synset>/`` (for benchmarks)."""
    import random

    rng = random.Random(seed)
    photos = {name: _photo(name) for name in PHOTOS}
    for i in range(n):
        name = rng.choice(sorted(photos))
        photo = photos[name]
        w, h = photo.size
        crop_w, crop_h = round(w * rng.uniform(0.6, 1.0)), round(h * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, w - crop_w), rng.randint(0, h - crop_h)
        image = photo.crop((left, top, left + crop_w, top + crop_h))
        short = rng.randint(300, 500)
        ratio = short / min(image.size)
        image = image.resize((round(image.width * ratio), round(image.height * ratio)), Image.BICUBIC)
        if rng.random() < 0.5:
            image = _flip(image)
        folder = root / split / PHOTOS[name][0]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{name}_{i:05d}.jpg", quality=90)
    return root
