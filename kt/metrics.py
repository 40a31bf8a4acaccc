"""Transfer metrics (Roth et al., ICLR 2024, §4; README "Artifacts"), in points of the evaluation
set, and the summary.

Per run: transfer delta, knowledge gain and loss, the teacher's residual complementary knowledge,
the share of the initial positive flips transferred (kt's per-sample ``transferred_share``, and the
paper's class-level ``transfer_rate``), and how much of the gain falls into the teacher's top-p %
classes. The summary aggregates runs per strategy, overall and per teacher-strength bin, with
bootstrap intervals over pairs (:mod:`kt.stats`), and checks how well the complementarity forecast
ranks the measured deltas. With several seeds, each pair also gets a row over its seeds that says
whether the spread between seeds exceeds the effect. When the config runs the control ``ce`` (labels
only, no teacher), every run is also compared with it, per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kt.artifacts import LogitsFile, check_same_samples, read_logits, write_table
from kt.complementarity import TOP_P
from kt.errors import KtError
from kt.names import CONTROL, NO_TEACHER, reverse_of
from kt.schema import default
from kt.select import SIMILAR_WITHIN, bin_expr
from kt.stats import bootstrap_ci, delta_ci, mcnemar_p, spearman
from kt.transfer.run_folder import RunFolder

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


def transfer_rate(pos_per_class: np.ndarray, gain_per_class: np.ndarray) -> float | None:
    """The paper's class-level transfer rate, in %: the student's gains (wrong before, right after) in
    the classes holding the teacher's positive flips, over the number of those flips. Gains in those
    classes need not be transferred flips, so it can exceed 100 (kt's per-sample ``transferred_share``
    cannot). As in the paper's code the classes are its top-100 % set, whose size is the minimal count
    plus one: one class without positive flips joins when there is one (most flips first, ties to the
    highest class index). None without positive flips (the paper's code divides by 0)."""
    total = pos_per_class.sum()
    if total == 0:
        return None
    order = np.argsort(pos_per_class, kind="stable")[::-1]
    return 100.0 * gain_per_class[order[:len(top_classes(pos_per_class, 100)) + 1]].sum() / total


def paired_test(right_from: np.ndarray, right_to: np.ndarray, alpha: float = ALPHA,
                prefix: str = "") -> dict[str, float]:
    """How ``right_to`` differs from ``right_from`` on the same samples: counts gained and lost, the
    95 % interval of the difference in points, the exact McNemar p and whether p < ``alpha``."""
    gained, lost = int((~right_from & right_to).sum()), int((right_from & ~right_to).sum())
    low, high = delta_ci(gained, lost, len(right_from))
    p = mcnemar_p(gained, lost)
    return {f"{prefix}gained": gained, f"{prefix}lost": lost, f"{prefix}delta_ci_low": low,
            f"{prefix}delta_ci_high": high, f"{prefix}mcnemar_p": p, f"{prefix}significant": float(p < alpha)}


def run_metrics(before: np.ndarray, after: np.ndarray, teacher: np.ndarray, labels: np.ndarray,
                num_classes: int, alpha: float = ALPHA, control: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one transfer from predictions (class indices) on the evaluation set.

    ``teacher``: one teacher's predictions (N,), or a group's (K, N). A group knows a sample when any
    member is right (its positive flips are the union of the members'); its ``teacher_acc`` is the
    members' mean accuracy, ``group_oracle_acc`` the share any member gets right. ``control``: the
    control run's predictions (same student and seed), compared per sample with ``after``
    (``delta_vs_control`` and its ``vs_control_*`` test)."""
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
    rate = transfer_rate(per_class, np.bincount(labels[gained], minlength=num_classes))
    if rate is not None:  # absent (null in the summary) when the teacher has no positive flips
        out["transfer_rate"] = rate
    out |= paired_test(right_b, right_a, alpha)  # counts of samples; Δ's test and interval (kt.stats)
    if control is not None:
        right_c = control == labels
        out["control_acc"] = right_c.sum() * pct
        out["delta_vs_control"] = (right_a.sum() - right_c.sum()) * pct
        out |= paired_test(right_c, right_a, alpha, "vs_control_")
    if len(right_each) > 1:
        out["group_oracle_acc"] = right_t.sum() * pct
    return {k: float(v) for k, v in out.items()}


def run_table(run_dir: str | Path, teacher_logits: str | Path | Sequence[str | Path] | None, strategy: str,
              teacher: str, student: str, alpha: float = ALPHA, control: str | Path | None = None) -> pl.DataFrame:
    """Long-format metrics of one run folder: columns strategy, teacher, student, members,
    base_strategy, seed, metric, value. ``teacher_logits``: one file, or one per member of a group;
    ``control``: the control run's ``eval_after.h5`` for the same student and seed. A strategy that
    trains its teachers too (``bikd``) adds the reverse direction for each of them, as strategy
    ``bikd:reverse`` (:func:`kt.names.reverse_of`; its own name keeps it apart from the ``bikd`` run of
    the opposite pair): that teacher as the learner (``trained/{teacher}/``), its teachers' initial
    predictions (the student's and, in a group, the other teachers') as the teachers', no control."""
    folder = RunFolder(run_dir)
    before = read_logits(folder.before)
    files = [teacher_logits] if isinstance(teacher_logits, str | Path) else list(teacher_logits or [])
    teachers = [read_logits(path) for path in files]
    config = folder.read_config() if folder.complete else {}
    keys = {"strategy": strategy, "teacher": teacher, "student": student,
            "members": ",".join(config.get("members", [])) or teacher, "base_strategy": config.get("base_strategy"),
            "seed": config.get("settings", {}).get("seed", 0)}
    tables = [_direction(folder, teachers, control, alpha, keys)]
    trained = folder.trained_teachers()
    for learner in trained:  # its teachers: the student and, in a group, the other trained teachers
        others = [student, *(t for t in trained if t != learner)]
        logits = [before, *(read_logits(folder.trained(t).before) for t in others[1:])]
        reverse = keys | {"strategy": reverse_of(strategy), "teacher": "+".join(others), "student": learner,
                          "members": ",".join(others)}
        tables.append(_direction(folder.trained(learner), logits, None, alpha, reverse))
    return pl.concat(tables)


def _direction(folder: RunFolder, teachers: list[LogitsFile], control: str | Path | None, alpha: float,
               keys: dict[str, Any]) -> pl.DataFrame:
    """The metrics of one learner in ``folder`` (its eval logits before and after) against ``teachers``
    (read logits; none: flips against the learner itself), as :func:`run_table`'s rows."""
    before, after = read_logits(folder.before), read_logits(folder.after)
    check_same_samples(before, after, SAME_RUN_FIX)
    for t in teachers:
        check_same_samples(before, t, SAME_RUN_FIX)
    teacher_pred = [t.predictions for t in teachers] or [before.predictions]
    control_pred = None
    if control is not None:
        reference = read_logits(control)
        check_same_samples(before, reference, SAME_RUN_FIX)
        control_pred = reference.predictions
    values = run_metrics(before.predictions, after.predictions, np.stack(teacher_pred), before.labels,
                         before.logits.shape[1], alpha, control_pred)
    keys = keys | model_facts("student", [before.attrs]) | model_facts("teacher", [t.attrs for t in teachers])
    return pl.DataFrame(keys | {"metric": list(values), "value": list(values.values())}, schema_overrides=KEY_SCHEMA)


KEY_SCHEMA = {"strategy": pl.String, "teacher": pl.String, "student": pl.String, "members": pl.String,
              "base_strategy": pl.String, "seed": pl.Int64, "student_params": pl.Int64,
              "student_family": pl.String, "teacher_params": pl.Int64, "teacher_family": pl.String}


def model_facts(role: str, attrs: list[dict]) -> dict[str, int | str | None]:
    """Parameter count and family (paper §4.5) from logits attrs: one model's, or for a group the
    members' families joined and no single parameter count."""
    families = sorted({a["family"] for a in attrs if "family" in a})
    params = attrs[0].get("params") if len(attrs) == 1 else None
    return {f"{role}_params": params, f"{role}_family": ",".join(families) or None}


def summarize(run_files: Sequence[str | Path], pairs: pl.DataFrame | None = None,
              similar_within: float = SIMILAR_WITHIN, seed: int = 0) -> pl.DataFrame:
    """One row per run (``scope = run``); with several seeds one row per pair over its seeds
    (``scope = pair``); per-strategy aggregates overall (``scope = strategy``) and per teacher-
    strength bin (``scope = strategy/bin``); one row per multi-teacher group (``scope = group``, see
    :func:`group_table`). Per-run files may carry different metrics (strategies differ); missing
    ones become nulls. ``seed`` seeds the bootstrap intervals.

    The aggregates cover the selected pairs (``selected``; all single-teacher runs without
    ``pairs``): single-teacher runs that exist only as members of a group stay out of them, so
    every strategy is aggregated over the same pairs. The control's runs (teacher ``none``) count
    for the students of the selected pairs."""
    if not run_files:
        raise KtError("no transfer metrics to summarise; does the config select any pairs and strategies?")
    long = pl.concat([pl.read_parquet(f) for f in run_files], how="diagonal_relaxed")
    index = [c for c in KEY_SCHEMA if c in long.columns]
    runs = long.pivot(on="metric", index=index, values="value")
    runs = runs.with_columns((pl.col("teacher_acc") - pl.col("acc_before")).alias("acc_diff"),
                             *[pl.col(c).cast(pl.Boolean) for c in ("significant", "vs_control_significant")
                               if c in runs.columns])
    runs = runs.with_columns(pl.when(pl.col("teacher") != NO_TEACHER).then(bin_expr(similar_within)).alias("bin"))
    runs = _mark_selected(runs, pairs)
    if pairs is not None and "forecast_dp" in pairs.columns:
        runs = runs.join(pairs.select("teacher", "student", "forecast_dp", "pos_flips").unique(["teacher", "student"]),
                         on=["teacher", "student"], how="left")
    runs = runs.with_columns(pl.lit("run").alias("scope"))
    chosen = runs.filter("selected")
    per_pair = pair_table(runs)
    per_strategy = aggregate(chosen, ["strategy"], seed).with_columns(pl.lit("strategy").alias("scope"))
    per_bin = aggregate(chosen.filter(pl.col("bin").is_not_null()), ["strategy", "bin"], seed)
    per_bin = per_bin.with_columns(pl.lit("strategy/bin").alias("scope"))
    table = pl.concat([runs, per_pair, per_strategy, per_bin, group_table(runs)], how="diagonal_relaxed")
    first = [c for c in ("scope", "strategy", "teacher", "student", "bin", "seed") if c in table.columns]
    return table.select(first + [c for c in table.columns if c not in first])


def _mark_selected(runs: pl.DataFrame, pairs: pl.DataFrame | None) -> pl.DataFrame:
    """``selected``: the single-teacher runs of the selected pairs, and the control's runs of their
    students (all single-teacher runs without ``pairs``)."""
    single = pl.col("base_strategy").is_null()
    if pairs is None:
        return runs.with_columns(single.alias("selected"))
    chosen = pairs.select("teacher", "student").unique().with_columns(pl.lit(True).alias("selected"))
    runs = runs.join(chosen, on=["teacher", "student"], how="left")
    control_of_selected = (pl.col("teacher") == NO_TEACHER) & pl.col("student").is_in(pairs["student"].implode())
    return runs.with_columns(((pl.col("selected").fill_null(False) | control_of_selected) & single).alias("selected"))


RUN_KEYS = ["strategy", "teacher", "student", "members", "base_strategy"]


def pair_table(runs: pl.DataFrame) -> pl.DataFrame:
    """With several seeds: per (strategy, pair) the mean Δ over seeds, the seeds' standard deviation
    and whether that spread exceeds the effect (|mean Δ| < sd: the seeds disagree more than the
    transfer moves the student). Empty with one seed per run."""
    if runs.group_by(RUN_KEYS).len()["len"].max() < 2:
        return pl.DataFrame()
    rows = runs.group_by(RUN_KEYS, maintain_order=True).agg(
        pl.len().alias("n_seeds"), pl.col("delta").mean(), pl.col("delta").std().alias("seed_sd"),
        pl.col("significant").sum().alias("n_significant"), pl.col("bin").first(), pl.col("selected").first())
    rows = rows.with_columns((pl.col("seed_sd") > pl.col("delta").abs()).alias("seed_spread_exceeds_effect"),
                             pl.lit("pair").alias("scope"))
    return rows


def aggregate(runs: pl.DataFrame, by: list[str], seed: int = 0) -> pl.DataFrame:
    """The paper's aggregates per ``by`` group, each with a 95 % bootstrap interval over pairs (a
    pair's seeds stay together): success rate (share of runs with Δ > 0), mean and median Δ, mean
    Δ against the control; significant gain and harm rates (McNemar per run, at the config's
    alpha); the forecast's Spearman ρ over pairs with its interval and n, ``forecast_conclusive``
    when the interval excludes 0; ``seed_sd`` (mean spread between seeds of a pair) with
    ``seed_spread_exceeds_effect`` when it is larger than |mean Δ|."""
    rows = []
    for key, g in runs.group_by(by, maintain_order=True):
        per_pair = g.group_by(RUN_KEYS, maintain_order=True).agg(
            pl.col("delta").mean(), (pl.col("delta") > 0).mean().alias("success"), pl.col("delta").std().alias("sd"),
            *[pl.col(c).mean() for c in ("delta_vs_control", "forecast_dp") if c in g.columns])
        row = dict(zip(by, key, strict=True)) | {
            "n_runs": len(g), "n_pairs": len(per_pair),
            "significant_gain_rate": 100 * (g["significant"] & (g["delta"] > 0)).mean(),
            "significant_harm_rate": 100 * (g["significant"] & (g["delta"] < 0)).mean(),
            "mean_gain": g["knowledge_gain"].mean(), "mean_loss": g["knowledge_loss"].mean(),
            "seed_sd": per_pair["sd"].mean()}
        row |= _estimate("success_rate", 100 * (g["delta"] > 0).mean(), [100 * per_pair["success"]], np.mean, seed)
        row |= _estimate("mean_delta", g["delta"].mean(), [per_pair["delta"]], np.mean, seed)
        row |= _estimate("median_delta", g["delta"].median(), [per_pair["delta"]], np.median, seed)
        if "delta_vs_control" in per_pair.columns and per_pair["delta_vs_control"].null_count() < len(per_pair):
            known = per_pair.drop_nulls("delta_vs_control")["delta_vs_control"]
            row |= _estimate("mean_delta_vs_control", known.mean(), [known], np.mean, seed)
        if "forecast_dp" in per_pair.columns and per_pair["forecast_dp"].null_count() == 0:
            x, y = per_pair["forecast_dp"], per_pair["delta"]
            row |= _estimate("forecast_spearman", spearman(x, y), [x, y], spearman, seed)
            row["forecast_n"] = len(per_pair)
            row["forecast_conclusive"] = bool(row["forecast_spearman_ci_low"] > 0
                                              or row["forecast_spearman_ci_high"] < 0)
        row["seed_spread_exceeds_effect"] = bool(row["seed_sd"] > abs(row["mean_delta"])) \
            if row["seed_sd"] is not None else None
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def _estimate(name: str, value: float, samples: list[pl.Series], statistic, seed: int) -> dict[str, float]:
    """``name`` with its bootstrap interval (``name_ci_low``, ``name_ci_high``) over pairs."""
    low, high = bootstrap_ci([s.to_numpy() for s in samples], statistic, seed=seed)
    return {name: value, f"{name}_ci_low": low, f"{name}_ci_high": high}


def group_table(runs: pl.DataFrame) -> pl.DataFrame:
    """Per multi-teacher group and student: the Δ of each mode (``{mode}_delta``) next to the min,
    mean and max Δ of the members' single-teacher runs with the group's strategy (the paper's
    multi-teacher table), one row per seed. ``strategy`` is the group's single-teacher strategy."""
    grouped = runs.filter(pl.col("base_strategy").is_not_null())
    rows = []
    for (group, student, base, seed), g in grouped.group_by("teacher", "student", "base_strategy", "seed",
                                                             maintain_order=True):
        members = sorted({m for ms in g["members"] for m in ms.split(",")})
        singles = runs.filter(pl.col("base_strategy").is_null() & (pl.col("strategy") == base)
                              & (pl.col("seed") == seed) & (pl.col("student") == student)
                              & pl.col("teacher").is_in(members))["delta"]
        row = {"scope": "group", "strategy": base, "teacher": group, "student": student, "seed": seed,
               "members": ",".join(members), "n_single": len(singles), "single_min_delta": singles.min(),
               "single_mean_delta": singles.mean(), "single_max_delta": singles.max()}
        row |= {f"{mode}_delta": delta for mode, delta in g.select("strategy", "delta").iter_rows()}
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def _with_ci(name: str, digits: int = 2, signed: bool = True) -> pl.Expr:
    """``value [low, high]`` as text, from the columns ``name``, ``name_ci_low``, ``name_ci_high``."""
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"

    def text(row: dict) -> str | None:
        value, low, high = row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
        if value is None:
            return None
        if low is None or np.isnan(low):
            return fmt.format(value)
        return f"{fmt.format(value)} [{fmt.format(low)}, {fmt.format(high)}]"

    return pl.struct(name, f"{name}_ci_low", f"{name}_ci_high").map_elements(text, return_dtype=pl.String)


def overview(table: pl.DataFrame) -> pl.DataFrame:
    """The per-strategy rows with readable headers, every estimate with its 95 % interval: the
    report's landing table."""
    rows = table.filter(pl.col("scope") == "strategy")
    columns = [pl.col("strategy"), pl.col("n_runs").cast(pl.Int64).alias("runs"),
               pl.col("n_pairs").cast(pl.Int64).alias("pairs"),
               _with_ci("success_rate", 0, signed=False).alias("success rate % [95 % CI]"),
               pl.col("significant_gain_rate").round(0).alias("significant gain %"),
               pl.col("significant_harm_rate").round(0).alias("significant harm %"),
               _with_ci("mean_delta").alias("mean Δ [95 % CI]"), _with_ci("median_delta").alias("median Δ [95 % CI]")]
    if "mean_delta_vs_control" in rows.columns:
        columns.append(_with_ci("mean_delta_vs_control").alias(f"Δ vs {CONTROL} [95 % CI]"))
    if "forecast_spearman" in rows.columns:
        columns.append(_forecast_text().alias("forecast ρ [95 % CI]"))
    return rows.select(columns)


def forecast_text(rho: float | None, low: float | None, high: float | None, n: int | None) -> str | None:
    """The forecast's Spearman ρ as the overview shows it: ``+0.94 [+0.60, +1.00]``, or why it is
    undefined: ``n/a (2 pairs; needs 3)`` or ``n/a (constant over 6 pairs)`` (a forecast or Δ that
    does not vary has no ranks to correlate). None where no forecast was made (no pairs table)."""
    if rho is None:
        return None
    if np.isnan(rho):
        if n is not None and n < 3:
            return f"n/a ({n} pair{'' if n == 1 else 's'}; needs 3)"
        return f"n/a (constant over {n} pairs)" if n is not None else "n/a"
    if low is None or np.isnan(low):
        return f"{rho:+.2f}"
    return f"{rho:+.2f} [{low:+.2f}, {high:+.2f}]"


def _forecast_text() -> pl.Expr:
    names = ["forecast_spearman", "forecast_spearman_ci_low", "forecast_spearman_ci_high", "forecast_n"]
    return pl.struct(*names).map_elements(lambda row: forecast_text(*(row[k] for k in names)),
                                          return_dtype=pl.String)


def write_summary(table: pl.DataFrame, out_parquet: str | Path, out_csv: str | Path,
                  out_overview: str | Path | None = None) -> None:
    """The summary as parquet (full precision) and CSV (4 decimals, p-values in 3 significant
    digits: a fixed 4 decimals would print a p of 2e-37 as 0)."""
    write_table(table, out_parquet)
    p_values = [c for c in table.columns if c.endswith("_p")]
    write_table(table.with_columns(pl.col(p_values).map_elements(lambda p: f"{p:.3g}", return_dtype=pl.String)),
                out_csv, float_precision=4)
    if out_overview:
        write_table(overview(table), out_overview)
