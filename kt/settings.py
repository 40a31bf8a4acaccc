"""A transfer's settings, importable without torch: the workflow reads their fields at parse time to
pass each rule its settings. Strategies are built by :func:`kt.strategies.make_strategy`, which needs torch."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kt.schema import default, defaults

if TYPE_CHECKING:
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
    log_every: int = _DEFAULTS["log_every"]  # a step row of metrics.parquet every N steps of an epoch (0: none)
    trackers: list[str | dict[str, Any]] = field(default_factory=lambda: list(_DEFAULTS["trackers"]))
    results: str | None = None  # the workflow's results folder, where trackers keep their stores (kt.trackers)

    # what never changes a result (the weights, the evaluations): out of the digest, so that a run
    # resumes or a finished stage counts as done whatever they are
    NOT_RESULTS = frozenset({"device", "eval_batch_size", "workers", "log_every", "trackers", "results"})
    # what only a training run reads (its rows and trackers): a frozen-output cache build is not given them,
    # so changing them does not rebuild caches
    RUN_ONLY = frozenset({"log_every", "trackers", "results"})

    def learning_rate(self, strategy: Strategy) -> float:
        """Hands the strategy the batch size first (:meth:`Strategy.configure`: XE-KL+MCL scales its lr
        and slow-weight interval with it), then: its own lr, else the setting, else 1e-4 x batch / 256."""
        strategy.configure(self.batch_size)
        return strategy.lr or self.lr or 1e-4 * self.batch_size / 256

    def digest(self) -> str:
        """What ``state.pt`` and a finished sequential stage must match: every setting but
        :attr:`NOT_RESULTS` (a digest computed before they existed stays the same)."""
        return hashlib.sha256(json.dumps({k: v for k, v in asdict(self).items() if k not in self.NOT_RESULTS},
                                         sort_keys=True).encode()).hexdigest()[:16]

