"""``kt`` command line: one sub-command per workflow step, plus ``plugins`` and ``inspect``.

User mistakes (:class:`KtError`) print one ``kt: error: ...`` line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from kt.errors import KtError

COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {}


def command(fn: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


def _json_arg(text: str) -> Any:
    """A JSON value, or a bare string (so ``--model timm:resnet18`` works as well as a JSON spec)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


DEFAULT_PLUGIN_DIR = "plugins"


def _registry(args: argparse.Namespace):
    """The registry of ``--plugin-dir`` folders; without any, ``./plugins`` when it exists (the
    repository's own plugin folder, when kt runs from the repository root)."""
    from pathlib import Path

    from kt.registry import get_registry

    folders = args.plugin_dir
    if folders is None:
        folders = [DEFAULT_PLUGIN_DIR] if Path(DEFAULT_PLUGIN_DIR).is_dir() else []
    return get_registry(folders)


@command
def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin, where it came from, what it registered with its options, and which
    plugins failed to load (JSON; exit status 1 when one failed)."""
    records = _registry(args).describe()
    print(json.dumps(records, indent=2))
    return int(any(r["status"] == "failed" for r in records))


@command
def cmd_models(args: argparse.Namespace) -> None:
    """List a model source's model names matching a glob, one per line (the part after SOURCE:)."""
    source = _registry(args).get("model_sources", args.source)
    names = source.list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        raise KtError(f"no {args.source} model{' with pretrained weights' if args.pretrained else ''} "
                      f"matches {args.pattern!r} (a case-sensitive glob, e.g. 'resnet*').")
    print("\n".join(names))


@command
def cmd_inspect(args: argparse.Namespace) -> None:
    """Print what an HDF5 artifact holds: datasets, attrs and recomputed top-1 (summary, or --json)."""
    from kt.artifacts import describe, summarize_artifact

    for i, path in enumerate(args.files):
        if args.json:
            print(json.dumps(describe(path), indent=2, default=str))
        else:
            print(("\n" if i else "") + summarize_artifact(describe(path)))


@command
def cmd_extract(args: argparse.Namespace) -> None:
    """Run one model over one split and write results/logits/{split}/{model}.h5."""
    from kt.extract import extract
    from kt.models import ModelSpec

    extract(ModelSpec.parse(args.model), args.dataset, args.split, args.out, batch_size=args.batch_size,
            device=args.device, features=args.features, workers=args.workers, registry=_registry(args))


@command
def cmd_train_zoo(args: argparse.Namespace) -> None:
    """Train one zoo model from scratch and save its weights as a local weight file."""
    from kt.models import ModelSpec
    from kt.zoo import train_zoo_model

    train_zoo_model(ModelSpec.parse(args.model), args.dataset, args.out, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, augmentation=args.augment, seed=args.seed,
                    registry=_registry(args))


def _settings(args: argparse.Namespace):
    from kt.transfer import TransferSettings

    try:
        return TransferSettings(**(args.settings or {}))
    except TypeError as e:
        raise KtError(f"unknown transfer setting: {e}; see config.yaml's transfer section.") from None


@command
def cmd_transfer(args: argparse.Namespace) -> None:
    """Train a student from a teacher with one strategy; write results/transfer/{strategy}/{pair}/."""
    from kt.models import ModelSpec
    from kt.transfer import transfer

    transfer(ModelSpec.parse(args.teacher) if args.teacher else None, ModelSpec.parse(args.student),
             args.strategy, args.dataset, args.out, _settings(args), cache=args.cache, registry=_registry(args),
             before=args.before)


@command
def cmd_multi_transfer(args: argparse.Namespace) -> None:
    """Transfer from a group of teachers: sequential (curriculum) or parallel; same run folder."""
    from kt.models import ModelSpec
    from kt.multi import parallel, sequential, teacher_accuracies

    teachers = [ModelSpec.parse(t) for t in args.teachers]
    common = dict(settings=_settings(args), registry=_registry(args), before=args.before)
    if args.mode == "parallel":
        parallel(teachers, ModelSpec.parse(args.student), args.strategy, args.dataset, args.out, args.group, **common)
        return
    accuracies = teacher_accuracies(args.teacher_logits, teachers) if args.teacher_logits else None
    sequential(teachers, ModelSpec.parse(args.student), args.strategy, args.dataset, args.out, args.group,
               accuracies=accuracies, order=args.order, **common)


