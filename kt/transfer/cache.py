"""The frozen-output cache: teacher and initial-student logits on seeded views of the transfer set,
built once per pair and shared by every strategy (README: when it pays), and :class:`FrozenLogits`,
which hands the training step the frozen models' logits from the cache or computed online.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kt.artifacts import atomic_path, open_h5, set_attrs
from kt.augment import pass_seed
from kt.data import Loader, Split, load_split
from kt.device import autocast, pick_device
from kt.errors import KtError
from kt.extract import prepare
from kt.models import Classifier, ModelSpec, create_model
from kt.registry import Registry, get_registry
from kt.settings import TransferSettings
from kt.transfer.views import reference_models, view_for

log = logging.getLogger("kt")


class FrozenLogits:
    """Logits of the frozen models (teachers, initial student) for a batch: computed online, or read
    from the frozen-output cache built by :func:`build_cache` (single teacher only)."""

    def __init__(self, teachers: list[Classifier], initial: Classifier | None, device: torch.device,
                 cache: FrozenCache | None = None) -> None:
        self.teachers, self.initial = teachers, initial
        self.device, self.cache = device, cache

    def _logits(self, model: Classifier, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device):
            return model(view_for(model, images)).float()

    def __call__(self, images: torch.Tensor, pos: torch.Tensor, view: int
                 ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(teachers' logits, initial student's logits or None)."""
        if self.cache is not None:
            initial = self.cache.read("initial", view, pos, self.device) if self.initial is not None else None
            return [self.cache.read("teacher", view, pos, self.device)] if self.teachers else [], initial
        initial = self._logits(self.initial, images) if self.initial is not None else None
        return [self._logits(t, images) for t in self.teachers], initial


CACHE_FLUSH_EVERY = 20  # batches between resume points of a cache build
COPY_ROWS = 8192  # rows per block when the partial arrays are copied into the HDF5 file (O(block) memory)
CACHE_NAMES = ("teacher", "initial")


