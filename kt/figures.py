"""Figures of the workflow, written as PNG with matplotlib's Agg canvas.

Figures are built with the object API (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``: no
global state, no display backend needed on cluster nodes, safe in threads. Files are written
atomically like every other artifact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from kt.artifacts import atomic_path
from kt.names import NO_TEACHER
from kt.transfer.rows import STEP, TERM_PREFIX

ANNOTATE_MAX_MODELS = 25
"""Heatmap cells are labelled with their value up to this many models (beyond, labels overlap)."""
TICK_MAX_MODELS = 60
"""Heatmap axes name every model up to this many; beyond, models are ordered by accuracy and the axes
show accuracies instead (a zoo of 1,800 names is unreadable at any size)."""
SCATTER_MAX_PAIRS = 5_000
"""Above this many pairs the knowledge-vs-accuracy figure bins the pairs (hexagons) instead of dots."""


def save_figure(fig: Figure, out_png: str | Path, dpi: int = 150) -> Path:
    """Render ``fig`` to ``out_png`` atomically (the temp name has no .png suffix, so say the format)."""
    FigureCanvasAgg(fig)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(out_png)


def _models(table: pl.DataFrame) -> list[str]:
    return pl.concat([table["teacher"], table["student"]]).unique(maintain_order=True).to_list()


def _accuracies(table: pl.DataFrame, models: list[str]) -> np.ndarray | None:
    """Each model's top-1 accuracy from the pair table's teacher_acc/student_acc (None without them)."""
    if not {"teacher_acc", "student_acc"} <= set(table.columns):
        return None
    acc = pl.concat([table.select(pl.col("teacher").alias("model"), pl.col("teacher_acc").alias("acc")),
                     table.select(pl.col("student").alias("model"), pl.col("student_acc").alias("acc"))])
    acc = acc.group_by("model").agg(pl.col("acc").drop_nulls().first())
    by_model = dict(zip(acc["model"].to_list(), acc["acc"].to_list(), strict=True))
    values = np.array([by_model.get(m) for m in models], dtype=float)
    return None if np.isnan(values).any() else values


# -------------------------------------------------------------------------------- complementarity


def plot_flip_heatmap(table: pl.DataFrame, out_png: str | Path, column: str = "pos_flips") -> Path:
    """Teacher (rows) × student (columns) heatmap of positive flips in % of eval samples.

    Why: shows at a glance that every pair holds complementary knowledge, and which models are rich
    teachers (bright rows) or have most to learn (bright columns). Cells are annotated for up to
    :data:`ANNOTATE_MAX_MODELS` models; self-pairs are blank. Up to :data:`TICK_MAX_MODELS` models
    each is named on the axes; beyond (a whole zoo), models are ordered by accuracy, weakest first,
    and the axes show accuracies, so that a gradient across the map reads as "stronger teachers know
    more", without thousands of overlapping names. The grid is filled by index arithmetic, not a
    loop over the M·(M−1) rows.
    """
    models = _models(table)
    m = len(models)
    by_accuracy = m > TICK_MAX_MODELS
    acc = _accuracies(table, models) if by_accuracy else None
    if acc is not None:
        order = np.argsort(acc, kind="stable")
        models, acc = [models[i] for i in order], acc[order]
    codes = pl.Enum(models)
    cells = table.select(pl.col("teacher").cast(codes).to_physical().alias("t"),
                         pl.col("student").cast(codes).to_physical().alias("s"),
                         pl.col(column).cast(pl.Float64).alias("v")).filter(
        (pl.col("t") != pl.col("s")) & pl.col("v").is_not_null())
    grid = np.full((m, m), np.nan)
    grid[cells["t"].to_numpy(), cells["s"].to_numpy()] = cells["v"].to_numpy()
    size = max(4.0, min(24.0, 0.55 * m + 2.5)) if not by_accuracy else 9.0
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="equal",
                      interpolation="antialiased" if by_accuracy else "nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("positive flips (% of eval samples)" if column == "pos_flips" else column)
    if not by_accuracy:
        ax.set_xticks(range(m), models, rotation=90, fontsize=8 if m < 40 else 5)
        ax.set_yticks(range(m), models, fontsize=8 if m < 40 else 5)
        ax.set_xlabel("student")
        ax.set_ylabel("teacher")
    elif acc is not None:  # a few positions labelled with the accuracy there, not per-model ticks
        ticks = np.unique(np.linspace(0, m - 1, 7).round().astype(int))
        ax.set_xticks(ticks, [f"{acc[i]:.1f}" for i in ticks], fontsize=8)
        ax.set_yticks(ticks, [f"{acc[i]:.1f}" for i in ticks], fontsize=8)
        ax.set_xlabel(f"students: {m} models, by accuracy (top-1 %)")
        ax.set_ylabel(f"teachers: {m} models, by accuracy (top-1 %)")
    else:  # no accuracies in the table: the given order, no names
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"students ({m} models)")
        ax.set_ylabel(f"teachers ({m} models)")
    ax.set_title("Complementary knowledge: teacher right, student wrong")
    if m <= ANNOTATE_MAX_MODELS and np.isfinite(grid).any():
        mid = (np.nanmin(grid) + np.nanmax(grid)) / 2
        for i, j in np.argwhere(np.isfinite(grid)):  # at most 25 x 24 labels
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7,
                    color="black" if grid[i, j] > mid else "white")
    return save_figure(fig, out_png)


def plot_knowledge_vs_accdiff(table: pl.DataFrame, out_png: str | Path) -> Path:
    """Positive flips against accuracy difference (teacher − student), one point per ordered pair.

    Why: the paper's Fig. 1 — complementary knowledge exists even for much weaker teachers (left of
    the vertical line at 0), so accuracy alone is a poor guide to which teacher can help. Up to 12
    students each has its colour; above :data:`SCATTER_MAX_PAIRS` pairs (a zoo: 1,800 models give
    3.2 million) dots would overplot into a blob, so the pairs are binned into hexagons coloured by
    their count (log scale).
    """
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    pairs = table.filter(pl.col("teacher") != pl.col("student")).drop_nulls(["acc_diff", "pos_flips"])
    x, y = pairs["acc_diff"].to_numpy(), pairs["pos_flips"].to_numpy()
    if len(pairs) > SCATTER_MAX_PAIRS:
        bins = ax.hexbin(x, y, gridsize=60, bins="log", mincnt=1, cmap="viridis", linewidths=0)
        fig.colorbar(bins, ax=ax, pad=0.02).set_label(f"pairs per bin ({len(pairs):,} in all)")
    elif pairs["student"].n_unique() <= 12:  # one colour a student, in name order
        parts = pairs.sort("student", maintain_order=True).partition_by("student", as_dict=True, maintain_order=True)
        for (s,), part in parts.items():
            ax.scatter(part["acc_diff"].to_numpy(), part["pos_flips"].to_numpy(), s=22, alpha=0.8,
                       label=s, edgecolors="none")
        if parts:
            ax.legend(title="student", fontsize=7, title_fontsize=8, loc="best", frameon=False)
    else:
        ax.scatter(x, y, s=6, alpha=0.4, edgecolors="none", color="C0")
    ax.axvline(0.0, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlabel("teacher − student top-1 accuracy (points)")
    ax.set_ylabel("positive flips (% of eval samples)")
    ax.set_ylim(bottom=0)
    ax.set_title("Complementary knowledge vs. performance difference")
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def plot_summary(table: pl.DataFrame, folder: str | Path) -> list[Path]:
    """The transfer figures from the summary table: success rate per strategy over students (box),
    Δ vs teacher − student accuracy difference, knowledge gain vs loss, and per-epoch accuracy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs = table.filter(pl.col("scope") == "run")
    if "selected" in runs.columns:  # group runs and their members have their own figure
        runs = runs.filter("selected")
    strategies = runs["strategy"].unique(maintain_order=True).to_list()
    colors = {s: f"C{i}" for i, s in enumerate(strategies)}
    out = []

    per_student = runs.group_by("strategy", "student", maintain_order=True).agg(
        ((pl.col("delta") > 0).mean() * 100).alias("success"))
    fig = Figure(figsize=(1.6 + 1.3 * len(strategies), 3.6))
    ax = fig.subplots()
    data = [per_student.filter(pl.col("strategy") == s)["success"].to_numpy() for s in strategies]
    ax.boxplot(data, tick_labels=strategies, showmeans=True)
    for i, values in enumerate(data, start=1):
        ax.scatter(np.full(len(values), i), values, s=12, color=colors[strategies[i - 1]], zorder=3)
    ax.set_ylabel("success rate per student (%)")
    ax.set_ylim(-5, 105)
    ax.set_title("Share of teachers that improve the student")
    out.append(save_figure(fig, folder / "success_rate.png"))

    def scatter(x: str, y: str, xlabel: str, ylabel: str, size: tuple[float, float]) -> Axes:
        fig = Figure(figsize=size)
        ax = fig.subplots()
        for s in strategies:
            r = runs.filter((pl.col("strategy") == s) & (pl.col("teacher") != "none"))  # the control: no teacher
            if len(r):
                ax.scatter(r[x], r[y], label=s, color=colors[s], s=20)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        return ax

    ax = scatter("acc_diff", "delta", "teacher − student accuracy (points)", "transfer delta Δ (points)", (5.5, 3.8))
    if "delta_ci_low" in runs.columns:  # each run's 95 % interval (kt.stats.delta_ci)
        for s in strategies:
            r = runs.filter((pl.col("strategy") == s) & (pl.col("teacher") != "none"))
            err = [r["delta"] - r["delta_ci_low"], r["delta_ci_high"] - r["delta"]]
            ax.errorbar(r["acc_diff"], r["delta"], yerr=err, fmt="none", ecolor=colors[s], elinewidth=0.8, alpha=0.6)
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    out.append(save_figure(ax.figure, folder / "delta_vs_accdiff.png"))

    ax = scatter("knowledge_loss", "knowledge_gain", "knowledge loss (% right before, wrong after)",
                 "knowledge gain (% wrong before, right after)", (4.5, 4.2))
    top = float(max(runs["knowledge_gain"].max() or 0, runs["knowledge_loss"].max() or 0)) * 1.1 + 0.1
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":")
    out.append(save_figure(ax.figure, folder / "gain_vs_loss.png"))
    if "student_params" in runs.columns and runs["student_params"].is_not_null().any():
        out.append(plot_by_student_size(runs, colors, folder / "by_student_size.png"))
    groups = table.filter(pl.col("scope") == "group")
    if len(groups):
        out.append(plot_multi_teacher(groups, folder / "multi_teacher.png"))
    return out


