"""Artifact I/O: atomic writes, and the logits HDF5 layout every rule shares.

``results/logits/{split}/{model}.h5`` holds ``logits`` (N, C) float32, ``labels`` (N,) int64,
``index`` (N,) sample ids in dataset order and optionally ``features`` (N, D); attrs describe the
model, the data (``dataset_fingerprint``) and the run. Arrays are chunked by whole rows (~1 MiB).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import polars as pl

from kt.errors import KtError

if TYPE_CHECKING:
    from kt.data import Split
    from kt.models import Classifier, ModelSpec

FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """A temporary path beside ``final``, renamed onto it only if the block succeeds.

    A killed process leaves at most a dot-file named ``.NAME.tmp-PID``, never a complete-looking
    artifact; the rename is atomic because both paths are on the same filesystem.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_atomic(source: str | Path, target: str | Path) -> None:
    """Copy an artifact so that ``target`` never exists half-written."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def row_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of whole rows, about CHUNK_BYTES each."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    rows = max(1, min(shape[0], CHUNK_BYTES // row_bytes))
    return (rows, *shape[1:])


def _index_array(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(h5py.string_dtype()) if ids.dtype.kind in "US" else ids.astype(np.int64)


class LogitsWriter:
    """Streams rows into an open HDF5 file (inside :func:`atomic_path`), buffering consecutive rows
    up to ``flush_bytes`` so that small batches do not each pay an HDF5 write. Call :meth:`flush`
    before closing the file."""

    def __init__(self, f: h5py.File, ids: np.ndarray, labels: np.ndarray, num_classes: int,
                 feature_dim: int | None = None, flush_bytes: int = 1 << 20, dtype: str = "float32") -> None:
        n = len(labels)
        self.f, self.flush_bytes = f, flush_bytes
        self._start, self._rows, self._bytes, self._parts = 0, 0, 0, []
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        index = _index_array(ids)
        f.create_dataset("index", data=index, dtype=index.dtype)
        item = np.dtype(dtype).itemsize
        f.create_dataset("logits", shape=(n, num_classes), dtype=dtype, chunks=row_chunks((n, num_classes), item))
        if feature_dim:
            f.create_dataset("features", shape=(n, feature_dim), dtype=dtype, chunks=row_chunks((n, feature_dim), item))

    def write(self, start: int, logits: np.ndarray, features: np.ndarray | None = None) -> None:
        if self._parts and start != self._start + self._rows:
            self.flush()
        if not self._parts:
            self._start = start
        self._parts.append((logits, features))
        self._rows += len(logits)
        self._bytes += logits.nbytes + (features.nbytes if features is not None else 0)
        if self._bytes >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        stop = self._start + self._rows
        self.f["logits"][self._start:stop] = np.concatenate([p[0] for p in self._parts])
        if self._parts[0][1] is not None:
            self.f["features"][self._start:stop] = np.concatenate([p[1] for p in self._parts])
        self._start, self._rows, self._bytes, self._parts = stop, 0, 0, []


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in % of ``scores``: (N, C) logits, or the (N,) predicted classes. The one
    definition behind every accuracy kt writes or logs (logits attrs, metrics.parquet, `kt inspect`),
    so the same predictions always give the same number, to the last bit."""
    predicted = scores.argmax(1) if scores.ndim == 2 else scores
    return float((predicted == labels).mean() * 100)


