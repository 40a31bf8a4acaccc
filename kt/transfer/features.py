"""The features a strategy declares (:attr:`kt.strategies.Strategy.features`), read from a model's
forward pass by forward hooks on named modules, as torchdistill's ``ForwardHookManager`` does: the
model runs once and its logits and the named modules' outputs come back together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kt.errors import KtError, closest
from kt.models import Classifier

POOLED = "pooled"  # the input of the final linear layer: the pooled penultimate features


class FeatureTap:
    """A model with forward hooks on the modules ``names`` (module paths in ``model.body``, as
    ``named_modules`` spells them, or :data:`POOLED`): calling it gives (logits, {name: output}).
    The hooks keep nothing outside a call, so evaluation passes through the same model cost nothing."""

    def __init__(self, model: Classifier, names: Sequence[str], strategy: str = "the strategy") -> None:
        self.model, self.names = model, tuple(names)
        self._store: dict[str, torch.Tensor] | None = None
        modules = dict(model.body.named_modules())
        for name in self.names:
            if name == POOLED:
                continue
            if name not in modules:
                raise KtError(f"{strategy} reads the features of module {name!r}, which model {model.spec.slug!r} "
                              f"does not have (its names: model.body.named_modules()).{closest(name, modules)} "
                              f"{POOLED!r} names the pooled penultimate features.")
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):  # noqa: ANN202 - a forward hook
        def save(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if self._store is not None:
                self._store[name] = output
        return save

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._store = {}
        try:
            if POOLED in self.names:
                logits, pooled = self.model.logits_and_features(x)
                self._store[POOLED] = pooled
            else:
                logits = self.model(x)
            return logits, self._store
        finally:
            self._store = None

    def dims(self, side: int, device: torch.device) -> dict[str, int]:
        """Each feature's flattened size, from one forward pass of two blank images in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                _, features = self(torch.zeros(2, 3, side, side, device=device))
        finally:
            self.model.train(was_training)
        return {name: f.flatten(1).shape[1] for name, f in features.items()}
