"""The plugin registry: one pluggy manager, one table of what each plugin registered.

Built-ins (``kt.plugins.*``), entry-point packages (group ``kt``), plugin folders and plugin
objects handed over in code all go through the same hooks. A plugin that fails to load (import
error, unknown hook) is recorded with its name, origin and error and left out, so the others keep
working; registering one name twice is an error naming both plugins.

``KT_NO_ENTRY_POINTS=1`` (or ``Registry(entry_points=False)``) skips installed entry points, so a
test suite or a reproducible run does not depend on what else is installed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from kt import __version__ as kt_version
from kt import hookspecs
from kt.errors import KtError, closest

log = logging.getLogger("kt")

BUILTIN_PLUGINS = ("kt.plugins.timm_source", "kt.plugins.open_clip_source",
                   "kt.plugins.torchvision_source", "kt.plugins.datasets", "kt.plugins.strategies",
                   "kt.plugins.trackers")
ENTRY_POINT_GROUP = "kt"
BUILTIN_CODE = f"kt {kt_version}"  # the code version of built-in plugins (and of kt's own rules)
NO_ENTRY_POINTS_ENV = "KT_NO_ENTRY_POINTS"

# kind -> (hook name, noun used in messages)
KINDS = {
    "model_sources": ("register_model_sources", "model source"),
    "datasets": ("register_datasets", "dataset"),
    "strategies": ("register_strategies", "strategy"),
    "trackers": ("register_trackers", "tracker"),
}
OPTION_KINDS = ("datasets", "strategies", "trackers")  # kinds registered as factories taking options
REQUIRED = "(required)"  # how options() marks a parameter without a default


def options(factory: Any) -> dict[str, Any] | None:
    """The keyword options a registered factory accepts, with their defaults (``REQUIRED`` when
    none); ``None`` when it takes any keyword (``**kwargs``) or cannot be inspected."""
    if not callable(factory):
        return {}
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name: REQUIRED if p.default is p.empty else p.default
            for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def entry_points_enabled(entry_points: bool | None = None) -> bool:
    """An explicit argument wins; otherwise on unless ``KT_NO_ENTRY_POINTS`` is set to a true value."""
    if entry_points is not None:
        return entry_points
    return os.environ.get(NO_ENTRY_POINTS_ENV, "").strip().lower() not in ("1", "true", "yes")


def check_declared(options: Iterable[str], accepted: dict[str, Any] | None, plugin: str, where: str) -> None:
    """Each of ``options`` one that the plugin's factory declares (``accepted``, from
    :meth:`Registry.options`; None: it takes any keyword), else a KtError naming ``where`` and the closest."""
    for option in options if accepted is not None else ():
        if option not in accepted:
            raise KtError(f"{where}.{option}: {plugin} has no option {option!r}.{closest(option, accepted)} "
                          f"Its options: {', '.join(accepted) or 'none'} (see `kt plugins`).")


@dataclass
class _Entry:
    obj: Any
    plugin: str


def file_digest(path: str | Path) -> str:
    """A plugin file's version: its content digest (editing the file changes it, touching it does not)."""
    return f"{Path(path).name} sha256:{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"


@dataclass
class Failure:
    """A plugin that could not be loaded, and why."""

    name: str
    origin: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.origin}) failed to load: {self.error}"