def versions() -> dict[str, str]:
    """Versions of the packages that shaped an artifact's numbers."""
    import timm
    import torch
    import torchvision

    import kt

    return {"kt": kt.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": np.__version__}


def logits_attrs(spec: ModelSpec, model: Classifier, data: Split, dataset: dict[str, Any],
                 logits: np.ndarray | None = None) -> dict[str, Any]:
    """The attrs every logits file carries (accuracy from ``logits`` when given)."""
    from kt.models import infer_family, param_count  # kt.models imports torch; artifacts stays light

    attrs = {
        "format_version": FORMAT_VERSION, "kind": "logits", "model": spec.slug, "model_id": spec.id,
        "model_spec": spec.to_dict(), "source": spec.source, "weights_origin": model.origin,
        "params": param_count(model.body), "family": spec.family or infer_family(model.body),
        "preprocessing": model.preprocess.to_dict(), "num_classes": model.num_classes,
        "classes": data.classes, "dataset": dataset, "split": data.name,
        "dataset_fingerprint": data.fingerprint(), "num_samples": len(data), "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if logits is not None:
        attrs["accuracy"] = top1(logits, data.labels)
    return attrs


def write_logits(out: str | Path, logits: np.ndarray, data: Split, attrs: dict[str, Any]) -> None:
    """Write an in-memory logits array in the shared layout (atomically)."""
    with atomic_path(out) as tmp, open_h5(tmp, "w") as f:
        writer = LogitsWriter(f, data.ids, data.labels, logits.shape[1])
        writer.write(0, logits)
        writer.flush()
        set_attrs(f, attrs)


def set_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    """Scalars and strings as they are; lists and dicts as JSON strings (readable with h5dump)."""
    for key, value in attrs.items():
        obj.attrs[key] = json.dumps(value) if isinstance(value, dict | list | tuple) else value


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class LogitsFile:
    """The content of one logits file."""

    path: Path
    logits: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    attrs: dict[str, Any]
    features: np.ndarray | None = field(default=None, repr=False)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in % recomputed from the arrays."""
        return top1(self.logits, self.labels)


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an artifact, turning 'truncated/not HDF5/missing' into a message naming the file."""
    try:
        return h5py.File(path, mode)
    except FileNotFoundError:
        raise KtError(f"{path} does not exist; run the workflow step that writes it first.") from None
    except OSError as e:
        if "unable to lock file" in str(e):
            raise KtError(f"{path} could not be locked ({e}): another process is writing it, or the "
                          "filesystem (NFS/Lustre/GPFS) does not support HDF5 locking: export "
                          "HDF5_USE_FILE_LOCKING=FALSE (docs/cluster.md).") from None
        raise KtError(f"{path} is not a readable HDF5 file ({e}); it is truncated or corrupt: "
                      "delete it and rerun the step that writes it.") from None


def check_version(path: str | Path, attrs: dict[str, Any]) -> None:
    version = int(attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise KtError(f"{path} was written by a newer kt (format {version}, this kt reads up to "
                      f"{FORMAT_VERSION}); upgrade kt or rerun the step with this version.")


def read_header(f: h5py.File, path: str | Path) -> tuple[dict[str, Any], np.ndarray]:
    """A logits file's attrs (format version checked) and sample index, its layout checked: what
    every reader needs before the arrays."""
    attrs = {k: _attr(v) for k, v in f.attrs.items()}
    check_version(path, attrs)
    missing = {"logits", "labels", "index"} - set(f)
    if missing:
        raise KtError(f"{path} lacks dataset(s) {sorted(missing)}; it is not a kt logits file "
                      "(or was cut short): delete it and rerun the step that writes it.")
    index = f["index"][:]
    return attrs, index.astype(str) if index.dtype.kind == "O" else index


def read_logits(path: str | Path, features: bool = False) -> LogitsFile:
    """Load a logits file fully into memory (float32 whatever the storage), checking its layout and
    format version."""
    with open_h5(path) as f:
        try:
            attrs, index = read_header(f, path)
            feats = f["features"][:].astype(np.float32, copy=False) if features and "features" in f else None
            return LogitsFile(Path(path), f["logits"][:].astype(np.float32, copy=False), f["labels"][:], index,
                              attrs, feats)
        except OSError as e:
            raise KtError(f"{path} is truncated or corrupt ({e}); delete it and rerun the step.") from None


def write_table(table: pl.DataFrame, out: str | Path, **csv_options: Any) -> None:
    """Write a table atomically: CSV when ``out`` ends in ``.csv`` (``csv_options`` go to polars),
    parquet otherwise. The one writer of every table artifact."""
    with atomic_path(out) as tmp:
        if Path(out).suffix == ".csv":
            table.write_csv(tmp, **csv_options)
        else:
            table.write_parquet(tmp)


SAME_DATA_FIX = "extract both on the same dataset split (same dataset config, subset and order)."


def check_same_samples(a: LogitsFile, b: LogitsFile | Split, fix: str = SAME_DATA_FIX) -> None:
    """Refuse to pair rows of ``a`` with ``b`` (a logits file or a split) unless they describe the same
    samples in the same order: fingerprint, count, ids, labels and, for two files, the class count.
    Pairing rows of different samples would silently give meaningless flips and metrics."""
    other = getattr(b, "path", None) or f"the {b.name!r} split"
    both = f"{a.path} and {other}"
    fa = a.attrs.get("dataset_fingerprint")
    fb = b.fingerprint() if callable(getattr(b, "fingerprint", None)) else b.attrs.get("dataset_fingerprint")
    ids = b.ids if hasattr(b, "ids") else b.index
    if fa is not None and fb is not None and fa != fb:
        raise KtError(f"{both} were computed on different data (dataset_fingerprint {fa} vs {fb}); {fix}")
    if len(a.labels) != len(b.labels):
        raise KtError(f"{both} hold different numbers of samples ({len(a.labels)} vs {len(b.labels)}); {fix}")
    ids = np.asarray(ids)
    if not (np.array_equal(a.index, ids) if a.index.dtype.kind == ids.dtype.kind
            else np.array_equal(a.index.astype(str), ids.astype(str))):
        raise KtError(f"{both} list different sample ids (index) or a different order; {fix}")
    if not np.array_equal(a.labels, b.labels):
        raise KtError(f"{both} hold different labels for the same samples; {fix}")
    if isinstance(b, LogitsFile) and a.logits.shape[1] != b.logits.shape[1]:
        raise KtError(f"{both} have different numbers of classes ({a.logits.shape[1]} vs "
                      f"{b.logits.shape[1]}); they need one shared label space.")


def check_model(file: LogitsFile, slug: str, role: str) -> None:
    """Refuse a logits file that holds another model's logits than the ``role`` (student, teacher) ``slug``."""
    if file.attrs.get("model") != slug:
        raise KtError(f"{file.path} holds the logits of model {file.attrs.get('model')!r}, not of the {role} "
                      f"{slug!r}; give the {role}'s own extraction file.")


def read_table(path: str | Path) -> pl.DataFrame:
    """A parquet artifact, with a message naming the file when it is missing or unreadable."""
    try:
        return pl.read_parquet(path)
    except FileNotFoundError:
        raise KtError(f"{path} does not exist; run the workflow step that writes it first.") from None
    except (OSError, pl.exceptions.PolarsError) as e:
        raise KtError(f"{path} is not a readable parquet file ({e}); delete it and rerun its step.") from None


def artifact_info(path: str | Path) -> dict[str, Any]:
    """What an HDF5 artifact holds: datasets with shape/dtype, attrs, and top-1 if it has logits."""
    with open_h5(path) as f:
        info: dict[str, Any] = {"file": str(path), "datasets": {}, "attrs": {k: _attr(v) for k, v in f.attrs.items()}}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                info["datasets"][name] = {"shape": list(obj.shape), "dtype": str(obj.dtype),
                                          "chunks": list(obj.chunks) if obj.chunks else None}
        f.visititems(visit)
    if {"logits", "labels"} <= set(info["datasets"]):
        info["top1_recomputed"] = round(read_logits(path).accuracy, 4)
    return info


def summarize_artifact(info: dict[str, Any]) -> str:
    """A few aligned lines from :func:`artifact_info`'s dict: the file, what it is (model, accuracy, data,
    classes, weights, creation time) where the attrs say so, and each dataset's shape and dtype."""
    attrs = info.get("attrs", {})
    rows: list[tuple[str, str]] = [("file", str(info.get("file", "?")))]
    if "kind" in attrs:
        rows.append(("kind", str(attrs["kind"])))
    if "model_id" in attrs or "model" in attrs:
        model_id, slug = attrs.get("model_id"), attrs.get("model")
        rows.append(("model", f"{model_id} ({slug})" if model_id and slug and slug != model_id
                     else str(model_id or slug)))
    top1 = info.get("top1_recomputed")
    if "accuracy" in attrs:
        rows.append(("accuracy", f"{float(attrs['accuracy']):.2f} %"
                     + (f" (recomputed {float(top1):.2f} %)" if top1 is not None else "")))
    elif top1 is not None:
        rows.append(("accuracy", f"{float(top1):.2f} % (recomputed)"))
    if "dataset" in attrs or "dataset_fingerprint" in attrs:
        dataset = attrs.get("dataset")
        parts = [str(dataset.get("name", dataset)) if isinstance(dataset, dict) else str(dataset)] if dataset else []
        if "split" in attrs:
            parts.append(f"{attrs['split']} split")
        if "dataset_fingerprint" in attrs:
            parts.append(f"fingerprint {attrs['dataset_fingerprint']}")
        rows.append(("dataset", ", ".join(parts)))
    for key, label in (("num_classes", "classes"), ("weights_origin", "weights"), ("created", "created")):
        if key in attrs:
            rows.append((label, str(attrs[key])))
    datasets = info.get("datasets", {})
    width = max((len(name) for name in datasets), default=0)
    lines = [f"{name:<{width}}  {tuple(d['shape'])} {d['dtype']}" for name, d in datasets.items()]
    rows += [("datasets" if i == 0 else "", line) for i, line in enumerate(lines or ["(none)"])]
    pad = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{pad}}  {value}".rstrip() for label, value in rows)
