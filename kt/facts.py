"""What the workflow needs to know about a config at parse time, worked out once per change.

Resolving a config against the plugins (:func:`kt.check.check`), building its strategies and
reading its dataset import every model library (seconds, torch alone ~4 s), and every
``snakemake -n`` needs the answers. They are kept in ``~/.cache/kt/facts/KEY.json`` (under
``$XDG_CACHE_HOME``; ``$KT_FACTS_CACHE`` names another folder), where KEY digests everything they
depend on (:func:`cache_key`): the config, the plugin folders' files, the installed entry points,
the model libraries' versions and the dataset's files (:func:`dataset_fingerprint`); working
folders with the same config share them. A parse with an unchanged key imports none of those libraries.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kt.registry import ENTRY_POINT_GROUP, entry_points_enabled, file_digest
from kt.spec import ModelSpec

CACHE_ENV = "KT_FACTS_CACHE"
FORMAT = 2  # bump when Facts changes shape
LIBRARIES = ("kt", "torch", "torchvision", "timm", "open_clip_torch")  # their versions change listings and checks
FOLDER_DEPTH = 2  # dataset folders fingerprinted down to root/split/class: where an ImageFolder's files live


@dataclass
class Facts:
    """The config's resolved models, which strategies run without a teacher, and what the dataset is."""

    specs: dict[str, dict[str, Any]]  # slug -> ModelSpec.to_dict(), zoo models first
    teacher_free: list[str]  # configured strategies that need no teacher (the ce control)
    uncached: list[str]  # configured strategies the frozen-output cache cannot serve (Strategy.cacheable)
    trains_teacher: list[str]  # configured strategies whose teachers train too (their jobs' memory and time)
    decodes: bool  # the dataset's samples are image files (loader workers pay off)
    classes: int  # the dataset's label space
    split_sizes: dict[str, int]  # images in the train (transfer) and eval splits, subset applied
    codes: dict[str, dict[str, str]]  # kind -> registered name -> its code's version (Registry.code_table)
    preparations: dict[str, int]  # slug -> cost in images of a model's preparation (ModelSource.preparation)
    failures: list[str]  # plugins that failed to load

    def model_specs(self) -> dict[str, ModelSpec]:
        return {slug: ModelSpec.parse(spec) for slug, spec in self.specs.items()}


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kt" / "facts"


def facts(config: dict[str, Any], plugin_dirs: list[str], folder: str | Path | None = None) -> Facts:
    """The config's :class:`Facts`, from the cache (``folder``, default :func:`cache_dir`) when
    nothing they depend on changed. Raises :class:`~kt.errors.KtError` for a config the plugins
    reject (an error is never cached)."""
    path = Path(folder or cache_dir()) / f"{cache_key(config, plugin_dirs)}.json"
    try:
        return Facts(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # absent, or written by another version: work it out again
        pass
    found = compute(config, plugin_dirs)
    from kt.artifacts import atomic_path  # h5py and polars: only on a miss, which loaded torch already

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(found)))
    except OSError:  # an unwritable cache folder only costs the speed-up
        pass
    return found


def compute(config: dict[str, Any], plugin_dirs: list[str]) -> Facts:
    """:class:`Facts` from the plugins themselves (imports them, and with them the model libraries)."""
    from kt.check import check
    from kt.data import SPLITS, DatasetInfo, load_split, open_dataset
    from kt.registry import get_registry
    from kt.strategies import make_strategy

    registry = get_registry(plugin_dirs)
    specs = check(config, registry)
    options = config["transfer"].get("options") or {}
    names = dict.fromkeys([*config["transfer"]["strategies"], config["multi_teacher"]["strategy"]])
    built = {s: make_strategy(s, options.get(s, {}), registry) for s in names}
    dataset = open_dataset(config["dataset"], registry)
    sizes = {split: len(load_split(config["dataset"], split, registry)) for split in SPLITS}
    costs = {slug: registry.get("model_sources", spec.source).preparation(spec, dataset.classes)
             for slug, spec in specs.items()}
    return Facts(specs={slug: spec.to_dict() for slug, spec in specs.items()},
                 teacher_free=[s for s, made in built.items() if not made.needs_teacher],
                 uncached=[s for s, made in built.items() if not made.cacheable],
                 trains_teacher=[s for s, made in built.items() if made.trains_teacher],
                 decodes=DatasetInfo.of(dataset).decodes, classes=len(dataset.classes), split_sizes=sizes,
                 codes=registry.code_table(), preparations={m: c for m, c in costs.items() if c is not None},
                 failures=[str(f) for f in registry.failures])


