"""Knowledge transfer from teacher(s) to a student with a strategy, in modules:

* :mod:`~kt.transfer.loop`: the training loop (:func:`transfer`);
* :mod:`~kt.transfer.cache`: the frozen-output cache (:func:`build_cache`) and the frozen models' logits;
* :mod:`~kt.transfer.evaluation`: eval logits and the run's results;
* :mod:`~kt.transfer.rows`: the rows of ``metrics.parquet`` (epoch and step rows), its schema;
* :mod:`~kt.transfer.run_folder`: :class:`RunFolder`, every file name of a run folder, its completion
  marker and resume state;
* :mod:`~kt.transfer.views`: what each model sees of a batch.

The names below are imported on first use, so that ``from kt.transfer import RunFolder`` (or
``TransferSettings``) loads no torch: the workflow names a rule's outputs with it at parse time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULES = {
    "kt.transfer.loop": ("CHECK_EVERY", "as_teachers", "transfer"),
    "kt.transfer.cache": ("CACHE_FLUSH_EVERY", "CACHE_NAMES", "COPY_ROWS", "FrozenCache", "FrozenLogits",
                          "build_cache", "cache_attrs", "check_cache_space", "load_cache"),
    "kt.transfer.evaluation": ("eval_logits", "initial_eval", "write_run"),
    "kt.transfer.rows": ("METRIC_COLUMNS", "epoch_row", "epoch_rows", "metrics_table", "step_row"),
    "kt.transfer.run_folder": ("RunFolder",),
    "kt.transfer.views": ("reference_models", "view_for"),
    "kt.settings": ("TransferSettings",),
    "kt.strategies": ("make_strategy",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "CACHE_FLUSH_EVERY", "CACHE_NAMES", "CHECK_EVERY", "COPY_ROWS", "FrozenCache", "FrozenLogits", "METRIC_COLUMNS",
    "RunFolder", "TransferSettings", "as_teachers", "build_cache", "cache_attrs", "check_cache_space", "epoch_row",
    "epoch_rows", "eval_logits", "initial_eval", "load_cache", "make_strategy", "metrics_table", "reference_models",
    "step_row", "transfer", "view_for", "write_run",
]


def __getattr__(name: str) -> Any:
    """A re-exported name, imported from its module on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from kt.settings import TransferSettings
    from kt.strategies import make_strategy
    from kt.transfer.cache import (
        CACHE_FLUSH_EVERY,
        CACHE_NAMES,
        COPY_ROWS,
        FrozenCache,
        FrozenLogits,
        build_cache,
        cache_attrs,
        check_cache_space,
        load_cache,
    )
    from kt.transfer.evaluation import eval_logits, initial_eval, write_run
    from kt.transfer.loop import CHECK_EVERY, as_teachers, transfer
    from kt.transfer.rows import METRIC_COLUMNS, epoch_row, epoch_rows, metrics_table, step_row
    from kt.transfer.run_folder import RunFolder
    from kt.transfer.views import reference_models, view_for
