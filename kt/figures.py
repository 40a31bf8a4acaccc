"""Figures of the workflow, written as PNG with matplotlib's Agg canvas.

Figures are built with the object API (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``: no
global state, no display backend needed on cluster nodes, safe in threads. Files are written
atomically like every other artifact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from kt.artifacts import atomic_path

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


def plot_epoch_curves(metrics: pl.DataFrame, out_png: str | Path) -> Path:
    """Per-epoch evaluation accuracy of every run, relative to its start, one panel per strategy."""
    strategies = metrics["strategy"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(3.2 * len(strategies), 3))
    axes = fig.subplots(1, len(strategies), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], strategies, strict=True):
        for (teacher, student), run in metrics.filter(pl.col("strategy") == s).group_by(
                "teacher", "student", maintain_order=True):
            run = run.filter(pl.col("eval_accuracy").is_not_nan()).sort("epoch")
            ax.plot(run["epoch"], run["eval_accuracy"] - run["eval_accuracy"][0], marker="o", ms=3, lw=1,
                    label=f"{teacher}→{student}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(s)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("eval accuracy change (points)")
    return save_figure(fig, out_png)