FAMILY_MARKERS = {"cnn": "o", "transformer": "^", "mlp": "s"}


def plot_by_student_size(runs: pl.DataFrame, colors: dict[str, str], out_png: str | Path) -> Path:
    """What predicts transfer success (paper §4.5): per student and strategy, the success rate, kt's
    per-sample transferred share and (when the runs have it) the paper's class-level transfer rate,
    each averaged over teachers, against the student's parameter count; the marker is the student's
    family (circle CNN, triangle transformer, square MLP)."""
    paired = runs.filter(pl.col("teacher") != "none")  # the control has no teacher to transfer from
    panels = {"success": "success rate over teachers (%)",
              "transferred_share": "kt's per-sample transferred share\nof positive flips (%)"}
    if "transfer_rate" in paired.columns:  # absent from per-run metrics written before kt computed it
        panels["transfer_rate"] = "the paper's class-level transfer rate (%)"
    per = paired.group_by("strategy", "student", "student_params", "student_family", maintain_order=True).agg(
        ((pl.col("delta") > 0).mean() * 100).alias("success"), *[pl.col(c).mean() for c in list(panels)[1:]])
    fig = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")  # labels clear of the next panel
    axes = fig.subplots(1, len(panels))
    marker = per["student_family"].cast(pl.String).replace_strict(FAMILY_MARKERS, default="x",
                                                                  return_dtype=pl.String).fill_null("x")
    for (strategy, mk), part in per.with_columns(marker=marker).partition_by(
            "strategy", "marker", as_dict=True, maintain_order=True).items():  # one call a colour and marker
        for ax, key in zip(axes, panels, strict=True):
            ax.scatter(part["student_params"].to_numpy(), part[key].cast(pl.Float64).to_numpy(), color=colors[strategy],
                       marker=mk, s=30)
    for ax, label in zip(axes, panels.values(), strict=True):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a narrow range overlap
        ax.set_xlabel("student parameters")
        ax.set_ylabel(label)
    handles = [axes[0].scatter([], [], color=c, label=s) for s, c in colors.items() if s in set(per["strategy"])]
    handles += [axes[0].scatter([], [], color="grey", marker=m, label=f) for f, m in FAMILY_MARKERS.items()
                if f in set(per["student_family"].drop_nulls())]
    axes[-1].legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Transfer against student size and family")
    return save_figure(fig, out_png)


