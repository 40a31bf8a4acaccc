"""``kt`` command line: one sub-command per workflow step, plus ``plugins``, ``models`` and ``inspect``.

Each command declares its own arguments beside it (``@command(arg(...), ...)``); defaults come
from the config schema (:mod:`kt.schema`), the one source of every default. User mistakes
(:class:`KtError`) print one ``kt: error: ...`` line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kt.errors import KtError
from kt.schema import choices, default, defaults, item_defaults

Arg = tuple[tuple[str, ...], dict[str, Any]]
Command = Callable[[argparse.Namespace], Any]
COMMANDS: dict[str, tuple[Command, tuple[Arg, ...]]] = {}
DEFAULT_PLUGIN_DIR = "plugins"
DEFAULT_CONFIG = "config.yaml"


def arg(*flags: str, **options: Any) -> Arg:
    """One ``add_argument`` call, declared beside its command."""
    return flags, options


def command(*arguments: Arg) -> Callable[[Command], Command]:
    """Register ``cmd_NAME`` as the sub-command ``NAME`` (underscores become dashes) with its arguments."""

    def register(fn: Command) -> Command:
        COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = (fn, arguments)
        return fn

    return register


def _json_arg(text: str) -> Any:
    """A JSON value, or a bare string (so ``--model timm:resnet18`` works as well as a JSON spec)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _registry(args: argparse.Namespace):
    """The registry of ``--plugin-dir`` folders; without any, ``./plugins`` when it exists (the
    repository's own plugin folder, when kt runs from the repository root)."""
    from kt.registry import get_registry

    folders = args.plugin_dir
    if folders is None:
        folders = [DEFAULT_PLUGIN_DIR] if Path(DEFAULT_PLUGIN_DIR).is_dir() else []
    return get_registry(folders)