@dataclass
class Registry:
    """What every loaded plugin registered, by kind and name, and which plugins failed."""

    plugin_dirs: tuple[str, ...] = ()
    extra_plugins: tuple[Any, ...] = ()
    entry_points: bool | None = None
    pm: pluggy.PluginManager = field(init=False)
    origins: dict[str, str] = field(init=False, default_factory=dict)
    versions: dict[str, str] = field(init=False, default_factory=dict)  # plugin -> its code's version
    tables: dict[str, dict[str, _Entry]] = field(init=False, default_factory=dict)
    failures: list[Failure] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.pm = pluggy.PluginManager("kt")
        self.pm.add_hookspecs(hookspecs)
        for modname in BUILTIN_PLUGINS:
            self._add(importlib.import_module(modname), modname, "builtin", BUILTIN_CODE)
        if entry_points_enabled(self.entry_points):
            self._load_entry_points()
        for folder in self.plugin_dirs:
            self._load_folder(Path(folder))
        for i, plugin in enumerate(self.extra_plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
            self._add(plugin, name, "registered in code", f"{name} (registered in code)")
        self._collect()
        for failure in self.failures:
            log.warning("%s", failure)

    def _add(self, plugin: Any, name: str, origin: str, version: str) -> None:
        """Register one plugin; one that implements an unknown hook is recorded and left out.
        ``version`` names the code: kt's version for built-ins, a distribution's for entry points,
        the file's digest for folder plugins (what a result records and the workflow reruns on)."""
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as e:  # registered already; a hook's bad signature
            self.failures.append(Failure(name, origin, str(e)))
            return
        self.origins[name] = origin
        self.versions[name] = version
        unknown = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [] if c.spec is None)
        if unknown:
            self.pm.unregister(plugin)
            self.failures.append(Failure(name, origin, (
                f"implements an unknown hook {', '.join(unknown)}. "
                f"Known hooks: {', '.join(h for h, _ in KINDS.values())}.")))

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else f"{ep.value} (unknown distribution)"
            origin = f"entry point {ep.name} = {ep.value} ({dist})"
            try:
                plugin = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken third-party plugin must not take kt down
                self.failures.append(Failure(ep.name, origin, f"{type(e).__name__}: {e}"))
                continue
            self._add(plugin, ep.name, origin, dist)

    def _load_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise KtError(f"plugin folder {str(folder)!r} (config key plugin_dirs) does not exist; "
                          "create it or remove it from plugin_dirs.")
        for path in sorted(folder.glob("*.py")):
            name = f"kt_local_{path.stem}"
            if self.pm.has_plugin(name) or name in {f.name for f in self.failures}:
                name = f"kt_local_{path.parent.name}_{path.stem}"  # same file name in another folder
            # the module's import name is unique per file, whatever the plugin's display name
            modname = f"kt_local_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}_{path.stem}"
            try:
                spec = importlib.util.spec_from_file_location(modname, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 - report it by name and keep the other plugins
                sys.modules.pop(modname, None)
                self.failures.append(Failure(name, str(path), f"{type(e).__name__}: {e}"))
                continue
            self._add(module, name, str(path), file_digest(path))

    def _collect(self) -> None:
        """Call every hook; a hook function that raises is that plugin's failure (its names are dropped)."""
        broken: set[str] = set()
        for kind, (hook, noun) in KINDS.items():
            table: dict[str, _Entry] = {}
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin_name in broken:
                    continue

                def register(name: str, obj: Any, _plugin: str = impl.plugin_name,
                             _table: dict = table, _noun: str = noun) -> None:
                    if name in _table:
                        raise KtError(f"{_noun} {name!r} is registered twice: by plugin "
                                      f"{_table[name].plugin!r} and by plugin {_plugin!r}; "
                                      "rename one of them or uninstall one plugin.")
                    _table[name] = _Entry(obj, _plugin)
                try:
                    impl.function(register=register)
                except KtError:
                    raise
                except Exception as e:  # noqa: BLE001 - a plugin's bug: name it, keep the others
                    name = impl.plugin_name
                    broken.add(name)
                    self.failures.append(Failure(name, self.origins.get(name, "?"),
                                                 f"{hook} raised {type(e).__name__}: {e}"))
            self.tables[kind] = table
        for name in broken:
            for table in self.tables.values():
                for key in [k for k, e in table.items() if e.plugin == name]:
                    del table[key]
            self.pm.unregister(name=name)

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name``; a KtError with the closest names otherwise (and the
        plugins that failed to load, which may be the ones that should have registered it)."""
        table = self.tables[kind]
        if name not in table:
            noun = KINDS[kind][1]
            failed = "".join(f" Note: {f}" for f in self.failures)
            raise KtError(f"unknown {noun} {name!r}.{closest(name, table)} "
                          f"Known: {', '.join(sorted(table))}.{failed}")
        return table[name].obj

    def code(self, kind: str, name: str) -> str:
        """The version of the code behind registered ``name`` (see :meth:`_add`)."""
        self.get(kind, name)
        return self.versions[self.tables[kind][name].plugin]

    def who(self, kind: str, name: str) -> str:
        """``strategy 'NAME' (plugin P, ORIGIN)``: which plugin registered ``name``, for messages."""
        plugin = self.tables[kind][name].plugin
        return f"{KINDS[kind][1]} {name!r} (plugin {plugin!r}, {self.origins.get(plugin, '?')})"

    def code_table(self) -> dict[str, dict[str, str]]:
        """kind -> name -> :meth:`code`, for everything registered."""
        return {kind: {name: self.versions[entry.plugin] for name, entry in table.items()}
                for kind, table in self.tables.items()}

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables[kind])

    def options(self, kind: str, name: str) -> dict[str, Any] | None:
        """The options of a registered dataset factory, strategy or tracker (see :func:`options`)."""
        return options(self.get(kind, name))

    def plugin_records(self) -> list[dict[str, Any]]:
        """One record per plugin: name, origin, status, what it registered and, for datasets,
        strategies and trackers, their options with defaults (for ``kt plugins``); failed plugins last."""
        out = []
        for name, plugin in self.pm.list_name_plugin():  # in load order
            registered = {kind: sorted(n for n, e in table.items() if e.plugin == name)
                          for kind, table in self.tables.items()}
            record = {"name": name, "origin": self.origins.get(name, "?"), "code": self.versions.get(name, "?"),
                      "status": "loaded",
                      "hooks": sorted(h.name for h in self.pm.get_hookcallers(plugin) or []),
                      "registered": {k: v for k, v in registered.items() if v}}
            opts = {kind: {n: _jsonable(options(self.tables[kind][n].obj)) for n in names}
                    for kind, names in record["registered"].items() if kind in OPTION_KINDS}
            if opts:
                record["options"] = opts
            out.append(record)
        out += [{"name": f.name, "origin": f.origin, "status": "failed", "error": f.error} for f in self.failures]
        return out


def _jsonable(opts: dict[str, Any] | None) -> dict[str, Any] | str:
    if opts is None:
        return "any keyword"
    return {k: v if isinstance(v, str | int | float | bool | type(None)) else repr(v) for k, v in opts.items()}


_cache: dict[tuple[tuple[str, ...], bool], Registry] = {}


def get_registry(plugin_dirs: tuple[str, ...] | list[str] = (), entry_points: bool | None = None) -> Registry:
    """The registry for these plugin folders, built once per process."""
    folders = tuple(dict.fromkeys(str(Path(p).resolve()) for p in plugin_dirs))
    key = (folders, entry_points_enabled(entry_points))
    if key not in _cache:
        _cache[key] = Registry(plugin_dirs=folders, entry_points=key[1])
    return _cache[key]
