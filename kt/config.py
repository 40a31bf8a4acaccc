"""A config file as the workflow reads it: validated against the JSON schema (kt/config.schema.yaml,
linked from workflow/schemas/) with its defaults filled in, and the plugin folders it names.
Importable without torch: the workflow reads it at every dry run; :mod:`kt.check` resolves the
config's names against the plugins.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from kt.errors import KtError, closest
from kt.spec import ModelSpec


def _explain(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    message = error.message
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        hints = "".join(closest(u, known) for u in unknown)
        message = f"unknown key(s) {unknown}.{hints} Allowed here: {', '.join(known)}."
    return f"{where}: {message}"


def _fill_defaults(schema: dict[str, Any], config: Any) -> None:
    """Insert the schema's defaults for missing keys, recursively (objects and arrays of objects)."""
    if isinstance(config, list) and isinstance(schema.get("items"), dict):
        for item in config:
            _fill_defaults(schema["items"], item)
    if not isinstance(config, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if key in config:
            _fill_defaults(sub, config[key])


def validate(config: dict[str, Any], schema_file: str | Path) -> None:
    """Fill in defaults, then report every schema violation at once, each with its key path."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    _fill_defaults(schema, config)
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_explain(e) for e in errors)
        raise KtError(f"the config is invalid:\n  {lines}\nEvery key is documented in config.yaml.")


def plugin_folders(config: dict[str, Any], workflow_dir: str | Path | None = None) -> list[str]:
    """Absolute plugin folders: the workflow's own ``plugins/`` (when it has one), then the
    config's ``plugin_dirs`` (relative to the working directory)."""
    folders = [Path(workflow_dir) / "plugins"] if workflow_dir and (Path(workflow_dir) / "plugins").is_dir() else []
    folders += [Path(d) for d in config.get("plugin_dirs") or []]
    return list(dict.fromkeys(str(f.resolve()) for f in folders))


def group_name(group: dict[str, Any]) -> str:
    """A group's name: its ``name``, else ``top{k}`` or its teachers joined by '+'."""
    if group.get("name"):
        return group["name"]
    return f"top{group['top']}" if group.get("top") else "+".join(group["teachers"])


def check_files(config: dict[str, Any]) -> None:
    """The files the config names exist: every model's ``weights`` file, ``dataset.root`` and
    ``dataset.classes_file`` (a split folder is checked where the dataset is read). Cheap: the
    workflow runs it on every parse, so a dry run fails on a missing file instead of a queued job."""
    for i, entry in enumerate(config.get("models") or []):
        try:
            ModelSpec.parse(entry).check_weights()
        except TypeError:  # a misspelled key: kt.check names it
            continue
        except KtError as e:
            raise KtError(f"config key models[{i}].weights: {e}") from None
    dataset = config.get("dataset") or {}
    for key, exists in (("root", Path.is_dir), ("classes_file", Path.is_file)):
        if dataset.get(key) and not exists(Path(dataset[key])):
            kind = "folder" if key == "root" else "file"
            raise KtError(f"config key dataset.{key}: {dataset[key]!r} is not a {kind}; fix the path.")
