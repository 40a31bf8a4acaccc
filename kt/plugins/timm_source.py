"""The ``timm`` model source: ``timm:ARCH[.TAG]``; local files go through timm's pretrained-config
overlay (``file=``), so a user's checkpoint loads exactly as a hub one would."""

from __future__ import annotations

import functools

import timm
import timm.data

import kt
from kt.errors import KtError
from kt.models import Classifier, ModelSource, ModelSpec, weights_origin
from kt.preprocess import Preprocessing


class TimmSource(ModelSource):
    tag_separator = "."

    def known_models(self) -> list[str]:
        return _timm_models()

    def known_tags(self, base: str) -> list[str]:
        return [name.split(".", 1)[1] for name in timm.list_pretrained(f"{base}.*")]

    def base_name(self, arch: str) -> str:
        return arch.split(".", 1)[0]

    def list_models(self, pattern: str = "*", pretrained: bool = False) -> list[str]:
        """timm's own listing (natural order); ``pretrained`` gives ``arch.tag`` names with hub weights."""
        return list(timm.list_pretrained(pattern) if pretrained else timm.list_models(pattern))

    def create(self, spec: ModelSpec, classes: list[str] | None) -> Classifier:
        kwargs = dict(spec.args)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        pretrained = spec.pretrained and (spec.weights is not None or "." in spec.arch)
        if spec.weights is not None:
            # custom_load False: timm's state-dict loader (key filter, head resizing) for every .pth /
            # .safetensors file, also for archs whose hub weights use a custom loader (ViT: JAX .npz),
            # which older timm versions applied to any local file
            overlay = {"file": str(spec.weights), "custom_load": str(spec.weights).endswith(".npz")}
            if spec.num_classes is not None:
                overlay["num_classes"] = spec.num_classes
            kwargs["pretrained_cfg_overlay"] = overlay
        try:
            model = timm.create_model(spec.arch, pretrained=pretrained, **kwargs)
        except (RuntimeError, OSError, TypeError, ValueError) as e:
            raise KtError(f"model {spec.slug!r}: timm could not build {spec.arch!r} "
                          f"({'weights ' + str(spec.weights) if spec.weights else 'hub weights'}): {e}. "
                          "Check num_classes/args match the weight file, or set 'weights' to a local "
                          "file when offline.") from None
        cfg = timm.data.resolve_data_config({}, model=model)
        prep = Preprocessing(size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                             interpolation=cfg["interpolation"], crop_pct=float(cfg["crop_pct"]),
                             crop_mode=cfg.get("crop_mode") or "center")  # its transform: kt's default, timm's
        return Classifier(model, model.get_classifier(), prep.updated(spec.preprocess), model.num_classes,
                          spec, weights_origin(spec, f"timm/{spec.arch}") if pretrained else "random init", classes)


@functools.cache
def _timm_models() -> list[str]:
    """timm's architectures, listed once per process (sorting 1,800 names per model check adds up)."""
    return timm.list_models()


@kt.hookimpl
def register_model_sources(register):
    register("timm", TimmSource())
