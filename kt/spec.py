"""Model ids and specs: what the config says about a model, importable without torch (the
workflow reads specs at every dry run; :mod:`kt.models` builds them)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kt.errors import KtError

PREPARED_ARG = "prepared"  # args key: the model's preparation artifact (kt.models.ModelSource.preparation)


def slugify(text: str) -> str:
    """A path- and wildcard-safe name: ``timm:resnet50.a1_in1k`` -> ``timm__resnet50_a1_in1k``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text.replace(":", "__", 1)).strip("_")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one model; the config's ``models`` entries parse into this."""

    id: str
    weights: str | None = None
    num_classes: int | None = None
    args: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    family: str | None = None  # cnn | transformer | mlp; None: inferred from the modules (infer_family)
    pretrained: bool = True

    def __post_init__(self) -> None:
        if ":" not in self.id:
            raise KtError(f"model id {self.id!r} has no source prefix; write SOURCE:NAME, "
                          "e.g. timm:resnet50.a1_in1k, open_clip:ViT-B-32/laion2b_s34b_b79k, "
                          "torchvision:resnet50/IMAGENET1K_V2.")

    @property
    def source(self) -> str:
        return self.id.split(":", 1)[0]

    @property
    def arch(self) -> str:
        return self.id.split(":", 1)[1]

    @property
    def slug(self) -> str:
        return self.name or slugify(self.id)

    @classmethod
    def parse(cls, entry: str | dict[str, Any]) -> ModelSpec:
        """From a config entry: a bare id string or a mapping with ``id`` and options."""
        if isinstance(entry, str):
            return cls(id=entry)
        return cls(**entry)

    def check_weights(self) -> None:
        """Fail before building anything when a configured weight file is missing."""
        if self.weights is not None and not Path(self.weights).is_file():
            raise KtError(f"model {self.slug!r}: weight file {self.weights!r} does not exist; fix the 'weights' "
                          "path in the config (cluster nodes need it on a shared disk).")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, []) and k != "pretrained"} | (
            {} if self.pretrained else {"pretrained": False})
