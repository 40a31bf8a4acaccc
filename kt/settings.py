"""A transfer's settings and its strategy, importable without torch: the workflow builds every
configured strategy at parse time (to learn whether it needs a teacher and to check its options)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kt.errors import KtError
from kt.schema import default, defaults

if TYPE_CHECKING:
    from kt.registry import Registry
    from kt.strategies import Strategy

_DEFAULTS = defaults("transfer")


@dataclass
class TransferSettings:
    """The config's ``transfer`` keys and ``device``, defaults from the schema (the paper's SGD:
    momentum 0.9, weight decay 1e-4, lr 1e-4 x batch/256)."""

    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    auto_batch_size: bool = _DEFAULTS["auto_batch_size"]
    lr: float | None = _DEFAULTS["lr"]
    momentum: float = _DEFAULTS["momentum"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    augment: str = _DEFAULTS["augment"]
    seed: int = _DEFAULTS["seeds"][0]  # one of transfer.seeds: each seed is its own run
    eval_every: int = _DEFAULTS["eval_every"]
    cache_views: int = _DEFAULTS["cache_views"]
    cache_dtype: str = _DEFAULTS["cache_dtype"]
    workers: int = _DEFAULTS["workers"]  # never changes a result (kt.data.Loader)
    device: str = default("device")
    decode: str = default("decode")  # evaluation and un-augmented views: reference or fast (kt.preprocess)
    eval_batch_size: int = 512
    options: dict[str, Any] = field(default_factory=dict)

    def learning_rate(self, strategy: Strategy) -> float:
        """Hands the strategy the batch size first (:meth:`Strategy.configure`: XE-KL+MCL scales its lr
        and slow-weight interval with it), then: its own lr, else the setting, else 1e-4 x batch / 256."""
        strategy.configure(self.batch_size)
        return strategy.lr or self.lr or 1e-4 * self.batch_size / 256

    def digest(self) -> str:
        skip = {"device", "eval_batch_size", "workers"}
        return hashlib.sha256(json.dumps({k: v for k, v in asdict(self).items() if k not in skip},
                                         sort_keys=True).encode()).hexdigest()[:16]


def make_strategy(name: str, options: dict[str, Any], registry: Registry) -> Strategy:
    """The strategy registered as ``name``, built with its config options; whatever its own checks
    raise ends as one line naming the config key and the plugin."""
    factory = registry.get("strategies", name)
    try:
        return factory(**options)
    except KtError:
        raise
    except TypeError as e:
        raise KtError(f"strategy {name!r} does not accept options {sorted(options)} "
                      f"(config key transfer.options.{name}): {e}.") from None
    except Exception as e:  # noqa: BLE001 - a plugin's own validation (ValueError, assert, ...)
        raise KtError(f"config key transfer.options.{name}: {registry.who('strategies', name)} rejected the "
                      f"options {options}: {type(e).__name__}: {e}") from None
