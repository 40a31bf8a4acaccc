"""The plugin registry: one pluggy manager, one table of what each plugin registered.

Built-ins (``kt.plugins.*``), entry-point packages (group ``kt``) and plugin folders from the
config all go through the same hooks; registering one name twice is an error naming both plugins.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from kt import hookspecs
from kt.errors import KtError, closest

BUILTIN_PLUGINS = ("kt.plugins.timm_source", "kt.plugins.open_clip_source",
                   "kt.plugins.torchvision_source", "kt.plugins.datasets", "kt.plugins.strategies")

# kind -> (hook name, noun used in messages)
KINDS = {
    "model_sources": ("register_model_sources", "model source"),
    "datasets": ("register_datasets", "dataset"),
    "strategies": ("register_strategies", "strategy"),
}


@dataclass
class _Entry:
    obj: Any
    plugin: str


@dataclass
class Registry:
    """What every loaded plugin registered, by kind and name."""

    plugin_dirs: tuple[str, ...] = ()
    extra_plugins: tuple[Any, ...] = ()
    pm: pluggy.PluginManager = field(init=False)
    origins: dict[str, str] = field(init=False, default_factory=dict)
    tables: dict[str, dict[str, _Entry]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.pm = pluggy.PluginManager("kt")
        self.pm.add_hookspecs(hookspecs)
        for modname in BUILTIN_PLUGINS:
            self.pm.register(importlib.import_module(modname), name=modname)
            self.origins[modname] = "builtin"
        for dist, _ in self._load_entry_points():
            self.origins[dist[0]] = f"entry point {dist[1]}"
        for folder in self.plugin_dirs:
            self._load_folder(Path(folder))
        for i, plugin in enumerate(self.extra_plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
            self.pm.register(plugin, name=name)
            self.origins[name] = "registered in code"
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            name = self.pm.get_name(e.plugin) or repr(e.plugin)
            raise KtError(f"plugin {name!r} ({self.origins.get(name, '?')}) implements "
                          f"an unknown hook: {e}. Known hooks: "
                          f"{', '.join(h for h, _ in KINDS.values())}.") from None
        self._collect()

    def _load_entry_points(self) -> list[tuple[tuple[str, str], Any]]:
        before = set(self.pm.get_plugins())
        self.pm.load_setuptools_entrypoints("kt")
        found = []
        for plugin, dist in self.pm.list_plugin_distinfo():
            if plugin not in before:
                found.append(((self.pm.get_name(plugin), f"{dist.project_name} {dist.version}"), plugin))
        return found

    def _load_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise KtError(f"plugin folder {str(folder)!r} (config key plugin_dirs) does not exist; "
                          "create it or remove it from plugin_dirs.")
        for path in sorted(folder.glob("*.py")):
            name = f"kt_local_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            self.pm.register(module, name=name)
            self.origins[name] = str(path)

    def _collect(self) -> None:
        for kind, (hook, noun) in KINDS.items():
            table: dict[str, _Entry] = {}
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                def register(name: str, obj: Any, _plugin: str = impl.plugin_name,
                             _table: dict = table, _noun: str = noun) -> None:
                    if name in _table:
                        raise KtError(f"{_noun} {name!r} is registered twice: by plugin "
                                      f"{_table[name].plugin!r} and by plugin {_plugin!r}; "
                                      "rename one of them or uninstall one plugin.")
                    _table[name] = _Entry(obj, _plugin)
                impl.function(register=register)
            self.tables[kind] = table

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name``; a KtError with the closest names otherwise."""
        table = self.tables[kind]
        if name not in table:
            noun = KINDS[kind][1]
            raise KtError(f"unknown {noun} {name!r}.{closest(name, table)} "
                          f"Known: {', '.join(sorted(table))}.")
        return table[name].obj

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables[kind])

    def describe(self) -> list[dict[str, Any]]:
        """One record per plugin: name, origin, and what it registered (for ``kt plugins``)."""
        out = []
        for plugin in self.pm.get_plugins():
            name = self.pm.get_name(plugin)
            registered = {kind: sorted(n for n, e in table.items() if e.plugin == name)
                          for kind, table in self.tables.items()}
            out.append({"name": name, "origin": self.origins.get(name, "?"),
                        "hooks": sorted(h.name for h in self.pm.get_hookcallers(plugin) or []),
                        "registered": {k: v for k, v in registered.items() if v}})
        return out


_cache: dict[tuple[str, ...], Registry] = {}


def get_registry(plugin_dirs: tuple[str, ...] | list[str] = ()) -> Registry:
    """The registry for these plugin folders, built once per process."""
    key = tuple(str(Path(p).resolve()) for p in plugin_dirs)
    if key not in _cache:
        _cache[key] = Registry(plugin_dirs=key)
    return _cache[key]
