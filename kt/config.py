"""The workflow's view of the config: the model list and the checks a schema cannot express.

The JSON schema (kt/config.schema.yaml, linked from workflow/schemas/) catches misspelled keys and wrong types;
:func:`check` then resolves every name against the plugin registry, so ``snakemake -n`` fails on
an unknown model, dataset or strategy before any job runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from kt.data import Dataset, DatasetInfo, check_augment, open_dataset
from kt.errors import KtError, closest
from kt.models import ModelSource, ModelSpec
from kt.registry import Registry, get_registry
from kt.transfer import make_strategy


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


def zoo_specs(config: dict[str, Any], dataset: Dataset) -> dict[str, ModelSpec]:
    """Zoo entries as model specs whose weights are the zoo's own checkpoints under ``results``.
    Preprocessing and class count come from what the dataset declares, overridable with
    ``zoo.preprocess`` and ``zoo.num_classes``."""
    zoo = config.get("zoo") or {}
    preprocess = {**DatasetInfo.of(dataset).preprocess(), **(zoo.get("preprocess") or {})}
    num_classes = zoo.get("num_classes") or len(dataset.classes)
    specs = {}
    for entry in zoo.get("models", []):
        specs[entry["name"]] = ModelSpec(
            id=entry["id"], name=entry["name"], args=entry.get("args", {}), num_classes=num_classes,
            family=entry.get("family"),
            preprocess=preprocess, weights=f"{config.get('results', 'results')}/zoo/{entry['name']}.pth")
    return specs


def model_specs(config: dict[str, Any], dataset: Dataset) -> dict[str, ModelSpec]:
    """Every model of the grid by slug: zoo models first, then the ``models`` list."""
    specs = zoo_specs(config, dataset)
    for i, entry in enumerate(config.get("models") or []):
        try:
            spec = ModelSpec.parse(entry)
        except TypeError as e:
            raise KtError(f"config key models[{i}]: {e}; allowed keys: id, name, weights, num_classes, "
                          "args, preprocess.") from None
        if spec.slug in specs:
            raise KtError(f"config key models[{i}]: model name {spec.slug!r} is used twice; "
                          "give one of them a distinct 'name'.")
        specs[spec.slug] = spec
    return specs


def check_dataset(config: dict[str, Any], registry: Registry) -> Dataset:
    """The configured dataset, built once: unknown or missing options and a missing folder fail here."""
    try:
        return open_dataset(config["dataset"], registry)
    except KtError as e:
        message = str(e)
        raise KtError(message if message.startswith("config key") else f"config key dataset: {message}") from None


def check_strategy_options(config: dict[str, Any], registry: Registry) -> None:
    """``transfer.options.NAME.KEY``: NAME a registered strategy, KEY one of its declared options."""
    for name, opts in ((config.get("transfer") or {}).get("options") or {}).items():
        key = f"transfer.options.{name}"
        try:
            accepted = registry.options("strategies", name)
        except KtError as e:
            raise KtError(f"config key {key}: {e}") from None
        for option in opts if accepted is not None else ():
            if option not in accepted:
                raise KtError(f"config key {key}.{option}: strategy {name!r} has no option {option!r}."
                              f"{closest(option, accepted)} Its options: {', '.join(accepted) or 'none'} "
                              "(see `kt plugins`).")


def check_augmentations(config: dict[str, Any], dataset: Dataset) -> None:
    for i, entry in enumerate((config.get("zoo") or {}).get("models", [])):
        check_augment(entry.get("augment", "none"), dataset, f"zoo.models[{i}].augment")
    check_augment((config.get("transfer") or {}).get("augment", "none"), dataset, "transfer.augment")


def plugin_folders(config: dict[str, Any], workflow_dir: str | Path | None = None) -> list[str]:
    """Absolute plugin folders: the workflow's own ``plugins/`` (when it has one), then the
    config's ``plugin_dirs`` (relative to the working directory)."""
    folders = [Path(workflow_dir) / "plugins"] if workflow_dir and (Path(workflow_dir) / "plugins").is_dir() else []
    folders += [Path(d) for d in config.get("plugin_dirs") or []]
    return list(dict.fromkeys(str(f.resolve()) for f in folders))