@command
def cmd_soup(args: argparse.Namespace) -> None:
    """Average the students of single-teacher runs (one architecture) and evaluate the soup."""
    from kt.multi import soup

    soup(args.members, args.dataset, args.out, args.group, _settings(args), registry=_registry(args),
         batchnorm=args.batchnorm)


@command
def cmd_cache_frozen(args: argparse.Namespace) -> None:
    """Compute the teacher's and initial student's logits on fixed views of the transfer set once."""
    from kt.models import ModelSpec
    from kt.transfer import build_cache

    build_cache(ModelSpec.parse(args.teacher), ModelSpec.parse(args.student), args.dataset, _settings(args),
                args.out, registry=_registry(args))


@command
def cmd_complementarity(args: argparse.Namespace) -> None:
    """Score every ordered pair from eval logits: flips, per-class entropy, top-p classes, forecast."""
    from kt.complementarity import complementarity
    from kt.figures import plot_flip_heatmap, plot_knowledge_vs_accdiff

    table = complementarity(args.logits, args.out, args.per_class, threads=args.threads)
    if args.heatmap:
        plot_flip_heatmap(table, args.heatmap)
    if args.scatter:
        plot_knowledge_vs_accdiff(table, args.scatter)


@command
def cmd_select(args: argparse.Namespace) -> None:
    """Choose the (teacher, student) pairs for transfer from the complementarity table."""
    import polars as pl

    from kt.artifacts import read_table
    from kt.select import select_pairs, write_pairs

    pairs = select_pairs(read_table(args.table), args.policy)
    write_pairs(pairs, args.out)
    with pl.Config(tbl_rows=50, tbl_cols=8, fmt_str_lengths=80):
        print(pairs.select("teacher", "student", "bin", "pos_flips", "reason"))


@command
def cmd_evaluate(args: argparse.Namespace) -> None:
    """Metrics of one transfer run (long-format parquet): delta, gain, loss, residual flips, ..."""
    from kt.artifacts import atomic_path
    from kt.metrics import evaluate_run

    table = evaluate_run(args.run, args.teacher_logits, args.strategy, args.teacher, args.student)
    with atomic_path(args.out) as tmp:
        table.write_parquet(tmp)


