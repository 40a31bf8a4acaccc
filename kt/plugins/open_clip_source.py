"""The ``open_clip`` model source: ``open_clip:ARCH[/PRETRAINED_TAG]``.

CLIP models have no classifier, so one is built zero-shot from the dataset's class names and
prompt templates (open_clip ships ImageNet's names and the OpenAI templates); logits are
``logit_scale * <image embedding, class embedding>`` through an ordinary linear head.

Building a head runs the text tower over classes x templates (1000 x 80 prompts for ImageNet), so
the workflow builds it once per model (``kt zero-shot-head``, an HDF5 artifact whose attrs say what
it was built from) and hands it to every job as ``args.head``; a head built for other classes,
templates or weights is refused, never reused.

open_clip is imported where a CLIP model is listed or built, not with the plugin: every kt process
loads the built-in plugins, and most never touch CLIP (about 0.3 s a job, measured on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kt
from kt.artifacts import atomic_path, open_h5, set_attrs
from kt.errors import KtError
from kt.models import Classifier, ModelSource, ModelSpec, weights_origin
from kt.preprocess import Preprocessing, uint8_transform
from kt.spec import PREPARED_ARG

TEMPLATE_SETS = {"openai": "OPENAI_IMAGENET_TEMPLATES", "simple": "SIMPLE_IMAGENET_TEMPLATES"}
SYNSET = re.compile(r"n\d{8}")


class ZeroShotBody(nn.Module):
    """Image tower + normalisation + zero-shot linear head."""

    def __init__(self, clip: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.visual = clip.visual
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.normalize(self.visual(x), dim=-1))


def prompt_templates(name: str) -> tuple:
    """open_clip's prompt templates of set ``name`` (a key of TEMPLATE_SETS)."""
    from open_clip import zero_shot_metadata

    return getattr(zero_shot_metadata, TEMPLATE_SETS[name])


class OpenClipSource(ModelSource):
    def known_models(self) -> list[str]:
        import open_clip

        return open_clip.list_models()

    def known_tags(self, base: str) -> list[str]:
        import open_clip

        return list(open_clip.list_pretrained_tags_by_model(base))

    def base_name(self, arch: str) -> str:
        return arch.split("/", 1)[0]

    def preparation(self, spec: ModelSpec, classes: list[str]) -> int:
        """Every open_clip model: its zero-shot head, the text tower over classes x templates."""
        return len(classes) * len(prompt_templates(_parse_args(spec)[2]))

    def prepare(self, spec: ModelSpec, classes: list[str], out: Path, device: torch.device) -> str:
        attrs = write_head(spec, classes, out, device)
        return f"zero-shot head of {len(attrs['classes'])} classes, {attrs['templates']} templates"

    def create(self, spec: ModelSpec, classes: list[str] | None) -> Classifier:
        name, args, templates = _parse_args(spec)
        head_file = args.pop(PREPARED_ARG, None)  # the zero-shot head built by prepare()
        clip = _load_clip(spec, name, args)
        classnames = readable_classes(spec, classes)
        if head_file:
            weights = read_head(head_file, head_attrs(spec, classnames, templates))
        else:
            weights = build_head(clip, name, classnames, templates, torch.device("cpu"))
        head = nn.Linear(weights.shape[1], weights.shape[0], bias=False)
        with torch.no_grad():
            head.weight.copy_(weights)
        prep, transform = clip_preprocessing(clip)
        return Classifier(ZeroShotBody(clip, head), head, prep.updated(spec.preprocess), len(classnames),
                          spec, weights_origin(spec, f"open_clip/{spec.arch}"), classnames, transform)


RESIZE_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}  # open_clip's -> timm's crop modes


