"""The dataset plugin contract and its use: a registered factory ``factory(**options) -> Dataset``
whose ``split(name)`` returns a :class:`~kt.data.splits.Split`. The config's ``dataset`` mapping
names the factory (``name``) and passes the other keys as options, except ``seed`` and ``subset``,
which kt applies to any dataset (a stratified fraction or per-split count, as the paper's 10 % of
train), so plugins never implement subsets themselves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kt.augment import FLIPPING
from kt.data.splits import Split, stratified_subset
from kt.errors import KtError, closest
from kt.registry import REQUIRED, Registry, get_registry

SPLITS = ("train", "eval")
DATASET_KEYS = ("name", "seed", "subset")  # keys of the config's dataset mapping that kt itself reads
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Dataset(Protocol):
    """What a dataset factory returns.

    Required: ``classes`` (the label space, readable names in label order) and ``split(name)``
    for ``name`` in :data:`SPLITS` (``"train"``: the transfer set, ``"eval"``: the evaluation
    set), returning a :class:`Split`. Optional class or instance attributes, read through
    :meth:`DatasetInfo.of`: ``mean`` and ``std`` (per channel, in [0, 1] units), ``size`` (native
    side in pixels; the zoo's input size) and ``hflip`` (``False`` when a horizontal flip changes
    the label, as for digits or text: flip augmentations are then refused)."""

    classes: list[str]

    def split(self, name: str) -> Split: ...


class DatasetFactory(Protocol):
    """What ``register_datasets`` registers: a callable (usually the dataset class) whose keyword
    parameters are the dataset's options (every key of the config's ``dataset`` mapping except
    ``name``, ``seed`` and ``subset``); parameters without a default are required options."""

    def __call__(self, **options: Any) -> Dataset: ...


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset declares about its images; ImageNet statistics, no native size and valid
    flips where it declares nothing."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size: int | None = None
    hflip: bool = True
    decodes: bool = False  # samples are image files decoded one by one (loader workers pay off)

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetInfo:
        defaults = cls()
        return cls(mean=tuple(getattr(dataset, "mean", defaults.mean)),
                   std=tuple(getattr(dataset, "std", defaults.std)),
                   size=getattr(dataset, "size", None), hflip=bool(getattr(dataset, "hflip", True)),
                   decodes=bool(getattr(dataset, "decodes", False)))

    def preprocess(self) -> dict[str, Any]:
        """Preprocessing for models trained on this dataset (the zoo): its statistics, its native
        size uncropped."""
        size = {"size": self.size, "crop_pct": 1.0} if self.size else {}
        return {**size, "mean": list(self.mean), "std": list(self.std)}


def open_dataset(dataset: dict[str, Any], registry: Registry | None = None) -> Dataset:
    """The dataset object a config ``dataset`` mapping describes, its options checked against the
    factory's parameters first (each mistake names its ``dataset.KEY``)."""
    options = {k: v for k, v in dataset.items() if k not in DATASET_KEYS}
    name = dataset.get("name")
    if name is None:
        raise KtError("config key dataset.name is missing; e.g. dataset: {name: fashion_mnist}.")
    registry = registry or get_registry()
    factory = registry.get("datasets", name)
    accepted = registry.options("datasets", name)
    if accepted is not None:
        for key in options:
            if key not in accepted:
                raise KtError(f"config key dataset.{key}: dataset {name!r} does not take this option."
                              f"{closest(key, accepted)} Its options: {', '.join(accepted) or 'none'} "
                              "(see `kt plugins`).")
        for key, default in accepted.items():
            if default == REQUIRED and key not in options:
                raise KtError(f"config key dataset.{key} is required by dataset {name!r}; add it to the "
                              "dataset section of the config.")
    try:
        return factory(**options)
    except KtError:
        raise
    except TypeError as e:
        raise KtError(f"dataset {name!r} does not take these options {sorted(options)}: {e}.") from None
    except Exception as e:  # noqa: BLE001 - a plugin's own validation of its options
        raise KtError(f"config key dataset: {registry.who('datasets', name)} rejected the options {options}: "
                      f"{type(e).__name__}: {e}") from None


def check_augment(augment: str, dataset: Dataset, key: str) -> None:
    """Refuse a flip augmentation on a dataset whose labels do not survive a horizontal flip."""
    if augment in FLIPPING and not DatasetInfo.of(dataset).hflip:
        raise KtError(f"config key {key}: augmentation {augment!r} flips images, but the dataset declares "
                      "that a horizontal flip changes the label (hflip = False); use 'none' or 'crop'.")


def load_split(dataset: dict[str, Any], split: str, registry: Registry | None = None) -> Split:
    """The split ``split`` of the dataset a config ``dataset`` mapping describes, subset applied."""
    if split not in SPLITS:
        raise KtError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    data = open_dataset(dataset, registry)
    name, subset, seed = dataset["name"], dataset.get("subset") or {}, dataset.get("seed", 0)
    part = data.split(split)
    if len(part) == 0:
        raise KtError(f"dataset {name!r} split {split!r} is empty; check the dataset's folder.")
    if subset.get(split) is not None:
        part = part.take(stratified_subset(part.labels, subset[split], seed))
    return part
