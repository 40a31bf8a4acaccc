"""``kt`` command line: one sub-command per workflow step, plus ``plugins`` and ``inspect``.

User mistakes (:class:`KtError`) print one ``kt: error: ...`` line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
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


def _registry(args: argparse.Namespace):
    from kt.registry import get_registry

    return get_registry(args.plugin_dir)


@command
def cmd_plugins(args: argparse.Namespace) -> None:
    """List every loaded plugin, where it came from and what it registered (JSON)."""
    print(json.dumps(_registry(args).describe(), indent=2))


@command
def cmd_inspect(args: argparse.Namespace) -> None:
    """Print what an HDF5 artifact holds: datasets, attrs and recomputed top-1."""
    from kt.artifacts import describe

    for path in args.files:
        print(json.dumps(describe(path), indent=2, default=str))


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
                    batch_size=args.batch_size, augmentation=args.augment, seed=args.seed)


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
             args.strategy, args.dataset, args.out, _settings(args), cache=args.cache, registry=_registry(args))


@command
def cmd_cache_frozen(args: argparse.Namespace) -> None:
    """Compute the teacher's and initial student's logits on fixed views of the transfer set once."""
    from kt.models import ModelSpec
    from kt.transfer import build_cache

    build_cache(ModelSpec.parse(args.teacher), ModelSpec.parse(args.student), args.dataset, _settings(args),
                args.out, registry=_registry(args))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kt", description=__doc__.splitlines()[0])
    p.add_argument("--plugin-dir", action="append", default=[], help="extra folder of plugin modules")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=(COMMANDS[name].__doc__ or "").splitlines()[0])

    add("plugins")
    s = add("inspect")
    s.add_argument("files", nargs="+")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        COMMANDS[args.command](args)
    except KtError as e:
        print(f"kt: error: {e}", file=sys.stderr)
        return 2
    return 0