def clip_preprocessing(clip: nn.Module) -> tuple[Preprocessing, Any]:
    """The model's preprocessing and open_clip's own eval transform for it (``image_transform_v2``,
    as ``create_model_and_transforms`` builds it), without its tensor conversion."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = clip.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][-1]
    prep = Preprocessing(size=int(size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                         interpolation=cfg.get("interpolation", "bicubic"), crop_pct=1.0,
                         crop_mode=RESIZE_MODES.get(cfg.get("resize_mode", "shortest"), "center"))
    return prep, uint8_transform(image_transform_v2(PreprocessCfg(**cfg), is_train=False))


def _parse_args(spec: ModelSpec) -> tuple[str, dict[str, Any], str]:
    """(architecture, open_clip.create_model kwargs + head, template set name)."""
    args = dict(spec.args)
    templates = args.pop("templates", "openai")
    if templates not in TEMPLATE_SETS:
        raise KtError(f"model {spec.slug!r}: args.templates must be one of {sorted(TEMPLATE_SETS)}.")
    return spec.arch.partition("/")[0], args, templates


def _load_clip(spec: ModelSpec, name: str, args: dict[str, Any]) -> nn.Module:
    import open_clip

    tag = spec.arch.partition("/")[2]
    pretrained = spec.weights or (tag if spec.pretrained and tag else None)
    try:
        return open_clip.create_model(name, pretrained=pretrained, **args)
    except (RuntimeError, OSError, TypeError) as e:
        raise KtError(f"model {spec.slug!r}: open_clip could not load {name} with "
                      f"pretrained={pretrained!r}: {e}. Offline? Set 'weights' to a local file.") from None


def readable_classes(spec: ModelSpec, classes: list[str] | None) -> list[str]:
    """Class names for the prompts: the dataset's, open_clip's ImageNet names for ImageNet's synset
    folders (in timm's order), and an error for other folder ids, which make meaningless prompts."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    if not classes:
        return list(IMAGENET_CLASSNAMES)
    if not all(SYNSET.fullmatch(c) for c in classes):
        return list(classes)
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo().label_names()
    if sorted(classes) == sorted(synsets):
        names = dict(zip(synsets, IMAGENET_CLASSNAMES, strict=True))
        return [names[c] for c in classes]
    raise KtError(f"model {spec.slug!r} builds its classifier from class names, but the dataset's classes are "
                  f"folder ids ({', '.join(classes[:3])}, ...) that are not ImageNet-1k's 1000 synsets. Set "
                  "dataset.classes_file: a text file with one folder name per line, a tab, and a readable name.")


def build_head(clip: nn.Module, name: str, classnames: list[str], templates: str,
               device: torch.device) -> torch.Tensor:
    """(C, D) zero-shot weights, logit scale folded in: the text tower over classes x templates."""
    import open_clip

    clip = clip.to(device).eval()
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(
            clip, tokenizer=open_clip.get_tokenizer(name), classnames=classnames, templates=prompt_templates(templates),
            num_classes_per_batch=10, device=device, use_tqdm=False)  # (D, C)
        return (clip.logit_scale.exp() * weights.T).float().cpu()


def head_attrs(spec: ModelSpec, classnames: list[str], templates: str) -> dict[str, Any]:
    """What a head is built from; a stored head whose attrs differ is refused."""
    prompts = [t("{}") for t in prompt_templates(templates)]
    return {"kind": "zero_shot_head", "model_id": spec.id,
            "weights_origin": weights_origin(spec, f"open_clip/{spec.arch}"),
            "classes_digest": _digest(classnames), "templates": templates, "templates_digest": _digest(prompts)}


def _digest(items: list[str]) -> str:
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def write_head(spec: ModelSpec, classes: list[str] | None, out: str | Path, device: torch.device) -> dict[str, Any]:
    """Build ``spec``'s zero-shot head on ``device`` and store it (atomically) with its attrs."""
    name, args, templates = _parse_args(spec)
    args.pop(PREPARED_ARG, None)
    classnames = readable_classes(spec, classes)
    weights = build_head(_load_clip(spec, name, args), name, classnames, templates, device)
    attrs = head_attrs(spec, classnames, templates) | {"classes": classnames}
    with atomic_path(out) as tmp, open_h5(tmp, "w") as f:
        f.create_dataset("weight", data=weights.numpy())
        set_attrs(f, attrs)
    return attrs


def read_head(path: str | Path, expected: dict[str, Any]) -> torch.Tensor:
    with open_h5(path) as f:
        wrong = {k: (f.attrs.get(k), v) for k, v in expected.items() if f.attrs.get(k) != v}
        if wrong:
            raise KtError(f"zero-shot head {path} was built from something else ({wrong}): delete it, and the "
                          "workflow builds it again for these classes, templates and weights.")
        return torch.from_numpy(f["weight"][()])


@kt.hookimpl
def register_model_sources(register):
    register("open_clip", OpenClipSource())
