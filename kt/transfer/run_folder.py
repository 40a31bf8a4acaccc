"""The run folder of one transfer: the one place that names its files, marks it complete and keeps
its resume state.

Importable without torch: the workflow names a rule's outputs with :meth:`RunFolder.outputs` at
parse time, so torch, h5py and polars are imported only inside the methods that write or load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import polars as pl


class RunFolder:
    """``student.pth`` (the weights evaluated: the strategy's ``eval_model``), ``eval_before.h5`` and
    ``eval_after.h5`` (eval logits before and after transfer), ``metrics.parquet`` (one row per epoch),
    ``config.json`` (written last: its presence marks the run complete), ``state.pt`` (the resume
    point, while the run is unfinished), ``stages/{k}_{teacher}/`` (a sequential group's stages, each a
    run folder), ``transfer_metrics.parquet`` (the evaluation's, written later by ``kt evaluate``), and
    for strategies that train more than the student: ``strategy.pt`` (the strategy's own modules) and
    ``trained/{teacher}/`` (a trained teacher's ``student.pth``, ``eval_before.h5``, ``eval_after.h5``:
    the reverse direction, read by ``kt evaluate``)."""

    OUTPUTS: ClassVar[dict[str, str]] = {"weights": "student.pth", "before": "eval_before.h5",
                                          "after": "eval_after.h5", "metrics": "metrics.parquet",
                                          "config": "config.json"}
    STATE: ClassVar[str] = "state.pt"
    STRATEGY: ClassVar[str] = "strategy.pt"
    TRAINED: ClassVar[str] = "trained"
    EVALUATION: ClassVar[str] = "transfer_metrics.parquet"
    STAGES: ClassVar[str] = "stages"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def outputs(cls, folder: str) -> dict[str, str]:
        """:attr:`OUTPUTS` as paths under ``folder``, joined as strings so that Snakemake wildcards in
        ``folder`` stay as they are: a transfer rule's named outputs."""
        return {name: f"{folder}/{file}" for name, file in cls.OUTPUTS.items()}

    def file(self, name: str) -> Path:
        """The path of output ``name``, a key of :attr:`OUTPUTS`."""
        if name not in self.OUTPUTS:
            raise KeyError(f"a run folder has no output {name!r}; its outputs are {sorted(self.OUTPUTS)}")
        return self.path / self.OUTPUTS[name]

    @property
    def weights(self) -> Path:
        return self.file("weights")

    @property
    def before(self) -> Path:
        return self.file("before")

    @property
    def after(self) -> Path:
        return self.file("after")

    @property
    def metrics(self) -> Path:
        return self.file("metrics")

    @property
    def config(self) -> Path:
        return self.file("config")

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def evaluation(self) -> Path:
        return self.path / self.EVALUATION

    @property
    def strategy_modules(self) -> Path:
        return self.path / self.STRATEGY

    def trained(self, teacher: str) -> RunFolder:
        """The folder of a teacher that trained in this run (its slug), in the reverse direction's roles."""
        return RunFolder(self.path / self.TRAINED / teacher)

    def trained_teachers(self) -> list[str]:
        """The slugs of the teachers this run trained (none for most strategies)."""
        folder = self.path / self.TRAINED
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def stage(self, k: int, teacher: str) -> RunFolder:
        """Stage ``k`` (from 1) of a sequential group, taught by ``teacher`` (its slug)."""
        return RunFolder(self.path / self.STAGES / f"{k}_{teacher}")

    @property
    def complete(self) -> bool:
        """Whether the run finished: ``config.json`` is written last, atomically."""
        return self.config.exists()

    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config.read_text())

    def write_record(self, config: dict[str, Any], metrics: pl.DataFrame) -> None:
        """``metrics.parquet``, then ``config.json``, whose presence marks the folder complete; the
        other results must be in place before."""
        from kt.artifacts import atomic_path, write_table

        write_table(metrics, self.metrics)
        with atomic_path(self.config) as tmp:
            tmp.write_text(json.dumps(config, indent=2))

    def save_state(self, state: dict[str, Any]) -> None:
        """The resume point (model, optimiser, strategy state, RNG, history), written atomically after
        every epoch, so that a killed run loses at most one epoch."""
        import torch

        from kt.artifacts import atomic_path

        with atomic_path(self.state) as tmp:
            torch.save(state, tmp)

    def load_state(self) -> dict[str, Any] | None:
        """The resume point a killed run left, or None."""
        if not self.state.exists():
            return None
        import torch

        return torch.load(self.state, map_location="cpu", weights_only=False)

    def clear_state(self) -> None:
        """Drop the resume point once the results are written."""
        self.state.unlink(missing_ok=True)

