"""Built-in datasets: ``fashion_mnist`` (Debian package, else torchvision download) and
``imagefolder`` (ImageNet-style ``train/`` and ``val/`` folders of class sub-folders)."""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import kt
from kt.artifacts import atomic_path
from kt.data import FileSplit, Split, TensorSplit
from kt.errors import KtError

log = logging.getLogger("kt")
SYNSET = re.compile(r"n\d{8}")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "eval": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_idx(path: Path, cache: Path) -> np.ndarray:
    """:func:`_read_idx` through a decompressed ``.npy`` copy in ``cache`` (gunzip costs ~0.3 s for
    the train images in every job; ``np.load`` ~0.02 s). The copy is keyed by the source's size and
    mtime; an unwritable cache only costs the speed-up."""
    stat = path.stat()
    copy = cache / f"{path.name.removesuffix('.gz')}-{stat.st_size}-{stat.st_mtime_ns}.npy"
    if copy.is_file():
        try:
            return np.load(copy)
        except (OSError, ValueError):  # truncated or foreign: rewrite it
            pass
    array = _read_idx(path)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(copy) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    except OSError:
        pass
    return array


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


@dataclass
class FashionMNIST:
    """Fashion-MNIST: 60,000 train / 10,000 test 28x28 grey images, 10 classes (MIT licence)."""

    root: str | None = None
    download: bool = True
    classes = FASHION_MNIST_CLASSES
    # what the dataset declares (kt.data.DatasetInfo): train-set statistics, native size; a
    # mirrored shoe or shirt keeps its class, so flips are valid
    mean = (0.286, 0.286, 0.286)
    std = (0.353, 0.353, 0.353)
    size = 28
    hflip = True

    def _folders(self) -> list[Path]:
        folders = [Path(self.root)] if self.root else []
        cache = Path(self.root or Path.home() / ".cache" / "kt")
        return folders + [DEBIAN_FASHION_MNIST, cache / "FashionMNIST" / "raw"]

    def split(self, name: str) -> Split:
        images_stem, labels_stem = FILES[name]
        if _find_idx(self._folders(), images_stem) is None and self.download:
            self._download()
        images_path = _find_idx(self._folders(), images_stem)
        labels_path = _find_idx(self._folders(), labels_stem)
        if images_path is None or labels_path is None:
            raise KtError("Fashion-MNIST not found. Install it with `apt-get install dataset-fashion-mnist` "
                          f"(files in {DEBIAN_FASHION_MNIST}), or put the four *-idx*-ubyte(.gz) files in a "
                          "folder and set dataset.root to it, or allow network access for torchvision's "
                          "download (dataset.download: true).")
        cache = Path(self.root or Path.home() / ".cache" / "kt") / "decoded"
        images = torch.from_numpy(np.array(_load_idx(images_path, cache))).unsqueeze(1)
        labels = _load_idx(labels_path, cache).astype(np.int64)
        return TensorSplit(name, np.arange(len(labels)), labels, list(self.classes), images=images)

    def _download(self) -> None:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST

        root = Path(self.root or Path.home() / ".cache" / "kt")
        try:
            for train in (True, False):
                TVFashionMNIST(str(root), train=train, download=True)
        except Exception:  # noqa: BLE001 - offline: the caller explains what to install
            return


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class ImageFolder:
    """``root/train/<class>/*.jpg`` (the transfer set) and ``root/val/<class>/*.jpg`` (evaluation).
    Class order comes from ``classes_file`` (one folder name per line, optionally a tab and a readable
    name); else, when every train folder is an ImageNet-1k synset (``n01440764``, ...), it is ImageNet's
    1000 classes in their standard order, present or not, so that ImageNet models' outputs are the
    labels (an ImageNet subset needs no ceremony); else the sorted folder names of the train split."""

    root: str
    train: str = "train"
    eval: str = "val"
    classes_file: str | None = None
    decodes = True  # JPEG/PNG files: extraction and transfer decode them in loader workers

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise KtError(f"dataset.root {self.root!r} is not a folder; point it at a folder holding "
                          f"'{self.train}/' and '{self.eval}/'.")
        if self.classes_file and not Path(self.classes_file).is_file():
            raise KtError(f"dataset.classes_file {self.classes_file!r} does not exist; point it at a text file "
                          "with one class folder name per line (optionally a tab and a readable name).")
        if self.classes_file:
            lines = [ln.rstrip("\n").split("\t") for ln in Path(self.classes_file).read_text().splitlines() if ln]
            self.folders = [ln[0] for ln in lines]
            self.classes = [ln[-1] for ln in lines]
        else:
            train = root / self.train
            if not train.is_dir():
                raise KtError(f"dataset folder {train} does not exist; create it or set dataset.train.")
            self.folders = _class_folders(train)
            if self.folders and all(SYNSET.fullmatch(f) for f in self.folders):
                self.folders = imagenet_synsets(self.folders, train)
            self.classes = list(self.folders)
        if not self.folders:
            raise KtError(f"no class folders in {root / self.train}; expected {root / self.train}/<class>/*.jpg.")

    def split(self, name: str) -> Split:
        folder = Path(self.root) / (self.train if name == "train" else self.eval)
        if not folder.is_dir():
            raise KtError(f"dataset folder {folder} (split {name!r}) does not exist; "
                          f"set dataset.{name} to the right sub-folder.")
        unknown = set(_class_folders(folder)) - set(self.folders)
        if unknown:
            raise KtError(f"{folder} has class folders {sorted(unknown)[:5]} that are not in the label space "
                          f"({self.classes_file or 'train folder names'}); remove them or list them.")
        ids, labels = [], []
        for label, cls in enumerate(self.folders):
            for path in sorted((folder / cls).glob("*")) if (folder / cls).is_dir() else []:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    ids.append(str(path.relative_to(folder)))
                    labels.append(label)
        return FileSplit(name, np.array(ids), np.array(labels, dtype=np.int64), list(self.classes), root=folder)


def imagenet_synsets(folders: list[str], train: Path) -> list[str]:
    """ImageNet-1k's 1000 synsets in their standard order when ``folders`` are all among them (said in
    the log), else ``folders`` as they are."""
    from timm.data import ImageNetInfo  # only for synset folders: timm takes seconds to import

    synsets = ImageNetInfo().label_names()
    if not set(folders) <= set(synsets):
        return folders
    log.info("dataset: the %d class folders of %s are ImageNet-1k synsets, so labels are ImageNet-1k's 1000 "
             "classes in their standard order (set dataset.classes_file to use these folders alone)", len(folders),
             train)
    return list(synsets)


@kt.hookimpl
def register_datasets(register):
    register("fashion_mnist", FashionMNIST)
    register("imagefolder", ImageFolder)

