"""kt: find and transfer complementary knowledge between pretrained image classifiers."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("kt")
"""Decorator for plugin hook implementations: ``@kt.hookimpl def register_strategies(register): ...``."""

__all__ = ["hookimpl", "__version__"]
