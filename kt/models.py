"""The one classifier interface every model source returns, and :func:`create_model`.

Model ids and specs live in :mod:`kt.spec` (re-exported here): an id is ``SOURCE:NAME``
(``timm:resnet50.a1_in1k``, ``open_clip:ViT-B-32/laion2b_s34b_b79k``,
``torchvision:resnet50/IMAGENET1K_V2``), and ``create_model`` turns a spec into a :class:`Classifier`.
"""

from __future__ import annotations

import fnmatch
import functools
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kt.errors import KtError, closest
from kt.preprocess import Preprocessing, ViewTransform, reference_transform
from kt.registry import Registry, get_registry
from kt.spec import ModelSpec  # re-exported: plugins import it from here


class Classifier(nn.Module):
    """A model with one interface: ``forward`` gives logits, ``logits_and_features`` adds the
    pooled features (the input of the final linear layer, captured by a hook).

    ``transform``: the model's evaluation view, PIL image (RGB) -> uint8 (3, size, size), as its
    library evaluates it (:mod:`kt.preprocess`); a source passes its library's transform, and where it
    passes none (or the config overrides ``preprocess``) timm's eval transform of ``preprocess`` is used.
    """

    def __init__(self, body: nn.Module, head: nn.Module, preprocess: Preprocessing, num_classes: int,
                 spec: ModelSpec, origin: str, classes: list[str] | None = None,
                 transform: ViewTransform | None = None) -> None:
        super().__init__()
        self.body = body
        self.preprocess = preprocess
        self.__dict__["_transform"] = None if spec.preprocess else transform  # not a submodule, even if a Module
        self.num_classes = num_classes
        self.spec = spec
        self.origin = origin
        self.classes = classes
        self._captured: torch.Tensor | None = None
        self._capture = False
        head.register_forward_pre_hook(self._grab)

    @property
    def transform(self) -> ViewTransform:
        if self._transform is None:
            self.__dict__["_transform"] = reference_transform(self.preprocess)  # on first use: timm imports slowly
        return self._transform

    @functools.cached_property
    def view_key(self) -> str:
        """Models with equal keys see identical evaluation views (one decode serves them all); computed
        once, since the training step looks it up for every model on every batch."""
        return repr(self.transform)

    def _grab(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self._capture:
            self._captured = inputs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._capture = True
        try:
            logits = self.body(x)
            if self._captured is None:
                raise KtError(f"model {self.spec.slug!r}: its head was not called by its body's forward, so "
                              "no features were captured; the model source must pass the final layer that "
                              "body uses as Classifier's head.")
            features = self._captured.flatten(1)
        finally:
            self._capture, self._captured = False, None
        return logits, features


class ModelSource(ABC):
    """A plugin that turns ``SOURCE:NAME`` specs into classifiers."""

    @abstractmethod
    def known_models(self) -> list[str]:
        """Names (after ``SOURCE:``) this source can build; used to validate ids and suggest fixes."""

    @abstractmethod
    def create(self, spec: ModelSpec, classes: list[str] | None) -> Classifier:
        """Build the model, loading ``spec.weights`` when given; ``classes`` is the dataset's label space."""

    def known_tags(self, base: str) -> list[str] | None:
        """Weight tags this source knows for architecture ``base``, from the library's own offline
        listing; ``None`` when the source has no tags (every tag is then accepted)."""
        return None

    def check(self, spec: ModelSpec) -> None:
        """Fail fast on an unknown name or weight tag, with the closest known ones (offline)."""
        base = self.base_name(spec.arch)
        known = self.known_models()
        if base not in known:
            raise KtError(f"{spec.source} has no model {base!r}."
                          f"{closest(base, known)}")
        tag = spec.arch[len(base) + 1:]
        tags = self.known_tags(base) if tag else None
        if tags is not None and tag not in tags:
            listed = ", ".join(tags[:12]) + (", ..." if len(tags) > 12 else "") if tags else "none"
            raise KtError(f"{spec.source} has no weights {tag!r} for {base}."
                          f"{closest(tag, tags)} Known tags: {listed} "
                          f"(`kt models {spec.source} '{base}*' --pretrained` lists them).")

    def base_name(self, arch: str) -> str:
        """The architecture part of the name, without a pretrained tag."""
        return arch

    def preparation(self, spec: ModelSpec, classes: list[str]) -> int | None:
        """Whether ``spec`` needs an artifact built once before any job loads it (open_clip: its
        zero-shot head, built by the text tower), and its cost in images' worth of forward passes
        (sizes the job); None (the default): no preparation. The workflow builds it with
        :meth:`prepare` (``kt prepare``, rule ``prepare_model``) into ``results/prepared/{model}.h5``
        and hands its path to :meth:`create` as ``spec.args[kt.spec.PREPARED_ARG]``."""
        return None

    def prepare(self, spec: ModelSpec, classes: list[str], out: Path, device: torch.device) -> str:
        """Build the preparation artifact of ``spec`` into ``out`` (atomically); return one line
        saying what was built."""
        raise KtError(f"{spec.source} models need no preparation.")

    tag_separator = "/"  # between architecture and weight tag in an id (timm: ".")

    def list_models(self, pattern: str = "*", pretrained: bool = False) -> list[str]:
        """Sorted names (as written after ``SOURCE:``) matching the case-sensitive glob ``pattern``.

        ``pretrained`` lists every ``ARCH<tag_separator>TAG`` from :meth:`known_tags` whose
        architecture or full name matches; a source without tags gives the plain names either way.
        """
        names = [name for name in self.known_models() if fnmatch.fnmatchcase(name, pattern)]
        if not pretrained:
            return sorted(names)
        tagged = {arch: [f"{arch}{self.tag_separator}{tag}" for tag in self.known_tags(arch) or []]
                  for arch in self.known_models()}
        if all(not tags for tags in tagged.values()):
            return sorted(names)
        return sorted(full for arch, tags in tagged.items() for full in tags
                      if fnmatch.fnmatchcase(arch, pattern) or fnmatch.fnmatchcase(full, pattern))


FAMILIES = ("cnn", "transformer", "mlp")


def infer_family(model: nn.Module) -> str:
    """The architecture family the paper's §4.5 compares: ``transformer`` when any module is an
    attention layer (hybrids count as transformers), else ``cnn`` when any convolution slides
    (kernel > 1 with a stride smaller than the kernel; a patchifying stem does not count, so
    MLP-Mixer and ResMLP stay ``mlp``), else ``mlp``. A model spec's ``family`` overrides it."""
    convolutional = False
    for module in model.modules():
        if _is_attention(module):
            return "transformer"
        if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1 and module.stride[0] < module.kernel_size[0]:
            convolutional = True
    return "cnn" if convolutional else "mlp"


def _is_attention(module: nn.Module) -> bool:
    """Self-attention by name (``...Attention``) or by its projections (a ``qkv``, ``q`` + ``kv`` or
    ``q``/``k``/``v`` child: XCiT's XCA, Twins' and CoaT's attention), not channel attention such
    as squeeze-excite, CBAM or ResNeSt's split attention, which have none."""
    if isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention"):
        return True
    children = {name for name, _ in module.named_children()}
    return "qkv" in children or {"q", "kv"} <= children or {"q", "k", "v"} <= children


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_origin(spec: ModelSpec, hub: str) -> str:
    """Where the weights came from, for the artifact attrs: a file, a hub name, or random init."""
    if spec.weights:
        return f"file:{Path(spec.weights).resolve()}"
    return f"hub:{hub}" if spec.pretrained else "random init"


def create_model(spec: ModelSpec | str | dict[str, Any], classes: list[str] | None = None,
                 registry: Registry | None = None) -> Classifier:
    """The one entry point: spec (or id) -> :class:`Classifier` in eval mode on the CPU."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.parse(spec)
    registry = registry or get_registry()
    source: ModelSource = registry.get("model_sources", spec.source)
    try:
        source.check(spec)
    except KtError as e:  # a check's message does not name the model: its caller does
        raise KtError(f"model {spec.slug!r}: {e}") from None
    spec.check_weights()
    model = source.create(spec, classes)
    if classes is not None and model.num_classes != len(classes):
        raise KtError(f"model {spec.slug!r} predicts {model.num_classes} classes but the dataset has "
                      f"{len(classes)}. Give the dataset the model's label space (dataset.classes_file: one class "
                      "folder name per line, in the order of the model's outputs), or set num_classes in the "
                      "model's config entry and load weights trained for the dataset's classes.")
    return model.eval()
