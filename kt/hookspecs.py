"""The hooks a kt plugin can implement.

Each hook receives a ``register`` callback: ``register(name, obj)``. Built-in plugins
(``kt/plugins``) use exactly these hooks, as do third-party packages (entry-point group ``kt``)
and plugin folders named in the config.
"""

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("kt")

Register = Callable[[str, Any], None]


@hookspec
def register_model_sources(register: Register) -> None:
    """Register model sources: ``register("timm", TimmSource())``; ids look like ``timm:resnet50``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset factories: ``register("fashion_mnist", factory)``; see ``kt.data.DatasetFactory``."""


@hookspec
def register_strategies(register: Register) -> None:
    """Register transfer strategies: ``register("kl_dp", strategy)``; see ``kt.strategies``."""


@hookspec
def register_trackers(register: Register) -> None:
    """Register experiment trackers: ``register("tensorboard", factory)``; each row of a run's metrics
    goes to the trackers named in ``transfer.trackers``; see ``kt.trackers.Tracker``."""
