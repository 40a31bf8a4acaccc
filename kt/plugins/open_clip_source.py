"""The ``open_clip`` model source: ``open_clip:ARCH[/PRETRAINED_TAG]``.

CLIP models have no classifier, so one is built zero-shot from the dataset's class names and
prompt templates (open_clip ships ImageNet's names and the OpenAI templates); logits are
``logit_scale * <image embedding, class embedding>`` through an ordinary linear head.
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.zero_shot_metadata import (
    IMAGENET_CLASSNAMES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_IMAGENET_TEMPLATES,
)
from torch import nn

import kt
from kt.errors import KtError
from kt.models import Classifier, ModelSource, ModelSpec, weights_origin
from kt.preprocess import Preprocessing

TEMPLATES = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}


class ZeroShotBody(nn.Module):
    """Image tower + normalisation + zero-shot linear head."""

    def __init__(self, clip: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.visual = clip.visual
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.normalize(self.visual(x), dim=-1))


class OpenClipSource(ModelSource):
    def known_models(self) -> list[str]:
        return open_clip.list_models()

    def known_tags(self, base: str) -> list[str]:
        return list(open_clip.list_pretrained_tags_by_model(base))

    def base_name(self, arch: str) -> str:
        return arch.split("/", 1)[0]

    def create(self, spec: ModelSpec, classes: list[str] | None) -> Classifier:
        name, _, tag = spec.arch.partition("/")
        args = dict(spec.args)
        templates = TEMPLATES.get(args.pop("templates", "openai"))
        if templates is None:
            raise KtError(f"model {spec.slug!r}: args.templates must be one of {sorted(TEMPLATES)}.")
        pretrained = spec.weights or (tag if spec.pretrained and tag else None)
        try:
            clip = open_clip.create_model(name, pretrained=pretrained, **args)
        except (RuntimeError, OSError, TypeError) as e:
            raise KtError(f"model {spec.slug!r}: open_clip could not load {name} with "
                          f"pretrained={pretrained!r}: {e}. Offline? Set 'weights' to a local file.") from None
        classnames = classes or list(IMAGENET_CLASSNAMES)
        tokenizer = open_clip.get_tokenizer(name)
        with torch.no_grad():
            weights = open_clip.build_zero_shot_classifier(
                clip, tokenizer=tokenizer, classnames=classnames, templates=templates,
                num_classes_per_batch=10, device="cpu", use_tqdm=False)  # (D, C)
            head = nn.Linear(weights.shape[0], weights.shape[1], bias=False)
            head.weight.copy_(clip.logit_scale.exp() * weights.T)
        cfg = clip.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][-1]
        prep = Preprocessing(size=int(size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                             interpolation=cfg.get("interpolation", "bicubic"), crop_pct=1.0)
        return Classifier(ZeroShotBody(clip, head), head, prep.updated(spec.preprocess), len(classnames),
                          spec, weights_origin(spec, f"open_clip/{spec.arch}"), classnames)


@kt.hookimpl
def register_model_sources(register):
    register("open_clip", OpenClipSource())
