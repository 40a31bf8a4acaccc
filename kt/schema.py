"""The config schema (``kt/config.schema.yaml``, linked from ``workflow/schemas/``): the one source
of every default. The workflow fills a config from it; kt's CLI options and function defaults read
the same values here instead of restating them."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

SCHEMA_FILE = Path(__file__).with_name("config.schema.yaml")


@cache
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_FILE.read_text())


def default(key: str) -> Any:
    """The default of a top-level key (``device``, ``alpha``, ...)."""
    return schema()["properties"][key]["default"]


def defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of the keys of one config section (``transfer``, ``extract``, ...)."""
    properties = schema()["properties"][section].get("properties", {})
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


def choices(section: str, key: str) -> tuple[str, ...]:
    """The allowed values of a key (its ``enum``, or its items' for a list)."""
    spec = schema()["properties"][section]["properties"][key]
    return tuple(spec.get("enum") or spec["items"]["enum"])


def item_defaults(section: str, key: str) -> dict[str, Any]:
    """Defaults of the entries of a list in a section (e.g. ``zoo``, ``models``: one zoo model)."""
    properties = schema()["properties"][section]["properties"][key]["items"].get("properties", {})
    return {name: spec["default"] for name, spec in properties.items() if "default" in spec}