@command
def cmd_summarize(args: argparse.Namespace) -> None:
    """Combine every run's metrics: per run, per strategy, per teacher-strength bin; figures."""
    import polars as pl

    from kt.artifacts import read_table
    from kt.figures import plot_epoch_curves, plot_summary
    from kt.metrics import summarize, write_summary

    table = summarize(args.metrics, read_table(args.pairs) if args.pairs else None, args.similar_within)
    write_summary(table, args.out, args.csv, args.overview)
    if args.figures:
        plot_summary(table, args.figures)
        if args.epochs:
            epochs = pl.concat([read_table(f) for f in args.epochs], how="diagonal_relaxed")
            plot_epoch_curves(epochs, f"{args.figures}/epoch_curves.png")
    with pl.Config(tbl_rows=50, tbl_cols=10, float_precision=2):
        print(table.filter(pl.col("scope") == "strategy").select(
            "strategy", "n_runs", "success_rate", "mean_delta", "median_delta", "mean_gain", "mean_loss",
            *[c for c in ("forecast_spearman",) if c in table.columns]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kt", description=__doc__.splitlines()[0])
    p.add_argument("--plugin-dir", action="append", default=None,
                   help=f"folder of plugin modules (repeatable; default: ./{DEFAULT_PLUGIN_DIR} if it exists)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=(COMMANDS[name].__doc__ or "").splitlines()[0])

    add("plugins")
    s = add("models")
    s.add_argument("source", help="model source: timm, torchvision, open_clip or a plugin's")
    s.add_argument("pattern", nargs="?", default="*", help="case-sensitive glob, e.g. 'resnet*' (default: all)")
    s.add_argument("--pretrained", action="store_true", help="names with pretrained weights (tags)")
    s = add("inspect")
    s.add_argument("files", nargs="+")
    s.add_argument("--json", action="store_true", help="the full description as JSON")
    for name in ("extract", "train-zoo"):
        s = add(name)
        s.add_argument("--model", type=_json_arg, required=True, help="model id or JSON spec")
        s.add_argument("--dataset", type=_json_arg, required=True, help='JSON, e.g. {"name": "fashion_mnist"}')
        s.add_argument("--out", required=True)
        s.add_argument("--batch-size", type=int, default=256 if name == "extract" else 128)
    s = sub.choices["extract"]
    s.add_argument("--split", default="eval", choices=["train", "eval"])
    s.add_argument("--device", default="auto", help="auto (GPU if given one), cpu, cuda, cuda:N")
    s.add_argument("--features", action="store_true", help="also store pooled features")
    s.add_argument("--workers", type=int, default=0, help="image decoding processes (image folders)")
    s = sub.choices["train-zoo"]
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--augment", default="none")
    s.add_argument("--seed", type=int, default=0)
    for name in ("transfer", "cache-frozen"):
        s = add(name)
        s.add_argument("--teacher", type=_json_arg, required=name == "cache-frozen", help="model id or JSON spec")
        s.add_argument("--student", type=_json_arg, required=True, help="model id or JSON spec")
        s.add_argument("--dataset", type=_json_arg, required=True, help='JSON, e.g. {"name": "fashion_mnist"}')
        s.add_argument("--settings", type=_json_arg, default={}, help="JSON of kt.transfer.TransferSettings")
        s.add_argument("--out", required=True, help="run folder (transfer) or cache file (cache-frozen)")
    sub.choices["transfer"].add_argument("--strategy", required=True)
    sub.choices["transfer"].add_argument("--cache", default=None, help="frozen-output cache file")
    sub.choices["transfer"].add_argument("--before", default=None,
                                         help="the student's extracted eval logits (reused, not recomputed)")
    s = add("multi-transfer")
    s.add_argument("--mode", required=True, choices=["sequential", "parallel"])
    s.add_argument("--teachers", type=_json_arg, nargs="+", required=True, help="model ids or JSON specs")
    s.add_argument("--teacher-logits", nargs="*", default=[],
                   help="sequential: the teachers' eval logits files (their accuracies order the curriculum)")
    s.add_argument("--order", default="ascending", choices=["ascending", "descending"],
                   help="sequential: curriculum by teacher accuracy")
    s.add_argument("--student", type=_json_arg, required=True, help="model id or JSON spec")
    s.add_argument("--strategy", default="kl_dp", help="single-teacher strategy of each stage / the parallel run")
    s.add_argument("--before", default=None, help="the student's extracted eval logits (reused, not recomputed)")
    s = add("soup")
    s.add_argument("--members", nargs="+", required=True, help="single-teacher run folders with one student")
    s.add_argument("--batchnorm", default="mean", choices=["mean", "recalibrate"],
                   help="batch-norm statistics: averaged, or re-estimated on the transfer set")
    for name in ("multi-transfer", "soup"):
        s = sub.choices[name]
        s.add_argument("--group", required=True, help="the group's name (teacher column of the metrics)")
        s.add_argument("--dataset", type=_json_arg, required=True, help='JSON, e.g. {"name": "fashion_mnist"}')
        s.add_argument("--settings", type=_json_arg, default={}, help="JSON of kt.transfer.TransferSettings")
        s.add_argument("--out", required=True, help="run folder")
    s = add("complementarity")
    s.add_argument("--logits", nargs="+", required=True, help="eval logits files, one per model")
    s.add_argument("--out", required=True, help="pairs table (parquet)")
    s.add_argument("--per-class", required=True, help="per-class positive flip counts (HDF5)")
    s.add_argument("--heatmap", help="PNG: positive flips, teacher x student")
    s.add_argument("--scatter", help="PNG: complementary knowledge vs accuracy difference")
    s = add("select")
    s.add_argument("--table", required=True, help="complementarity pairs table")
    s.add_argument("--policy", type=_json_arg, default={"policy": "all"}, help="JSON: the config's select section")
    s.add_argument("--out", required=True)
    s = add("evaluate")
    s.add_argument("--run", required=True, help="transfer run folder")
    s.add_argument("--teacher-logits", nargs="*", default=[],
                   help="the teacher's eval logits file (several for a group: a sample is known if any is right)")
    for key in ("strategy", "teacher", "student", "out"):
        s.add_argument(f"--{key}", required=True)
    s = add("summarize")
    s.add_argument("--metrics", nargs="+", required=True, help="per-run metrics files")
    s.add_argument("--epochs", nargs="*", default=[], help="per-run per-epoch metrics (for the curves)")
    s.add_argument("--pairs", help="results/pairs.parquet (adds the forecast)")
    s.add_argument("--similar-within", type=float, default=1.0, help="points: teacher-strength bin margin")
    s.add_argument("--out", required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--overview", help="CSV: the per-strategy table of the report's landing page")
    s.add_argument("--figures", help="folder for the summary figures (PNG)")
    return p


def main(argv: list[str] | None = None) -> int:
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
        return COMMANDS[args.command](args) or 0
    except KtError as e:
        print(f"kt: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kt inspect FILE | head`
        sys.stderr.close()
    return 0
