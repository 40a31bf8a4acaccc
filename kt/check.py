"""The checks of a config that a schema cannot express: every model, dataset, strategy, tracker and option
resolved against the plugin registry, so ``snakemake -n`` fails on an unknown name before any job
runs. Loads the plugins (and with them torch); the workflow runs it once per change of the config
or the plugins (:mod:`kt.facts`)."""

from __future__ import annotations

from typing import Any

from kt.config import group_name, plugin_folders
from kt.data import Dataset, DatasetInfo, check_augment, open_dataset
from kt.errors import KtError, closest
from kt.models import ModelSource, ModelSpec
from kt.registry import Registry, check_declared, get_registry
from kt.strategies import make_strategy
from kt.trackers import check_trackers


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
        check_declared(opts, accepted, f"strategy {name!r}", f"config key {key}")



def check_augmentations(config: dict[str, Any], dataset: Dataset) -> None:
    for i, entry in enumerate((config.get("zoo") or {}).get("models", [])):
        check_augment(entry.get("augment", "none"), dataset, f"zoo.models[{i}].augment")
    check_augment((config.get("transfer") or {}).get("augment", "none"), dataset, "transfer.augment")


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
        except Exception as e:  # noqa: BLE001 - a plugin's bug: name it instead of a traceback
            raise KtError(f"config model {slug!r}: {registry.who('model_sources', spec.source)} failed to check "
                          f"it: {type(e).__name__}: {e}") from None
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
    check_trackers((config.get("transfer") or {}).get("trackers"), registry)
    check_augmentations(config, dataset)
    options = (config.get("transfer") or {}).get("options") or {}
    check_groups(config.get("multi_teacher") or {}, specs, registry, options)
    return specs


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