def plot_multi_teacher(groups: pl.DataFrame, out_png: str | Path) -> Path:
    """Per group: the single-teacher Δ (mean, min-max bar) next to each multi-teacher mode's Δ."""
    modes = [c.removesuffix("_delta") for c in groups.columns  # the modes' columns (aggregates are null here)
             if c.endswith("_delta") and not c.startswith("single_") and groups[c].is_not_null().any()]
    fig = Figure(figsize=(1.5 + 2.2 * len(groups), 3.6))
    ax = fig.subplots()
    width = 0.8 / (len(modes) + 1)
    x = np.arange(len(groups), dtype=float)

    def values(col: str) -> np.ndarray:
        return groups[col].cast(pl.Float64).to_numpy()  # nulls -> NaN

    mean, low, high = values("single_mean_delta"), values("single_min_delta"), values("single_max_delta")
    has = np.isfinite(mean)
    if has.any():
        ax.bar(x[has], mean[has], width, color="grey", yerr=[mean[has] - low[has], high[has] - mean[has]], capsize=3,
               label="single teacher (mean, min-max)")
    for m, mode in enumerate(modes, 1):
        delta = values(f"{mode}_delta")
        has = np.isfinite(delta)
        if has.any():
            ax.bar(x[has] + m * width, delta[has], width, color=f"C{m - 1}", label=mode)
    labels = groups["teacher"] + " → " + groups["student"]
    if "seed" in groups.columns and groups["seed"].n_unique() > 1:  # replicates: say which bar is which
        labels = labels + ", seed " + groups["seed"].cast(pl.String)
    ax.set_xticks(x + width * len(modes) / 2, labels.to_list(), fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("transfer delta Δ (points)")
    ax.set_title("Multi-teacher transfer vs single teachers")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    return save_figure(fig, out_png)


# ------------------------------------------------------------------------------- training curves

RUN_KEYS = ["strategy", "teacher", "student", "seed"]
"""What tells one run from another in the rows of several ``metrics.parquet`` tables."""
CURVE_COLUMNS = ["strategy", "teacher", "student", "stage", "kind", "epoch", "step", "train_loss",
                 "teacher_share", "eval_accuracy"]
"""The columns of metrics.parquet (:mod:`kt.transfer.rows`) the curves draw, with the ``loss_<term>``
columns; the others (lr, img/s, seconds, ...) are never read."""


def read_curves(metrics_files: Iterable[str | Path]) -> Iterator[pl.DataFrame]:
    """The curve columns of every run's ``metrics.parquet``, one student's runs at a time, each row
    with its run's ``seed`` and, for a multi-teacher run, its mode as ``strategy`` (both from the run's
    ``config.json``, as in the summary; seed 0 without one).

    Why per student: a pair's figure needs the pair's runs and the student's controls together, and a
    zoo's step rows never have to sit in memory at once. Files are scanned lazily and only
    :data:`CURVE_COLUMNS` and the loss terms are read."""
    from kt.transfer.run_folder import RunFolder  # no torch

    by_student: dict[str, list[Path]] = {}
    for path in map(Path, metrics_files):
        student = pl.scan_parquet(path).select("student").head(1).collect().item()
        by_student.setdefault(student, []).append(path)
    for paths in by_student.values():
        frames = []
        for path in paths:
            scan, folder = pl.scan_parquet(path), RunFolder(path.parent)
            keep = [c for c in scan.collect_schema().names() if c in CURVE_COLUMNS or c.startswith(TERM_PREFIX)]
            config = folder.read_config() if folder.complete else {}
            keys = [pl.lit(config.get("settings", {}).get("seed", 0), pl.Int64).alias("seed")]
            if "mode" in config:  # a multi-teacher run: its rows name the base strategy, the summary the mode
                keys.append(pl.lit(config["mode"]).alias("strategy"))
            frames.append(scan.select(keep).with_columns(keys).collect())
        yield pl.concat(frames, how="diagonal_relaxed")


def _curve_rows(table: pl.DataFrame) -> pl.DataFrame:
    """Rows of metrics tables of either schema, ready to draw over optimiser steps.

    A table without ``kind`` (written before step rows existed) has epoch rows only. ``trained`` marks
    the rows whose training loss and teacher share are drawn: a run's step rows when it has any, else
    its epoch rows (whose values are epoch means). A sequential group's stages each count steps from 0
    (:func:`kt.multi.sequential`), so ``step`` is shifted by the earlier stages' steps (and ``stage``
    dropped: applying this twice changes nothing). A teacher-free run's null teacher reads ``none``,
    as in the summary. Sorted by run and step."""
    if "seed" not in table.columns:
        table = table.with_columns(pl.lit(0, pl.Int64).alias("seed"))
    table = table.with_columns(pl.col("teacher").fill_null(NO_TEACHER))
    step_row = (pl.col("kind") == STEP).fill_null(False) if "kind" in table.columns else pl.lit(False)
    table = table.with_columns(step_row.alias("step_row"))
    table = table.with_columns((pl.col("step_row") | ~pl.col("step_row").any().over(RUN_KEYS)).alias("trained"))
    if "stage" in table.columns:
        stage = pl.col("stage").fill_null(0)
        ends = table.group_by(*RUN_KEYS, stage).agg(pl.col("step").max().alias("end")).sort("stage")
        ends = ends.with_columns(pl.col("end").cum_sum().shift(1, fill_value=0).over(RUN_KEYS).alias("offset"))
        table = (table.with_columns(stage).join(ends.drop("end"), on=[*RUN_KEYS, "stage"], how="left")
                 .with_columns(pl.col("step") + pl.col("offset")).drop("stage", "offset"))
    return table.sort([*RUN_KEYS, "step"], maintain_order=True)


def _evaluated(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows with an eval accuracy (epoch rows: step rows have none). A soup's two rows share step 0:
    its line is then a vertical jump from the student before to the soup."""
    return rows.filter(pl.col("eval_accuracy").is_not_null() & pl.col("eval_accuracy").is_not_nan())


def _draw(ax: Axes, rows: pl.DataFrame, y: str, x: str = "step", **style: object) -> bool:
    """One run's curve of column ``y`` over ``x``, its nulls skipped (markers when the points are few);
    whether there was anything to draw."""
    points = rows.select(x, pl.col(y).cast(pl.Float64)).drop_nulls().filter(pl.col(y).is_not_nan())
    if points.is_empty():
        return False
    style = {"lw": 1.2, "marker": "o" if len(points) <= 30 else None, "ms": 3} | style
    ax.plot(points[x].to_numpy(), points[y].to_numpy(), **style)
    return True


def plot_epoch_curves(metrics: pl.DataFrame, out_png: str | Path) -> Path:
    """Per-epoch evaluation accuracy of every run, relative to its start, one panel per strategy.

    Why: one glance over all runs tells whether transfer still climbs at the last epoch (more epochs
    would help) or peaked earlier. Epoch rows only (step rows are drawn per pair,
    :func:`plot_pair_curves`); each seed is a line of its own."""
    rows = _curve_rows(metrics)
    rows = _evaluated(rows.filter(~pl.col("step_row"))).sort([*RUN_KEYS, "epoch"], maintain_order=True)
    rows = rows.with_columns(change=pl.col("eval_accuracy") - pl.col("eval_accuracy").first().over(RUN_KEYS))
    strategies = rows["strategy"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(3.2 * max(1, len(strategies)), 3))
    axes = fig.subplots(1, max(1, len(strategies)), sharey=True, squeeze=False)[0]
    for ax, s in zip(axes, strategies, strict=False):
        for (teacher, student, _), run in rows.filter(pl.col("strategy") == s).group_by(
                "teacher", "student", "seed", maintain_order=True):
            _draw(ax, run, "change", x="epoch", lw=1, label=f"{teacher}→{student}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(s)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("eval accuracy change (points)")
    return save_figure(fig, out_png)


def plot_pair_curves(runs: pl.DataFrame, out_png: str | Path, colors: dict[str, str] | None = None) -> Path:
    """The strategies of one pair (teacher → student) overlaid, with the student's teacher-free runs
    (the ``ce`` control, dashed): eval accuracy, training loss and, when some strategy reports it, the
    share of samples the teacher taught, over optimiser steps; a strategy's seeds share its colour.

    Why: runs of one pair share the student, the data and the schedule, so their curves compare
    directly, and the control shows what continued training on labels alone does over the same steps.
    ``runs``: metrics rows of either schema (:func:`_curve_rows`), with ``seed`` when there are several."""
    rows = _curve_rows(runs)
    colors = colors or {s: f"C{i}" for i, s in enumerate(rows["strategy"].unique(maintain_order=True))}
    panels = {"eval_accuracy": "eval accuracy (top-1 %)", "train_loss": "training loss"}
    if rows["teacher_share"].is_not_null().any():
        panels["teacher_share"] = "teacher share (of samples)"
    fig = Figure(figsize=(1.5 + 3.6 * len(panels), 3.2), layout="constrained")
    axes = fig.subplots(1, len(panels), sharex=True, squeeze=False)[0]
    for (strategy, teacher, _, _), run in rows.partition_by(RUN_KEYS, as_dict=True, maintain_order=True).items():
        style = {"color": colors.get(strategy, "grey"), "ls": "--" if teacher == NO_TEACHER else "-", "label": strategy}
        for ax, column in zip(axes, panels, strict=True):
            _draw(ax, _evaluated(run) if column == "eval_accuracy" else run.filter("trained"), column, **style)
    legend = {}  # one entry a strategy, whichever panel and seed drew it
    for ax, label in zip(axes, panels.values(), strict=True):
        legend |= {name: line for line, name in zip(*ax.get_legend_handles_labels(), strict=True) if name not in legend}
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(legend.values(), legend.keys(), fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    teacher = next((t for t in rows["teacher"].unique(maintain_order=True) if t != NO_TEACHER), NO_TEACHER)
    fig.suptitle(f"{teacher} → {rows['student'][0]}")
    return save_figure(fig, out_png, dpi=100)


def plot_run_curves(run: pl.DataFrame, out_png: str | Path) -> Path:
    """One run's training loss (with each ``loss_<term>`` the strategy reports) and the share of
    samples its teacher taught, over optimiser steps.

    Why: a diverging loss, a term that dominates the others, or a teacher that teaches almost no
    sample shows here before it shows in Δ. A strategy without a teacher mask (``teacher_share``
    null) says so in the second panel. ``run``: one run's metrics rows, of either schema."""
    rows = _curve_rows(run)
    strategy, teacher, student, seed = rows.select(RUN_KEYS).row(0)
    rows = rows.filter("trained")
    terms = [c for c in rows.columns if c.startswith(TERM_PREFIX) and rows[c].is_not_null().any()]
    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    loss_ax, share_ax = fig.subplots(1, 2, sharex=True)
    _draw(loss_ax, rows, "train_loss", color="k", label="loss")
    for i, term in enumerate(terms):
        _draw(loss_ax, rows, term, color=f"C{i}", lw=1, label=term.removeprefix(TERM_PREFIX))
    if terms:
        loss_ax.legend(fontsize=8)
    loss_ax.set_ylabel("training loss")
    if _draw(share_ax, rows, "teacher_share", color="C0"):
        share_ax.set_ylim(-0.02, 1.02)
        share_ax.set_ylabel("teacher share (of samples)")
    else:
        share_ax.set_axis_off()
        share_ax.text(0.5, 0.5, "teacher share: not reported by this strategy", ha="center", va="center",
                      transform=share_ax.transAxes, color="0.4")
    for ax in (loss_ax, share_ax):
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{strategy}: {teacher} → {student}, seed {seed}")
    return save_figure(fig, out_png, dpi=100)


def plot_training_curves(students: Iterable[pl.DataFrame], epoch_png: str | Path | None = None,
                         pair_folder: str | Path | None = None, run_folder: str | Path | None = None) -> list[Path]:
    """Every training-curve figure from :func:`read_curves`'s frames, one student's runs at a time:
    ``epoch_png`` (:func:`plot_epoch_curves`, from the epoch rows alone), a figure per pair in
    ``pair_folder/{teacher}__{student}.png`` (:func:`plot_pair_curves`, the student's teacher-free runs
    in each) and one per run in ``run_folder/{strategy}/seed{seed}/{teacher}__{student}.png``
    (:func:`plot_run_curves`). The folders are created even when empty (they are workflow outputs).
    A strategy has one colour across all pair figures."""
    pairs, each = (Path(f) if f is not None else None for f in (pair_folder, run_folder))
    for folder in (pairs, each):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    out, epochs, colors = [], [], {}
    for runs in students:
        rows = _curve_rows(runs)
        student = rows["student"][0]
        for s in rows["strategy"].unique(maintain_order=True):
            colors.setdefault(s, f"C{len(colors) % 10}")
        epochs.append(rows.filter(~pl.col("step_row")).select(*RUN_KEYS, "epoch", "step", "eval_accuracy"))
        teachers = [t for t in rows["teacher"].unique(maintain_order=True) if t != NO_TEACHER]
        for teacher in teachers if pairs is not None else []:
            out.append(plot_pair_curves(rows.filter(pl.col("teacher").is_in([teacher, NO_TEACHER])),
                                        pairs / f"{teacher}__{student}.png", colors))
        for (strategy, teacher, _, seed), run in rows.partition_by(RUN_KEYS, as_dict=True).items() if each else ():
            out.append(plot_run_curves(run, each / strategy / f"seed{seed}" / f"{teacher}__{student}.png"))
    if epoch_png is not None and epochs:
        out.append(plot_epoch_curves(pl.concat(epochs, how="diagonal_relaxed"), epoch_png))
    return out