def build_cache(teacher: ModelSpec, student: ModelSpec, dataset: dict[str, Any], settings: TransferSettings,
                out: str | Path, registry: Registry | None = None) -> None:
    """Frozen-output cache: teacher and initial-student logits on ``cache_views`` seeded views of the
    transfer set, shared by every strategy of the pair (README: when it pays, and for how long a
    schedule fixed views are safe).

    The disk it needs is checked first. A killed build resumes from its last flushed batch: rows
    go to memory-mapped arrays in ``<out>.partial/`` (they survive SIGKILL) with a progress file,
    then into the HDF5 file, written atomically."""
    registry = registry or get_registry()
    if settings.cache_views < 1:
        raise KtError("transfer.cache_views must be >= 1 to build a frozen-output cache.")
    out = Path(out)
    train = load_split(dataset, "train", registry)
    dev = pick_device(settings.device)
    models = {"teacher": prepare(create_model(teacher, train.classes, registry), dev),
              "initial": prepare(create_model(student, train.classes, registry), dev)}
    attrs = cache_attrs(teacher, student, train, settings)
    shapes = {k: (settings.cache_views, len(train), m.num_classes) for k, m in models.items()}
    check_cache_space(out, shapes, settings, f"{teacher.slug} -> {student.slug}")
    partial = _PartialCache(out, attrs, shapes, settings.cache_dtype)
    loader = Loader(train, models["initial"].preprocess, settings.eval_batch_size, settings.workers,
                    settings.augment, dev, reference_models(settings, [models["initial"], models["teacher"]]))
    first_view, row = partial.resume_point()
    for view in range(first_view, settings.cache_views):
        positions = np.arange(row, len(train))
        batches = loader.batches(positions, pass_seed(settings.seed, view))
        for i, (images, _labels, pos) in enumerate(tqdm(batches, desc=f"cache view {view}", mininterval=5,
                                                        total=-(-len(positions) // settings.eval_batch_size))):
            with torch.inference_mode(), autocast(dev):
                for name, model in models.items():
                    partial.arrays[name][view, pos.numpy()] = model(view_for(model, images)).float().cpu().numpy()
            if (i + 1) % CACHE_FLUSH_EVERY == 0:
                partial.mark(view, int(pos[-1]) + 1)
        row = 0
        partial.mark(view + 1, 0)
    partial.finish()


def cache_attrs(teacher: ModelSpec, student: ModelSpec, train: Split, settings: TransferSettings) -> dict[str, Any]:
    """What a frozen-output cache was built from; a transfer refuses a cache whose attrs differ.
    Un-augmented views do not depend on the seed, so such a cache serves every seed (seed -1)."""
    seed = settings.seed if settings.augment != "none" else -1
    return {"kind": "frozen_cache", "teacher": teacher.slug, "student": student.slug,
            "views": settings.cache_views, "augment": settings.augment, "seed": seed,
            "dtype": settings.cache_dtype, "decode": settings.decode, "dataset_fingerprint": train.fingerprint()}


def check_cache_space(out: Path, shapes: dict[str, tuple[int, ...]], settings: TransferSettings, pair: str) -> None:
    """Refuse a build that would not fit the disk: the partial arrays and the HDF5 file coexist
    while the file is written, so twice the cache's size must be free."""
    size = sum(int(np.prod(shape)) for shape in shapes.values()) * np.dtype(settings.cache_dtype).itemsize
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if 2 * size > free:
        raise KtError(f"the frozen-output cache of {pair} needs {size / 1e9:.1f} GB ({shapes['teacher'][0]} views x "
                      f"{shapes['teacher'][1]} images x {shapes['teacher'][2]} classes x 2 models, "
                      f"{settings.cache_dtype}), twice that while it is written, but {out.parent} has "
                      f"{free / 1e9:.1f} GB free. Set transfer.cache_dtype: float16, fewer transfer.cache_views, "
                      "or transfer.cache_views: 0 (frozen models run online).")


class _PartialCache:
    """A cache build's resumable state: memory-mapped ``.npy`` arrays and ``progress.json``
    (attrs, next view and row), in ``<out>.partial/``."""

    def __init__(self, out: Path, attrs: dict[str, Any], shapes: dict[str, tuple[int, ...]], dtype: str) -> None:
        self.out, self.attrs, self.folder = out, attrs, out.with_name(out.name + ".partial")
        self.progress = self.folder / "progress.json"
        known = json.loads(self.progress.read_text()) if self.progress.exists() else None
        if known is None or known["attrs"] != attrs:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            known = None
        mode = "r+" if known else "w+"
        self.arrays = {k: np.lib.format.open_memmap(self.folder / f"{k}.npy", mode=mode, dtype=dtype, shape=shape)
                       for k, shape in shapes.items()}
        self.next = (known["view"], known["row"]) if known else (0, 0)
        if known:
            log.info("resuming the cache build of %s at view %d, row %d", out, *self.next)

    def resume_point(self) -> tuple[int, int]:
        return self.next

    def mark(self, view: int, row: int) -> None:
        """Rows before (view, row) are on disk: flush them, then record the resume point."""
        for array in self.arrays.values():
            array.flush()
        tmp = self.progress.with_suffix(".tmp")
        tmp.write_text(json.dumps({"attrs": self.attrs, "view": view, "row": row}))
        os.replace(tmp, self.progress)

    def finish(self) -> None:
        """The HDF5 cache, copied in blocks of rows (row-chunked for per-batch reads), then no partial."""
        with atomic_path(self.out) as tmp, open_h5(tmp, "w") as f:
            for name, array in self.arrays.items():
                views, n, classes = array.shape
                data = f.create_dataset(name, shape=array.shape, dtype=array.dtype, chunks=(1, min(n, 8), classes))
                for view in range(views):
                    for start in range(0, n, COPY_ROWS):
                        data[view, start:start + COPY_ROWS] = array[view, start:start + COPY_ROWS]
            set_attrs(f, self.attrs)
        self.arrays.clear()
        shutil.rmtree(self.folder)


class FrozenCache:
    """A frozen-output cache opened for reading: rows are read per batch, never the whole file."""

    def __init__(self, path: str | Path, expected: dict[str, Any]) -> None:
        self.path = path
        self.file = open_h5(path)
        self.data = {name: self.file[name] for name in CACHE_NAMES}
        attrs = dict(self.file.attrs)
        wrong = {k: (attrs.get(k), v) for k, v in expected.items() if attrs.get(k) != v}
        if wrong:
            self.file.close()
            raise KtError(f"frozen-output cache {path} does not match this transfer ({wrong}); delete it so "
                          "the workflow rebuilds it.")

    def read(self, name: str, view: int, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        """float32 logits of ``name`` on ``view`` for the samples at ``positions`` (any order)."""
        pos = positions.numpy()
        order = np.argsort(pos)  # HDF5 reads rows in increasing order
        rows = np.empty((len(pos), self.data[name].shape[2]), dtype=np.float32)
        rows[order] = self.data[name][view, pos[order]]
        return torch.from_numpy(rows).to(device, non_blocking=True)

    def close(self) -> None:
        self.file.close()


def load_cache(path: str | Path, teacher: ModelSpec, student: ModelSpec, train: Split,
               settings: TransferSettings) -> FrozenCache:
    """The cache at ``path`` opened for reading, refused unless it was built for this pair, data and settings."""
    return FrozenCache(path, cache_attrs(teacher, student, train, settings))