def check(config: dict[str, Any], registry: Registry | None = None) -> dict[str, ModelSpec]:
    """Resolve every name and option in the config against the registry (default: the config's
    plugin folders); return the model specs."""
    registry = registry or get_registry(plugin_folders(config))
    dataset = check_dataset(config, registry)
    specs = model_specs(config, dataset)
    if len(specs) < 2:
        raise KtError("the config names fewer than two models (zoo.models + models); "
                      "complementarity needs at least a teacher and a student.")
    for slug, spec in specs.items():
        try:
            source: ModelSource = registry.get("model_sources", spec.source)
            source.check(spec)
        except KtError as e:
            raise KtError(f"config model {slug!r}: {e}") from None
    select = config.get("select") or {}
    for key in ("teachers", "students"):
        unknown = [m for m in select.get(key) or [] if m not in specs]
        if unknown:
            raise KtError(f"config key select.{key}: unknown model(s) {unknown}.{closest(unknown[0], specs)} "
                          f"Known: {', '.join(specs)}.")
    if select.get("policy") == "grid" and select.get("teachers") and select.get("students"):
        if all(t == s for t in select["teachers"] for s in select["students"]):
            raise KtError(f"config key select: the grid pairs only {select['students']} with itself; a student is "
                          "never its own teacher. Name other teachers in select.teachers.")
    for i, name in enumerate((config.get("transfer") or {}).get("strategies", [])):
        try:
            registry.get("strategies", name)
        except KtError as e:
            raise KtError(f"config key transfer.strategies[{i}]: {e}") from None
    check_strategy_options(config, registry)
    check_augmentations(config, dataset)
    options = (config.get("transfer") or {}).get("options") or {}
    check_groups(config.get("multi_teacher") or {}, specs, registry, options)
    return specs


def group_name(group: dict[str, Any]) -> str:
    """A group's name: its ``name``, else ``top{k}`` or its teachers joined by '+'."""
    if group.get("name"):
        return group["name"]
    return f"top{group['top']}" if group.get("top") else "+".join(group["teachers"])


def check_groups(multi: dict[str, Any], specs: dict[str, ModelSpec], registry: Registry,
                 options: dict[str, dict[str, Any]]) -> None:
    """Multi-teacher groups: known distinct models, one way to name teachers, unique names, and a
    strategy (built with its ``transfer.options``) that can run the modes asked for."""
    groups = multi.get("groups") or []
    if not groups:
        return
    base = multi.get("strategy", "kl_dp")
    try:
        strategy = make_strategy(base, options.get(base, {}), registry)
    except KtError as e:
        raise KtError(f"config key multi_teacher.strategy: {e}") from None
    if "parallel" in multi.get("modes", []) and not strategy.multi_teacher:
        raise KtError(f"config key multi_teacher.strategy: {base!r} learns from one teacher, so mode 'parallel' "
                      "cannot use it; choose kl_dp or kl_dp_unsup, or drop 'parallel' from multi_teacher.modes.")
    seen: set[str] = set()
    for i, group in enumerate(groups):
        key = f"multi_teacher.groups[{i}]"
        if ("teachers" in group) == ("top" in group):
            raise KtError(f"config key {key}: give either 'teachers' (a list of models) or 'top' (the k teachers "
                          "with most positive flips on the student), not both or neither.")
        names = [group["student"], *group.get("teachers", [])]
        unknown = [m for m in names if m not in specs]
        if unknown:
            raise KtError(f"config key {key}: unknown model(s) {unknown}.{closest(unknown[0], specs)} "
                          f"Known: {', '.join(specs)}.")
        teachers = group.get("teachers", [])
        if group["student"] in teachers or len(set(teachers)) != len(teachers):
            raise KtError(f"config key {key}.teachers: {teachers} repeats a model or holds the student "
                          f"{group['student']!r}; list distinct teachers other than the student.")
        if group.get("top", 0) > len(specs) - 1:
            raise KtError(f"config key {key}.top: {group['top']} teachers asked for, but only {len(specs) - 1} "
                          "models besides the student exist.")
        name = group_name(group)
        if name in seen or name in specs or "__" in name:
            raise KtError(f"config key {key}: group name {name!r} is used twice, is a model's name or holds '__'; "
                          "give the group a distinct 'name'.")
        seen.add(name)