def cache_key(config: dict[str, Any], plugin_dirs: list[str]) -> str:
    parts = {"format": FORMAT, "config": config, "plugins": plugin_files(plugin_dirs),
             "entry_points": installed_plugins(), "libraries": library_versions(),
             "dataset": dataset_fingerprint(config.get("dataset") or {})}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plugin_files(plugin_dirs: list[str]) -> dict[str, str]:
    """Every plugin folder's modules (as the registry loads them) with their content digests."""
    return {str(path): file_digest(path) for folder in plugin_dirs for path in sorted(Path(folder).glob("*.py"))}


def installed_plugins() -> list[str]:
    """The entry-point plugins the registry would load, with their distributions' versions."""
    if not entry_points_enabled():
        return []
    return sorted(f"{ep.name}={ep.value} ({ep.dist.name} {ep.dist.version})" if ep.dist else f"{ep.name}={ep.value}"
                  for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def dataset_fingerprint(dataset: dict[str, Any]) -> dict[str, str]:
    """What the dataset's files look like, per option of the config's ``dataset`` section that names a
    path (``root``, ``classes_file``, a plugin's own): a file's size and mtime; a folder's mtime and
    those of its sub-folders down to :data:`FOLDER_DEPTH` levels (``root/train/<class>``). A folder's
    mtime changes when an entry is added, removed or renamed in it, so this sees every change of an
    ImageFolder's file listing for ~2,000 ``stat`` calls on ImageNet; a file rewritten in place under
    the same name is not seen (benchmarks/README.md, section dry run, has the measured options)."""
    out = {}
    for key, value in sorted(dataset.items()):
        if isinstance(value, str) and value:
            found = path_fingerprint(Path(value))
            out[key] = found if found == "absent" else f"{Path(value).resolve()}: {found}"  # whichever folder
    return out


def path_fingerprint(path: Path, depth: int = FOLDER_DEPTH) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "absent"
    if not path.is_dir():
        return f"file {stat.st_size} {stat.st_mtime_ns}"
    digest = hashlib.sha256()
    level = [path]
    for remaining in range(depth, -1, -1):
        below = []
        for folder in level:
            digest.update(f"{folder.relative_to(path)}\0{folder.stat().st_mtime_ns}\n".encode())
            if remaining:
                with os.scandir(folder) as entries:
                    below += sorted(Path(e.path) for e in entries if e.is_dir())
        level = below
    return f"folder {digest.hexdigest()[:16]}"


def code_record(codes: dict[str, dict[str, str]], sources: list[str], dataset: str,
                strategies: list[str] = ()) -> dict[str, str]:
    """The versions of the code behind a result (``codes``: :meth:`kt.registry.Registry.code_table`),
    keyed ``KIND NAME``: what an artifact records, and what the workflow tracks as a rule's parameter
    so that a changed plugin reruns exactly the jobs that used it."""
    record = {f"dataset {dataset}": codes["datasets"].get(dataset, "?")}
    record |= {f"model source {s}": codes["model_sources"].get(s, "?") for s in sorted(set(sources))}
    record |= {f"strategy {s}": codes["strategies"].get(s, "?") for s in sorted(set(strategies))}
    return record