def read_config(path: str | Path | None) -> dict[str, Any]:
    """The workflow's config as ``snakemake [--configfile FILE]`` run here sees it: ``./config.yaml``
    (when it exists) with FILE's top-level keys over it; ``{}`` without either."""
    import yaml

    config: dict[str, Any] = {}
    files = [DEFAULT_CONFIG] if Path(DEFAULT_CONFIG).is_file() else []
    if path is not None:
        if not Path(path).is_file():
            raise KtError(f"config file {str(path)!r} does not exist.")
        files.append(Path(path))
    for file in dict.fromkeys(Path(f).resolve() for f in files):
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise KtError(f"config file {str(file)!r} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise KtError(f"config file {str(file)!r} does not hold a mapping of config keys.")
        config |= loaded
    dirs = config.get("plugin_dirs") or []
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise KtError(f"config key plugin_dirs must be a list of folders, got {dirs!r}.")
    return config


def workflow_plugin_folders(args: argparse.Namespace) -> list[str]:
    """The folders the workflow loads, run from here: ``./plugins``, the config's ``plugin_dirs``
    (:func:`kt.config.plugin_folders`), then every ``--plugin-dir``; absolute, each once."""
    from kt.config import plugin_folders

    folders = plugin_folders(read_config(args.config), Path.cwd())
    folders += [str(Path(d).resolve()) for d in args.plugin_dir or []]
    return list(dict.fromkeys(folders))


def _settings(args: argparse.Namespace):
    from kt.transfer import TransferSettings

    try:
        return TransferSettings(**(args.settings or {}))
    except TypeError as e:
        raise KtError(f"unknown transfer setting: {e}; see config.yaml's transfer section.") from None


def _workers(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _spec(value: Any):
    from kt.models import ModelSpec

    return ModelSpec.parse(value)


# Arguments several commands share, and defaults from the schema.
EXTRACT, ZOO, ZOO_MODEL = defaults("extract"), defaults("zoo"), item_defaults("zoo", "models")
MULTI, SELECT = defaults("multi_teacher"), defaults("select")
DEVICE = default("device")
MODEL = arg("--model", type=_json_arg, required=True, help="model id or JSON spec")
STUDENT = arg("--student", type=_json_arg, required=True, help="model id or JSON spec")
DATASET = arg("--dataset", type=_json_arg, required=True, help='JSON, e.g. {"name": "fashion_mnist"}')
SETTINGS = arg("--settings", type=_json_arg, default={}, help="JSON of kt.transfer.TransferSettings")
BEFORE = arg("--before", default=None, help="the student's extracted eval logits (reused, not recomputed)")
GROUP = arg("--group", required=True, help="the group's name (teacher column of the metrics)")
RUN_OUT = arg("--out", required=True, help="run folder")


@command(arg("--config", metavar="FILE", default=None,
             help=f"a config file whose plugin_dirs are listed too, read over ./{DEFAULT_CONFIG} as "
                  f"`snakemake --configfile FILE` does (default: ./{DEFAULT_CONFIG} when it exists)"))
def cmd_plugins(args: argparse.Namespace) -> int:
    """List the workflow's plugins, where each came from and what it registered (JSON).

    The folders are the workflow's: ./plugins, the config's plugin_dirs and every --plugin-dir.
    Each record names the plugin, its origin, what it registered with the options and defaults,
    or why it failed to load; the exit status is 1 when one failed."""
    from kt.registry import get_registry

    records = get_registry(workflow_plugin_folders(args)).plugin_records()
    print(json.dumps(records, indent=2))
    return int(any(r["status"] == "failed" for r in records))


@command(arg("source", help="model source: timm, torchvision, open_clip or a plugin's"),
         arg("pattern", nargs="?", default="*", help="case-sensitive glob, e.g. 'resnet*' (default: all)"),
         arg("--pretrained", action="store_true", help="names with pretrained weights (tags)"))
def cmd_models(args: argparse.Namespace) -> None:
    """List a model source's model names matching a glob, one per line (the part after SOURCE:).

    A source that accepts any name (its list_models returns None) lists nothing and says so."""
    source = _registry(args).get("model_sources", args.source)
    names = source.list_models(args.pattern, pretrained=args.pretrained)
    if names is None:
        print(f"kt: {args.source} accepts any name ({args.source}:NAME, see its plugin's documentation); "
              "it has no list to show.", file=sys.stderr)
        return
    if not names:
        raise KtError(f"no {args.source} model{' with pretrained weights' if args.pretrained else ''} "
                      f"matches {args.pattern!r} (a case-sensitive glob, e.g. 'resnet*').")
    print("\n".join(names))


@command(arg("source", help="a state dict file of another implementation of the architecture"),
         arg("out", help="where to write the renamed state dict (.pth)"),
         arg("--model", required=True, help="model id whose keys to use, e.g. timm:tf_efficientnet_lite0"),
         arg("--num-classes", type=int, default=None, help="the checkpoint's class count, when not the default"))
def cmd_map_weights(args: argparse.Namespace) -> None:
    """Rename a foreign checkpoint's tensors onto a model's keys by position (shapes checked) so that
    it loads as the model's ``weights:`` file."""
    from kt.checkpoints import map_weights_file

    mapped = map_weights_file(args.source, args.model, args.out, args.num_classes)
    print(f"kt: {len(mapped)} tensors mapped onto {args.model} -> {args.out}")


@command(arg("files", nargs="+"), arg("--json", action="store_true", help="the full description as JSON"))
def cmd_inspect(args: argparse.Namespace) -> None:
    """Print what an HDF5 artifact holds: datasets, attrs and recomputed top-1 (summary, or --json)."""
    from kt.artifacts import artifact_info, summarize_artifact

    for i, path in enumerate(args.files):
        if args.json:
            print(json.dumps(artifact_info(path), indent=2, default=str))
        else:
            print(("\n" if i else "") + summarize_artifact(artifact_info(path)))


@command(MODEL, DATASET, arg("--out", required=True),
         arg("--split", default="eval", choices=["train", "eval"]),
         arg("--batch-size", type=int, default=EXTRACT["batch_size"], help="upper bound; halves on GPU OOM"),
         arg("--device", default=DEVICE, help="auto (GPU if given one), cpu, cuda, cuda:N"),
         arg("--features", action="store_true", help="also store pooled features"),
         arg("--workers", type=_workers, default=EXTRACT["workers"],
             help="image decoding processes, or auto: the job's CPUs minus one for image folders"),
         arg("--dtype", default=EXTRACT["dtype"], choices=["float32", "float16"], help="storage of logits/features"),
         arg("--decode", default=default("decode"), choices=["reference", "fast"],
             help="reference: each library's own eval transform (PIL); fast: draft JPEG decode, tensor resize"))
def cmd_extract(args: argparse.Namespace) -> None:
    """Run one model over one split and write results/logits/{split}/{model}.h5."""
    from kt.extract import extract

    extract(_spec(args.model), args.dataset, args.split, args.out, batch_size=args.batch_size,
            device=args.device, features=args.features, workers=args.workers, dtype=args.dtype,
            decode=args.decode, registry=_registry(args))


@command(arg("--models", type=_json_arg, required=True, help='JSON {"name": spec, ...}'),
         arg("--out", required=True, help="JSON file: {name: {params, size} or null}"))
def cmd_model_sizes(args: argparse.Namespace) -> None:
    """Parameters and input size of models built on the meta device (sizes jobs before extraction)."""
    from kt.artifacts import atomic_path
    from kt.resources import model_sizes

    sizes = model_sizes(args.models, _registry(args))
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(sizes, indent=1, sort_keys=True))
    print(f"{sum(v is not None for v in sizes.values())} of {len(sizes)} models sized: {args.out}")


@command(MODEL, DATASET, arg("--device", default=DEVICE, help="auto (GPU if given one), cpu, cuda, cuda:N"),
         arg("--out", required=True, help="HDF5 file of the artifact"))
def cmd_prepare(args: argparse.Namespace) -> None:
    """Build a model's preparation artifact once (its source's ``prepare``; open_clip: the zero-shot head)."""
    from kt.data import load_split
    from kt.device import pick_device

    spec, registry = _spec(args.model), _registry(args)
    source = registry.get("model_sources", spec.source)
    classes = load_split(args.dataset, "eval", registry).classes
    if source.preparation(spec, classes) is None:
        raise KtError(f"model {spec.slug!r}: {spec.source} models need no preparation.")
    print(f"{spec.slug}: {source.prepare(spec, classes, Path(args.out), pick_device(args.device))}: {args.out}")


@command(MODEL, DATASET, arg("--out", required=True),
         arg("--batch-size", type=int, default=ZOO["batch_size"]),
         arg("--epochs", type=int, default=ZOO_MODEL["epochs"]),
         arg("--lr", type=float, default=ZOO_MODEL["lr"]),
         arg("--augment", default=ZOO_MODEL["augment"]),
         arg("--seed", type=int, default=ZOO_MODEL["seed"]))
def cmd_train_zoo(args: argparse.Namespace) -> None:
    """Train one zoo model from scratch and save its weights as a local weight file."""
    from kt.zoo import train_zoo_model

    train_zoo_model(_spec(args.model), args.dataset, args.out, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, augmentation=args.augment, seed=args.seed,
                    registry=_registry(args))


@command(arg("--teacher", type=_json_arg, help="model id or JSON spec (none: a teacher-free strategy)"),
         STUDENT, DATASET, SETTINGS, arg("--strategy", required=True),
         arg("--cache", default=None, help="frozen-output cache file"), BEFORE, RUN_OUT)
def cmd_transfer(args: argparse.Namespace) -> None:
    """Train a student from a teacher with one strategy; write results/transfer/{strategy}/{pair}/."""
    from kt.transfer import transfer

    transfer(_spec(args.teacher) if args.teacher else None, _spec(args.student), args.strategy, args.dataset,
             args.out, _settings(args), cache=args.cache, registry=_registry(args), before=args.before)


@command(arg("--mode", required=True, choices=[m for m in choices("multi_teacher", "modes") if m != "soup"]),
         arg("--teachers", type=_json_arg, nargs="+", required=True, help="model ids or JSON specs"),
         arg("--teacher-logits", nargs="*", default=[],
             help="sequential: the teachers' eval logits files (their accuracies order the curriculum)"),
         arg("--order", default=MULTI["order"], choices=choices("multi_teacher", "order"),
             help="sequential: curriculum by teacher accuracy"),
         STUDENT, arg("--strategy", default=MULTI["strategy"],
                      help="single-teacher strategy of each stage / the parallel run"),
         BEFORE, GROUP, DATASET, SETTINGS, RUN_OUT)
def cmd_multi_transfer(args: argparse.Namespace) -> None:
    """Transfer from a group of teachers: sequential (curriculum) or parallel; same run folder."""
    from kt.multi import parallel, sequential, teacher_accuracies

    teachers = [_spec(t) for t in args.teachers]
    common = dict(settings=_settings(args), registry=_registry(args), before=args.before)
    if args.mode == "parallel":
        parallel(teachers, _spec(args.student), args.strategy, args.dataset, args.out, args.group, **common)
        return
    accuracies = teacher_accuracies(args.teacher_logits, teachers) if args.teacher_logits else None
    sequential(teachers, _spec(args.student), args.strategy, args.dataset, args.out, args.group,
               accuracies=accuracies, order=args.order, **common)


@command(arg("--members", nargs="+", required=True, help="single-teacher run folders with one student"),
         arg("--batchnorm", default=MULTI["soup_batchnorm"], choices=choices("multi_teacher", "soup_batchnorm"),
             help="batch-norm statistics: averaged, or re-estimated on the transfer set"),
         GROUP, DATASET, SETTINGS, RUN_OUT)
def cmd_soup(args: argparse.Namespace) -> None:
    """Average the students of single-teacher runs (one architecture) and evaluate the soup."""
    from kt.multi import soup

    soup(args.members, args.dataset, args.out, args.group, _settings(args), registry=_registry(args),
         batchnorm=args.batchnorm)


@command(arg("--teacher", type=_json_arg, required=True, help="model id or JSON spec"), STUDENT, DATASET,
         SETTINGS, arg("--out", required=True, help="cache file"))
def cmd_cache_frozen(args: argparse.Namespace) -> None:
    """Compute the teacher's and initial student's logits on fixed views of the transfer set once."""
    from kt.transfer import build_cache

    build_cache(_spec(args.teacher), _spec(args.student), args.dataset, _settings(args), args.out,
                registry=_registry(args))


@command(arg("--logits", nargs="+", required=True, help="eval logits files, one per model"),
         arg("--out", required=True, help="pairs table (parquet)"),
         arg("--per-class", required=True, help="per-class positive flip counts (HDF5)"),
         arg("--heatmap", help="PNG: positive flips, teacher x student"),
         arg("--scatter", help="PNG: complementary knowledge vs accuracy difference"))
def cmd_complementarity(args: argparse.Namespace) -> None:
    """Score every ordered pair from eval logits: flips, per-class entropy, top-p classes, forecast."""
    from kt.complementarity import complementarity
    from kt.figures import plot_flip_heatmap, plot_knowledge_vs_accdiff

    # --threads: files loaded at once (chunked, float32) and the table's worker threads
    table = complementarity(args.logits, args.out, args.per_class, threads=args.threads)
    if args.heatmap:
        plot_flip_heatmap(table, args.heatmap)
    if args.scatter:
        plot_knowledge_vs_accdiff(table, args.scatter)


@command(arg("--table", required=True, help="complementarity pairs table"),
         arg("--policy", type=_json_arg, default=SELECT, help="JSON: the config's select section"),
         arg("--out", required=True))
def cmd_select(args: argparse.Namespace) -> None:
    """Choose the (teacher, student) pairs for transfer from the complementarity table."""
    import polars as pl

    from kt.artifacts import read_table, write_table
    from kt.select import select_pairs

    pairs = select_pairs(read_table(args.table), args.policy)
    write_table(pairs, args.out)
    with pl.Config(tbl_rows=50, tbl_cols=8, fmt_str_lengths=80):
        print(pairs.select("teacher", "student", "bin", "pos_flips", "reason"))


@command(arg("--run", required=True, help="transfer run folder"),
         arg("--teacher-logits", nargs="*", default=[],
             help="the teacher's eval logits file (several for a group: a sample is known if any is right)"),
         *(arg(f"--{key}", required=True) for key in ("strategy", "teacher", "student", "out")),
         arg("--alpha", type=float, default=default("alpha"),
             help="significance level of the McNemar test"),
         arg("--control", help="the control run's (ce) eval_after.h5 for the same student and seed"))
def cmd_evaluate(args: argparse.Namespace) -> None:
    """Metrics of one transfer run (long-format parquet): delta, gain, loss, residual flips, ..."""
    from kt.artifacts import write_table
    from kt.metrics import run_table

    write_table(run_table(args.run, args.teacher_logits, args.strategy, args.teacher, args.student, args.alpha,
                          args.control), args.out)


@command(arg("--metrics", nargs="+", required=True, help="per-run metrics files"),
         arg("--epochs", nargs="*", default=[], help="per-run metrics.parquet (for the training curves)"),
         arg("--pairs", help="results/pairs.parquet (adds the forecast)"),
         arg("--similar-within", type=float, default=SELECT["similar_within"],
             help="points: teacher-strength bin margin"),
         arg("--out", required=True), arg("--csv", required=True),
         arg("--overview", help="CSV: the per-strategy table of the report's landing page"),
         arg("--figures", help="folder for the summary figures (PNG)"),
         arg("--pair-curves", help="folder for a training-curve figure per pair, its strategies overlaid"),
         arg("--run-curves", help="folder for a training-curve figure per run (loss, teacher share)"))
def cmd_summarize(args: argparse.Namespace) -> None:
    """Combine every run's metrics: per run, per strategy, per teacher-strength bin; figures."""
    import polars as pl

    from kt.artifacts import read_table
    from kt.figures import plot_summary, plot_training_curves, read_curves
    from kt.metrics import overview, summarize, write_summary

    table = summarize(args.metrics, read_table(args.pairs) if args.pairs else None, args.similar_within)
    write_summary(table, args.out, args.csv, args.overview)
    if args.figures:
        plot_summary(table, args.figures)
    plot_training_curves(read_curves(args.epochs), f"{args.figures}/epoch_curves.png" if args.figures else None,
                         args.pair_curves, args.run_curves)
    with pl.Config(tbl_rows=50, tbl_cols=12, fmt_str_lengths=40, tbl_width_chars=200):
        print(overview(table))


def summary(fn: Command) -> str:
    """A command's line in ``kt --help``: the first paragraph of its docstring, whole, on one line."""
    return " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kt", description=__doc__.splitlines()[0])
    p.add_argument("--plugin-dir", action="append", default=None,
                   help=f"folder of plugin modules (repeatable; default: ./{DEFAULT_PLUGIN_DIR} if it exists; "
                        f"`plugins` lists ./{DEFAULT_PLUGIN_DIR} and the config's plugin_dirs too)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads: torch's, and complementarity's file-loading and table workers "
                        "(default: torch's choice; complementarity: the cores this process may use)")
    p.add_argument("-q", "--quiet", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, arguments) in COMMANDS.items():
        s = sub.add_parser(name, help=summary(fn), description=" ".join((fn.__doc__ or "").split()))
        for flags, options in arguments:
            s.add_argument(*flags, **options)
    return p


def main(argv: list[str] | None = None) -> int:
    from kt.allocator import steady

    steady()  # CPU jobs at full speed: no per-batch mmap/munmap of activations (kt/allocator.py)
    args = parser().parse_args(argv)
    # scancel, a SLURM time limit and Snakemake's Ctrl-C send SIGTERM, which kills Python without
    # unwinding: make it SystemExit so atomic_path removes its .NAME.tmp-PID file.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command][0](args) or 0
    except KtError as e:
        print(f"kt: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kt inspect FILE | head`
        sys.stderr.close()
    return 0
