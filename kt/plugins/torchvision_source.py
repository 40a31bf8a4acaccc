"""The ``torchvision`` model source: ``torchvision:ARCH[/WEIGHTS_TAG]``; local weights are a
state dict file (``weights:``), the tag then only supplies preprocessing and class names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

import kt
from kt.errors import KtError
from kt.models import Classifier, ModelSource, ModelSpec, weights_origin
from kt.preprocess import Preprocessing


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a file, unwrapping the usual ``{"state_dict": ...}``/``{"model": ...}`` nests."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def weights_transform(t: nn.Module) -> Callable[[Any], torch.Tensor]:
    """``weights.transforms()`` (``ImageClassification``: resize, centre crop, to float, normalise) up to
    its float conversion: the same resize and crop on a PIL image, uint8 out."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(t.resize_size, interpolation=t.interpolation, antialias=t.antialias),
                      T.CenterCrop(t.crop_size), T.PILToTensor()])


class TorchvisionSource(ModelSource):
    def known_models(self) -> list[str]:
        return tvm.list_models(module=tvm)

    def known_tags(self, base: str) -> list[str]:
        return [w.name for w in tvm.get_model_weights(base)]

    def base_name(self, arch: str) -> str:
        return arch.split("/", 1)[0]

    def create(self, spec: ModelSpec, classes: list[str] | None) -> Classifier:
        name, _, tag = spec.arch.partition("/")
        weights_enum = tvm.get_model_weights(name)[tag] if tag else None  # tag checked by check()
        kwargs = dict(spec.args)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        from_hub = weights_enum is not None and spec.weights is None and spec.pretrained
        model = tvm.get_model(name, weights=weights_enum if from_hub else None, **kwargs)
        if spec.weights is not None:
            try:
                model.load_state_dict(load_state_dict(spec.weights))
            except RuntimeError as e:
                raise KtError(f"model {spec.slug!r}: weight file {spec.weights} does not fit "
                              f"torchvision {name} (check num_classes/args): {str(e)[:400]}") from None
        prep, transform = Preprocessing(crop_pct=0.875), None
        if weights_enum is not None:
            t = weights_enum.transforms()
            prep = Preprocessing(size=int(t.crop_size[0]), mean=tuple(t.mean), std=tuple(t.std),
                                 interpolation=t.interpolation.value,
                                 crop_pct=float(t.crop_size[0]) / float(t.resize_size[0]))
            transform = weights_transform(t)
            classes = classes or weights_enum.meta.get("categories")
        linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise KtError(f"model {spec.slug!r}: torchvision {name} has no nn.Linear classifier (SqueezeNet's "
                          "is a convolution); kt reads pooled features at the final linear layer. Use a "
                          "model with a linear head, or register a model source that wraps this one.")
        head = linear[-1]
        return Classifier(model, head, prep.updated(spec.preprocess), head.out_features, spec,
                          weights_origin(spec, f"torchvision/{spec.arch}"), classes, transform)


@kt.hookimpl
def register_model_sources(register):
    register("torchvision", TorchvisionSource())
