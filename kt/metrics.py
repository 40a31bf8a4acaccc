"""Transfer metrics (Roth et al., ICLR 2024, §4; README "Artifacts"), in points of the evaluation
set, and the summary.

Per run: transfer delta, knowledge gain and loss, the teacher's residual complementary knowledge,
the share of the initial positive flips transferred, and how much of the gain falls into the
teacher's top-p % classes. The summary aggregates runs per strategy, overall and per teacher-
strength bin, and checks how well the complementarity forecast ranks the measured deltas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from kt.artifacts import check_same_samples, read_logits, write_table
from kt.complementarity import TOP_P
from kt.errors import KtError
from kt.schema import default
from kt.select import SIMILAR_WITHIN, bin_expr
from kt.stats import delta_ci, mcnemar_p

SAME_RUN_FIX = "rerun both steps on the same dataset config."
ALPHA = default("alpha")


def top_classes(pos_per_class: np.ndarray, p: float) -> np.ndarray:
    """The smallest set of classes holding ``p`` % of all positive flips (most flips first)."""
    total = pos_per_class.sum()
    if total == 0:
        return np.array([], dtype=int)
    order = np.argsort(-pos_per_class, kind="stable")
    k = int(np.searchsorted(np.cumsum(pos_per_class[order]), p / 100 * total - 1e-9) + 1)
    return order[:k]


def run_metrics(before: np.ndarray, after: np.ndarray, teacher: np.ndarray, labels: np.ndarray,
                num_classes: int, alpha: float = ALPHA) -> dict[str, float]:
    """Metrics of one transfer from predictions (class indices) on the evaluation set.

    ``teacher``: one teacher's predictions (N,), or a group's (K, N). A group knows a sample when any
    member is right (its positive flips are the union of the members'); its ``teacher_acc`` is the
    members' mean accuracy, ``group_oracle_acc`` the share any member gets right."""
    right_b, right_a = before == labels, after == labels
    right_each = np.atleast_2d(teacher) == labels
    right_t = right_each.any(0)
    pct = 100.0 / len(labels)
    initial_flips = right_t & ~right_b
    gained = ~right_b & right_a
    out = {
        "acc_before": right_b.sum() * pct, "acc_after": right_a.sum() * pct,
        "teacher_acc": right_each.sum(1).mean() * pct,
        "delta": (right_a.sum() - right_b.sum()) * pct,
        "knowledge_gain": gained.sum() * pct, "knowledge_loss": (right_b & ~right_a).sum() * pct,
        "pos_flips_before": initial_flips.sum() * pct,
        "residual_pos_flips": (right_t & ~right_a).sum() * pct,
        "transferred_share": 100.0 * (initial_flips & right_a).sum() / max(initial_flips.sum(), 1),
    }
    per_class = np.bincount(labels[initial_flips], minlength=num_classes)
    for p in TOP_P:
        in_top = np.isin(labels, top_classes(per_class, p))
        out[f"gain_in_top{p}_share"] = 100.0 * (gained & in_top).sum() / max(gained.sum(), 1)
    n_gained, n_lost = int(gained.sum()), int((right_b & ~right_a).sum())
    out["gained"], out["lost"] = n_gained, n_lost  # counts of samples; Δ's test and interval (kt.stats)
    out["delta_ci_low"], out["delta_ci_high"] = delta_ci(n_gained, n_lost, len(labels))
    out["mcnemar_p"] = mcnemar_p(n_gained, n_lost)
    out["significant"] = float(out["mcnemar_p"] < alpha)
    if len(right_each) > 1:
        out["group_oracle_acc"] = right_t.sum() * pct
    return {k: float(v) for k, v in out.items()}


def run_table(run_dir: str | Path, teacher_logits: str | Path | Sequence[str | Path] | None, strategy: str,
              teacher: str, student: str, alpha: float = ALPHA) -> pl.DataFrame:
    """Long-format metrics of one run folder: columns strategy, teacher, student, members,
    base_strategy, metric, value. ``teacher_logits``: one file, or one per member of a group."""
    run_dir = Path(run_dir)
    before, after = read_logits(run_dir / "eval_before.h5"), read_logits(run_dir / "eval_after.h5")
    check_same_samples(before, after, SAME_RUN_FIX)
    files = [teacher_logits] if isinstance(teacher_logits, str | Path) else list(teacher_logits or [])
    teacher_pred = []
    for path in files:
        t = read_logits(path)
        check_same_samples(before, t, SAME_RUN_FIX)
        teacher_pred.append(t.predictions)
    if not teacher_pred:  # teacher-free strategies: flips are measured against the student itself
        teacher_pred = [before.predictions]
    values = run_metrics(before.predictions, after.predictions, np.stack(teacher_pred), before.labels,
                         before.logits.shape[1], alpha)
    config_file = run_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    members = ",".join(config.get("members", [])) or teacher
    return pl.DataFrame({"strategy": strategy, "teacher": teacher, "student": student, "members": members,
                         "base_strategy": config.get("base_strategy"), "metric": list(values),
                         "value": list(values.values())}, schema_overrides={"base_strategy": pl.String})


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 points."""
    if len(x) < 3:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        return pl.Series(v).rank("average").to_numpy()

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def summarize(run_files: Sequence[str | Path], pairs: pl.DataFrame | None = None,
              similar_within: float = SIMILAR_WITHIN) -> pl.DataFrame:
    """One row per run (``scope = run``), per-strategy aggregates overall (``scope = strategy``) and
    per teacher-strength bin (``scope = strategy/bin``), and one row per multi-teacher group
    (``scope = group``, see :func:`group_table`). Per-run files may carry different metrics
    (strategies differ); missing ones become nulls.

    The aggregates cover the selected pairs (``selected``; all single-teacher runs without
    ``pairs``): single-teacher runs that exist only as members of a group stay out of them, so
    every strategy is aggregated over the same pairs."""
    if not run_files:
        raise KtError("no transfer metrics to summarise; does the config select any pairs and strategies?")
    long = pl.concat([pl.read_parquet(f) for f in run_files], how="diagonal_relaxed")
    runs = long.pivot(on="metric", index=["strategy", "teacher", "student", "members", "base_strategy"],
                      values="value")
    runs = runs.with_columns((pl.col("teacher_acc") - pl.col("acc_before")).alias("acc_diff"),
                             pl.col("significant").cast(pl.Boolean))
    runs = runs.with_columns(bin_expr(similar_within).alias("bin"))
    single = pl.col("base_strategy").is_null()
    if pairs is not None:
        chosen = pairs.select("teacher", "student").unique().with_columns(pl.lit(True).alias("selected"))
        runs = runs.join(chosen, on=["teacher", "student"], how="left")
        runs = runs.with_columns((pl.col("selected").fill_null(False) & single).alias("selected"))
    else:
        runs = runs.with_columns(single.alias("selected"))
    if pairs is not None and "forecast_dp" in pairs.columns:
        runs = runs.join(pairs.select("teacher", "student", "forecast_dp", "pos_flips").unique(["teacher", "student"]),
                         on=["teacher", "student"], how="left")
    runs = runs.with_columns(pl.lit("run").alias("scope"))
    chosen_runs = runs.filter("selected")

    def aggregate(by: list[str]) -> pl.DataFrame:
        out = chosen_runs.group_by(by, maintain_order=True).agg(
            pl.len().alias("n_runs"),
            ((pl.col("delta") > 0).mean() * 100).alias("success_rate"),
            ((pl.col("significant") & (pl.col("delta") > 0)).mean() * 100).alias("significant_gain_rate"),
            ((pl.col("significant") & (pl.col("delta") < 0)).mean() * 100).alias("significant_harm_rate"),
            pl.col("delta").mean().alias("mean_delta"), pl.col("delta").median().alias("median_delta"),
            pl.col("knowledge_gain").mean().alias("mean_gain"), pl.col("knowledge_loss").mean().alias("mean_loss"))
        if "forecast_dp" in chosen_runs.columns:
            rho = chosen_runs.group_by(by, maintain_order=True).agg(
                pl.map_groups(["forecast_dp", "delta"], lambda s: spearman(s[0].to_numpy(), s[1].to_numpy()),
                              return_dtype=pl.Float64, returns_scalar=True).alias("forecast_spearman"))
            out = out.join(rho, on=by)
        return out

    per_strategy = aggregate(["strategy"]).with_columns(pl.lit("strategy").alias("scope"))
    per_bin = aggregate(["strategy", "bin"]).with_columns(pl.lit("strategy/bin").alias("scope"))
    table = pl.concat([runs, per_strategy, per_bin, group_table(runs)], how="diagonal_relaxed")
    first = ["scope", "strategy", "teacher", "student", "bin"]
    return table.select(first + [c for c in table.columns if c not in first])


def group_table(runs: pl.DataFrame) -> pl.DataFrame:
    """Per multi-teacher group and student: the Δ of each mode (``{mode}_delta``) next to the min,
    mean and max Δ of the members' single-teacher runs with the group's strategy (the paper's
    multi-teacher table). ``strategy`` is the group's single-teacher strategy."""
    grouped = runs.filter(pl.col("base_strategy").is_not_null())
    rows = []
    for (group, student, base), g in grouped.group_by("teacher", "student", "base_strategy", maintain_order=True):
        members = sorted({m for ms in g["members"] for m in ms.split(",")})
        singles = runs.filter(pl.col("base_strategy").is_null() & (pl.col("strategy") == base)
                              & (pl.col("student") == student) & pl.col("teacher").is_in(members))["delta"]
        row = {"scope": "group", "strategy": base, "teacher": group, "student": student, "members": ",".join(members),
               "n_single": len(singles), "single_min_delta": singles.min(), "single_mean_delta": singles.mean(),
               "single_max_delta": singles.max()}
        row |= {f"{mode}_delta": delta for mode, delta in g.select("strategy", "delta").iter_rows()}
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame()


OVERVIEW_COLUMNS = {"strategy": "strategy", "n_runs": "runs", "success_rate": "success rate %",
                    "significant_gain_rate": "significant gain %", "significant_harm_rate": "significant harm %",
                    "mean_delta": "mean Δ", "median_delta": "median Δ", "mean_gain": "mean gain",
                    "mean_loss": "mean loss"}


def overview(table: pl.DataFrame) -> pl.DataFrame:
    """The per-strategy rows with readable headers: the report's landing table."""
    rows = table.filter(pl.col("scope") == "strategy").select(list(OVERVIEW_COLUMNS))
    return rows.with_columns(pl.selectors.float().round(2)).rename(OVERVIEW_COLUMNS)


def write_summary(table: pl.DataFrame, out_parquet: str | Path, out_csv: str | Path,
                  out_overview: str | Path | None = None) -> None:
    write_table(table, out_parquet)
    write_table(table, out_csv, float_precision=4)
    if out_overview:
        write_table(overview(table), out_overview)
