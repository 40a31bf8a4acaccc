"""Transfer metrics and the summary on hand-made predictions with answers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kt.errors import KtError
from kt.metrics import forecast_text, overview, run_metrics, summarize, top_classes, transfer_rate, write_summary
from kt.stats import spearman

# Ten evaluation samples of three classes.
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
BEFORE = np.array([0, 0, 1, 1, 0, 0, 2, 2, 0, 0])   # right: 0 1 3 6 7            -> 50 %
AFTER = np.array([0, 1, 0, 1, 1, 0, 2, 2, 2, 0])    # right: 0 2 3 4 6 7 8        -> 70 %
TEACHER = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])  # right: 0 1 2 4 5 7 8 9      -> 80 %
OTHER = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])    # right: 3 4 5                -> 30 %


def test_run_metrics_single_teacher() -> None:
    m = run_metrics(BEFORE, AFTER, TEACHER, LABELS, 3)
    assert m["acc_before"] == 50 and m["acc_after"] == 70 and m["teacher_acc"] == 80
    assert m["delta"] == 20
    assert m["knowledge_gain"] == 30          # samples 2, 4, 8: wrong before, right after
    assert m["knowledge_loss"] == 10          # sample 1: right before, wrong after
    assert m["pos_flips_before"] == 50        # samples 2, 4, 5, 8, 9: teacher right, student wrong
    assert m["residual_pos_flips"] == 30      # samples 1, 5, 9: teacher right, student wrong after
    assert m["transferred_share"] == 60       # 3 of the 5 initial flips are right after
    # flips per class [1, 2, 2]: top 20 % of flips = class 1; top 50 % = classes 1 and 2
    assert m["gain_in_top20_share"] == pytest.approx(100 / 3)   # gain 4 of gains 2, 4, 8
    assert m["gain_in_top50_share"] == pytest.approx(200 / 3)   # gains 4 and 8
    assert "group_oracle_acc" not in m


def test_run_metrics_group_counts_a_sample_known_when_any_member_is_right() -> None:
    m = run_metrics(BEFORE, AFTER, np.stack([TEACHER, OTHER]), LABELS, 3)
    assert m["teacher_acc"] == 55             # mean of 80 and 30
    assert m["group_oracle_acc"] == 90        # all but sample 6
    assert m["pos_flips_before"] == 50        # OTHER adds sample 3, which the student already knew
    assert m["residual_pos_flips"] == 30
    alone = run_metrics(BEFORE, AFTER, OTHER, LABELS, 3)
    assert alone["pos_flips_before"] == 20    # samples 4 and 5
    assert alone["transferred_share"] == 50   # sample 4 right after, 5 not


def paper_transfer_rate(preds: np.ndarray, zero_preds: np.ndarray, teach_preds: np.ndarray, true_y: np.ndarray,
                        num_classes: int) -> float:
    """The paper code's get_dist_improvement(...)["transfer_rate"] with its get_flips_per_class and
    get_top_p_percent_classes (p = 100) inlined, as written there (its 1000 classes made ``num_classes``)."""
    def flips_per_class(preds_a: np.ndarray, preds_b: np.ndarray) -> np.ndarray:
        pos_flips = np.zeros((len(true_y), num_classes))
        for i in range(len(true_y)):
            pos_flips[i, true_y[i]] = preds_a[i] != true_y[i] and preds_b[i] == true_y[i]
        return np.sum(pos_flips, axis=0)

    pos_flips, dist_flips = flips_per_class(zero_preds, teach_preds), flips_per_class(zero_preds, preds)
    sorted_classes = np.argsort(pos_flips)[::-1]
    share, k_val = 0, 1
    while share < 100:
        share = np.sum(pos_flips[sorted_classes[:k_val]]) / np.sum(pos_flips) * 100
        k_val += 1
    return np.sum(dist_flips[sorted_classes[:k_val]]) / np.sum(pos_flips) * 100


# Eight samples of three classes for the paper's class-level transfer rate.
RATE_LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2])
RATE_BEFORE = np.array([1, 1, 2, 0, 1, 0, 0, 2])
RATE_AFTER = np.array([0, 1, 0, 1, 1, 2, 2, 0])
RATE_TEACHER = np.array([0, 0, 2, 0, 1, 2, 1, 2])


def test_transfer_rate_is_the_papers_class_level_rate() -> None:
    # teacher's positive flips: samples 0, 1 (class 0) and 5 (class 2) -> per class [2, 0, 1], 3 in all
    # student's gains: samples 0, 2 (class 0), 3 (class 1), 5, 6 (class 2) -> per class [2, 1, 2]
    m = run_metrics(RATE_BEFORE, RATE_AFTER, RATE_TEACHER, RATE_LABELS, 3)
    assert m["transferred_share"] == pytest.approx(200 / 3)  # per sample: flips 0 and 5 right after, 1 not
    # classes 0 and 2 hold every flip: gains 2 + 2 = 4 of 3 flips would be 133.3 %; the paper's code takes
    # the minimal class count plus one, so class 1 (no flip, 1 gain) joins: (2 + 2 + 1) / 3 = 166.7 %
    assert m["transfer_rate"] == pytest.approx(500 / 3)
    assert m["transfer_rate"] == pytest.approx(paper_transfer_rate(RATE_AFTER, RATE_BEFORE, RATE_TEACHER,
                                                                   RATE_LABELS, 3))
    # the samples of test_run_metrics_single_teacher: flips [1, 2, 2] (every class), gains 2, 4, 8: 3 / 5
    m = run_metrics(BEFORE, AFTER, TEACHER, LABELS, 3)
    assert m["transfer_rate"] == 60 and m["transferred_share"] == 60
    assert m["transfer_rate"] == pytest.approx(paper_transfer_rate(AFTER, BEFORE, TEACHER, LABELS, 3))
    # a student right everywhere gains its 5 wrong samples, all of them flips of this teacher: 100 %
    assert run_metrics(BEFORE, LABELS, TEACHER, LABELS, 3)["transfer_rate"] == 100
    # no positive flip: undefined (the paper's code divides by 0), so absent from the metrics
    assert "transfer_rate" not in run_metrics(BEFORE, AFTER, BEFORE, LABELS, 3)
    assert transfer_rate(np.zeros(3, dtype=int), np.array([1, 0, 0])) is None


def test_transfer_rate_extra_class_ties_go_to_the_highest_class_index() -> None:
    # flips [2, 0, 1, 0]: classes 0 and 2, plus one of the flip-less classes 1 and 3 -> class 3
    assert transfer_rate(np.array([2, 0, 1, 0]), np.array([2, 1, 2, 0])) == pytest.approx(400 / 3)
    assert transfer_rate(np.array([2, 0, 1, 0]), np.array([2, 0, 2, 1])) == pytest.approx(500 / 3)
    # every class has flips: no extra class to add
    assert transfer_rate(np.array([1, 3, 1]), np.array([1, 2, 4])) == pytest.approx(700 / 5)


def test_top_classes_and_spearman() -> None:
    assert top_classes(np.array([1, 2, 2]), 20).tolist() == [1]
    assert top_classes(np.array([1, 2, 2]), 100).tolist() == [1, 2, 0]
    assert top_classes(np.zeros(3), 50).tolist() == []
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([1, 2]), np.array([2, 1])))
    assert np.isnan(spearman(np.array([1, 2, 3]), np.array([5, 5, 5])))


def test_run_metrics_against_the_control() -> None:
    # the control (labels only) gets samples 0 1 2 3 4 right: 50 %; AFTER gets 0 2 3 4 6 7 8
    control = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0])
    m = run_metrics(BEFORE, AFTER, TEACHER, LABELS, 3, control=control)
    assert m["control_acc"] == 50 and m["delta_vs_control"] == 20
    assert (m["vs_control_gained"], m["vs_control_lost"]) == (3, 1)  # 6 7 8 gained, 1 lost
    assert m["vs_control_mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)  # 0.625
    assert m["vs_control_significant"] == 0.0
    assert "control_acc" not in run_metrics(BEFORE, AFTER, TEACHER, LABELS, 3)


def run_file(folder: Path, strategy: str, teacher: str, delta: float, members: str | None = None,
             base: str | None = None, teacher_acc: float = 80.0, significant: bool = False, seed: int = 0,
             student: str = "s", **extra: float) -> Path:
    """A per-run metrics file as `kt evaluate` writes it (only the metrics the summary reads)."""
    values = {"delta": delta, "knowledge_gain": max(delta, 0) + 1, "knowledge_loss": 1 - min(delta, 0),
              "acc_before": 80.0 - delta / 2, "acc_after": 80.0 + delta / 2, "teacher_acc": teacher_acc,
              "significant": float(significant)} | extra
    path = folder / f"{strategy}-{teacher}-{student}-{seed}.parquet"
    pl.DataFrame({"strategy": strategy, "teacher": teacher, "student": student, "members": members or teacher,
                  "base_strategy": base, "seed": seed, "student_params": 1000, "student_family": "cnn",
                  "teacher_params": None, "teacher_family": None, "metric": list(values),
                  "value": list(values.values())},
                 schema_overrides={"base_strategy": pl.String, "teacher_params": pl.Int64,
                                   "teacher_family": pl.String}).write_parquet(path)
    return path


def test_summary_aggregates_selected_pairs_and_tabulates_groups(tmp_path: Path) -> None:
    files = [
        run_file(tmp_path, "kl", "a", -1.0, significant=True), run_file(tmp_path, "kl", "b", 0.5),
        run_file(tmp_path, "kl_dp", "a", 0.2), run_file(tmp_path, "kl_dp", "b", 0.4, significant=True),
        run_file(tmp_path, "kl_dp", "c", -0.3),  # only a member of the group, not a selected pair
        run_file(tmp_path, "sequential", "g", 0.6, "c,a", "kl_dp"),
        run_file(tmp_path, "parallel", "g", 0.1, "a,c", "kl_dp"),
        run_file(tmp_path, "soup", "g", -0.2, "a,c", "kl_dp"),
    ]
    pairs = pl.DataFrame({"teacher": ["a", "b"], "student": ["s", "s"], "forecast_dp": [1.0, 2.0],
                          "pos_flips": [3.0, 4.0]})
    table = summarize(files, pairs)
    runs = table.filter(pl.col("scope") == "run")
    assert len(runs) == 8
    assert runs.filter("selected").select("strategy", "teacher").rows() == [
        ("kl", "a"), ("kl", "b"), ("kl_dp", "a"), ("kl_dp", "b")]

    per = {r["strategy"]: r for r in table.filter(pl.col("scope") == "strategy").iter_rows(named=True)}
    assert set(per) == {"kl", "kl_dp"}  # group modes and member-only runs stay out of the aggregates
    assert per["kl"]["n_runs"] == 2 and per["kl"]["success_rate"] == 50
    assert per["kl"]["mean_delta"] == pytest.approx(-0.25)
    assert (per["kl"]["significant_gain_rate"], per["kl"]["significant_harm_rate"]) == (0, 50)
    assert (per["kl_dp"]["significant_gain_rate"], per["kl_dp"]["significant_harm_rate"]) == (50, 0)
    assert runs["significant"].dtype == pl.Boolean
    assert per["kl_dp"]["n_runs"] == 2 and per["kl_dp"]["success_rate"] == 100
    assert per["kl_dp"]["mean_delta"] == pytest.approx(0.3) and per["kl_dp"]["mean_loss"] == pytest.approx(1.0)

    group = table.filter(pl.col("scope") == "group").row(0, named=True)
    assert (group["teacher"], group["student"], group["strategy"], group["members"]) == ("g", "s", "kl_dp", "a,c")
    assert group["n_single"] == 2
    assert group["single_min_delta"] == pytest.approx(-0.3) and group["single_max_delta"] == pytest.approx(0.2)
    assert group["single_mean_delta"] == pytest.approx(-0.05)
    assert (group["sequential_delta"], group["parallel_delta"], group["soup_delta"]) == pytest.approx((0.6, 0.1, -0.2))

    with pytest.raises(KtError, match="no transfer metrics"):
        summarize([])


def test_seeds_get_a_row_per_pair_that_says_when_their_spread_exceeds_the_effect(tmp_path: Path) -> None:
    files = [run_file(tmp_path, "kl_dp", "a", d, seed=k) for k, d in enumerate([0.1, -0.3, 0.5])]   # sd 0.4
    files += [run_file(tmp_path, "kl_dp", "b", d, seed=k) for k, d in enumerate([1.0, 1.2, 0.8])]   # sd 0.2
    files += [run_file(tmp_path, "ce", "none", d, seed=k) for k, d in enumerate([0.2, 0.0, 0.4])]
    pairs = pl.DataFrame({"teacher": ["a", "b"], "student": ["s", "s"]})
    table = summarize(files, pairs)
    per_pair = {r["teacher"]: r for r in table.filter(pl.col("scope") == "pair").iter_rows(named=True)}
    assert per_pair["a"]["n_seeds"] == 3 and per_pair["a"]["delta"] == pytest.approx(0.1)
    assert per_pair["a"]["seed_sd"] == pytest.approx(0.4) and per_pair["a"]["seed_spread_exceeds_effect"]
    assert per_pair["b"]["seed_sd"] == pytest.approx(0.2) and not per_pair["b"]["seed_spread_exceeds_effect"]
    per = {r["strategy"]: r for r in table.filter(pl.col("scope") == "strategy").iter_rows(named=True)}
    assert per["kl_dp"]["n_runs"] == 6 and per["kl_dp"]["n_pairs"] == 2
    assert per["kl_dp"]["seed_sd"] == pytest.approx(0.3)  # mean of 0.4 and 0.2 < |mean Δ| = 0.55
    assert per["kl_dp"]["success_rate"] == pytest.approx(500 / 6) and not per["kl_dp"]["seed_spread_exceeds_effect"]
    # the control of the selected pairs' student counts, once per seed, without a teacher-strength bin
    assert per["ce"]["n_runs"] == 3 and per["ce"]["mean_delta"] == pytest.approx(0.2)
    assert table.filter((pl.col("scope") == "strategy/bin") & (pl.col("strategy") == "ce")).height == 0
    assert per["kl_dp"]["mean_delta_ci_low"] is None or np.isnan(per["kl_dp"]["mean_delta_ci_low"])  # 2 pairs


def test_aggregates_carry_reproducible_bootstrap_intervals_and_the_forecast_with_its_interval(tmp_path: Path) -> None:
    deltas = [-0.4, 0.1, 0.3, 0.6, 0.9, 1.5]
    teachers = list("abcdef")
    files = [run_file(tmp_path, "kl_dp", t, d, delta_vs_control=d - 0.1) for t, d in zip(teachers, deltas, strict=True)]
    pairs = pl.DataFrame({"teacher": teachers, "student": ["s"] * 6, "forecast_dp": [1.0, 2, 3, 4, 6, 5],
                          "pos_flips": [1.0] * 6})
    row = summarize(files, pairs).filter(pl.col("scope") == "strategy").row(0, named=True)
    again = summarize(files, pairs).filter(pl.col("scope") == "strategy").row(0, named=True)
    assert row == again  # seeded bootstrap
    assert row["mean_delta"] == pytest.approx(0.5)
    assert row["mean_delta_ci_low"] < 0.5 < row["mean_delta_ci_high"]
    assert deltas[0] <= row["mean_delta_ci_low"] and row["mean_delta_ci_high"] <= deltas[-1]
    assert row["mean_delta_vs_control"] == pytest.approx(0.4)
    # ranks 1 2 3 4 6 5 against 1..6: rho = 1 - 6 * 2 / (6 * 35) = 0.942857
    assert row["forecast_spearman"] == pytest.approx(1 - 12 / 210) and row["forecast_n"] == 6
    assert row["forecast_spearman_ci_low"] > 0 and row["forecast_conclusive"]
    text = overview(summarize(files, pairs)).row(0, named=True)
    assert text["mean Δ [95 % CI]"] == (f"+0.50 [{row['mean_delta_ci_low']:+.2f}, {row['mean_delta_ci_high']:+.2f}]")
    assert text["forecast ρ [95 % CI]"].startswith("+0.94 [")


def test_an_undefined_forecast_rho_reads_n_a_with_the_pair_count(tmp_path: Path) -> None:
    """One selected pair: Spearman's ρ is undefined (NaN in the table); the overview says why instead of
    printing +nan. Four pairs with one forecast value: constant, undefined too. Three varying pairs: a number."""
    one = summarize([run_file(tmp_path, "kl", "a", 0.5)],
                    pl.DataFrame({"teacher": ["a"], "student": ["s"], "forecast_dp": [2.0], "pos_flips": [1.0]}))
    row = one.filter(pl.col("scope") == "strategy").row(0, named=True)
    assert np.isnan(row["forecast_spearman"]) and row["forecast_n"] == 1
    assert overview(one)["forecast ρ [95 % CI]"].to_list() == ["n/a (1 pair; needs 3)"]
    write_summary(one, tmp_path / "s.parquet", tmp_path / "s.csv", tmp_path / "overview.csv")
    assert pl.read_csv(tmp_path / "overview.csv")["forecast ρ [95 % CI]"].to_list() == ["n/a (1 pair; needs 3)"]

    teachers = list("abcd")
    files = [run_file(tmp_path, "kl_dp", t, d) for t, d in zip(teachers, [0.1, 0.4, -0.2, 0.3], strict=True)]
    flat = pl.DataFrame({"teacher": teachers, "student": ["s"] * 4, "forecast_dp": [1.0] * 4, "pos_flips": [1.0] * 4})
    assert overview(summarize(files, flat))["forecast ρ [95 % CI]"].to_list() == ["n/a (constant over 4 pairs)"]

    ranked = flat.with_columns(pl.Series("forecast_dp", [1.0, 3.0, 0.0, 2.0]))  # the deltas' order: ρ = 1
    text = overview(summarize(files, ranked))["forecast ρ [95 % CI]"].to_list()
    assert text == ["+1.00"]  # below 5 pairs: no interval

    assert forecast_text(None, None, None, None) is None  # no forecast (no pairs table)
    assert forecast_text(float("nan"), float("nan"), float("nan"), 2) == "n/a (2 pairs; needs 3)"
    assert forecast_text(0.5, 0.1, 0.9, 8) == "+0.50 [+0.10, +0.90]"


def test_both_transfer_shares_reach_the_summary_and_the_student_size_figure(tmp_path: Path) -> None:
    from kt.figures import plot_summary

    files = [run_file(tmp_path, "kl", "a", 0.5, transferred_share=40.0, transfer_rate=120.0),
             run_file(tmp_path, "kl", "b", -0.5, transferred_share=20.0, transfer_rate=60.0),
             run_file(tmp_path, "ce", "none", 0.1, transferred_share=0.0)]  # no flips: no transfer_rate
    table = summarize(files)
    runs = table.filter(pl.col("scope") == "run")
    assert runs.select("teacher", "transferred_share", "transfer_rate").rows() == [
        ("a", 40.0, 120.0), ("b", 20.0, 60.0), ("none", 0.0, None)]
    write_summary(table, tmp_path / "s.parquet", tmp_path / "s.csv")
    assert pl.read_csv(tmp_path / "s.csv")["transfer_rate"].to_list()[:3] == [120.0, 60.0, None]
    assert tmp_path / "figures" / "by_student_size.png" in plot_summary(table, tmp_path / "figures")
    # per-run files written before transfer_rate existed still draw (without its panel)
    (tmp_path / "old").mkdir()
    old = summarize([run_file(tmp_path / "old", "kl", "a", 0.5, transferred_share=40.0)])
    assert "transfer_rate" not in old.columns
    assert tmp_path / "old" / "by_student_size.png" in plot_summary(old, tmp_path / "old")


def test_the_summary_csv_keeps_tiny_p_values(tmp_path: Path) -> None:
    """4 decimals suit deltas; a p of 2.3e-37 must not print as 0 (nor a missing p as anything)."""
    table = pl.DataFrame({"scope": ["run"] * 3, "delta": [3.31234, 0.2, None],
                          "mcnemar_p": [2.3275e-37, 0.36172, None]})
    write_summary(table, tmp_path / "s.parquet", tmp_path / "s.csv")
    back = pl.read_csv(tmp_path / "s.csv")
    assert back["delta"].to_list() == [3.3123, 0.2, None]
    assert back["mcnemar_p"].to_list() == [2.33e-37, 0.362, None]
    assert pl.read_parquet(tmp_path / "s.parquet").equals(table)


# ------------------------------------------------------------------------------ training curves
# metrics.parquet by hand, in both schemas. Epochs of 10 optimiser steps.

FLOATS = {c: pl.Float64 for c in ("train_loss", "teacher_share", "eval_accuracy", "seconds", "lr", "img_per_s",
                                  "loss_kl", "loss_ce")} | {"teacher": pl.String}


def epochs_only(strategy: str, teacher: str | None, accs: list[float], losses: list[float],
                shares: list[float] | None = None, **keys: object) -> pl.DataFrame:
    """metrics.parquet before step rows: no ``kind``, one row per epoch, epoch 0 without a loss."""
    n = len(accs)
    return pl.DataFrame({"epoch": range(n), "step": [10 * e for e in range(n)], "train_loss": [None, *losses],
                         "teacher_share": [None, *(shares or [None] * (n - 1))], "eval_accuracy": accs,
                         "seconds": 1.0, "strategy": strategy, "teacher": teacher, "student": "s"} | keys,
                        schema_overrides=FLOATS)


def with_steps() -> pl.DataFrame:
    """kl_dp from teacher a as kt.transfer.rows writes it: step rows every 5 steps (their epoch counted
    from 1, no eval accuracy) beside the epoch rows, with loss terms, lr and img/s."""
    step = {"kind": "step", "epoch": [1, 1, 2, 2], "step": [5, 10, 15, 20], "train_loss": [2.5, 2.0, 1.7, 1.4],
            "teacher_share": [0.3, 0.35, 0.4, 0.45], "eval_accuracy": None,
            "loss_kl": [2.0, 1.6, 1.3, 1.0], "loss_ce": [0.5, 0.4, 0.4, 0.4], "lr": 0.01, "img_per_s": 900.0}
    epoch = {"kind": "epoch", "epoch": [0, 1, 2], "step": [0, 10, 20], "train_loss": [None, 2.25, 1.55],
             "teacher_share": [None, 0.325, 0.425], "eval_accuracy": [50.0, 57.0, 61.0],
             "loss_kl": [None, 1.8, 1.15], "loss_ce": [None, 0.45, 0.4], "lr": 0.01, "img_per_s": None}
    keys = {"seconds": 1.0, "strategy": "kl_dp", "teacher": "a", "student": "s"}
    return pl.concat([pl.DataFrame(rows | keys, schema_overrides=FLOATS) for rows in (step, epoch)],
                     how="diagonal_relaxed")


def curves(ax) -> list[tuple[str, list[list[float]]]]:
    """(label, points) of each labelled line of ``ax`` (reference lines such as y = 0 have none)."""
    return [(line.get_label(), line.get_xydata().tolist()) for line in ax.lines if not line.get_label().startswith("_")]


def test_pair_figure_overlays_strategies_of_both_schemas_with_the_control(tmp_path: Path, figures: list) -> None:
    from kt.figures import plot_pair_curves

    runs = pl.concat([epochs_only("kl", "a", [50.0, 55.0, 60.0], [2.0, 1.5], seed=0),
                      epochs_only("kl", "a", [50.0, 54.0, 58.0], [2.1, 1.6], seed=1),
                      with_steps().with_columns(seed=pl.lit(0)),
                      epochs_only("ce", None, [50.0, 52.0, 53.0], [1.0, 0.9], seed=0)],  # the control: null teacher
                     how="diagonal_relaxed")
    plot_pair_curves(runs, tmp_path / "a__s.png")
    fig = figures[-1]
    accuracy, loss, share = fig.axes  # a teacher share panel: kl_dp reports one
    assert fig.get_suptitle() == "a → s"
    assert curves(accuracy) == [("ce", [[0, 50], [10, 52], [20, 53]]), ("kl", [[0, 50], [10, 55], [20, 60]]),
                                ("kl", [[0, 50], [10, 54], [20, 58]]),
                                ("kl_dp", [[0, 50], [10, 57], [20, 61]])]  # from its epoch rows
    assert curves(loss) == [("ce", [[10, 1.0], [20, 0.9]]), ("kl", [[10, 2.0], [20, 1.5]]),
                            ("kl", [[10, 2.1], [20, 1.6]]),
                            ("kl_dp", [[5, 2.5], [10, 2.0], [15, 1.7], [20, 1.4]])]  # its step rows, not epoch means
    assert curves(share) == [("kl_dp", [[5, 0.3], [10, 0.35], [15, 0.4], [20, 0.45]])]
    ce, kl0, kl1, kl_dp = accuracy.lines
    assert ce.get_linestyle() == "--" and kl0.get_linestyle() == "-"
    assert kl0.get_color() == kl1.get_color() != kl_dp.get_color()  # a strategy's seeds share its colour
    assert [t.get_text() for t in share.get_legend().get_texts()] == ["ce", "kl", "kl_dp"]
    # no strategy with a teacher mask: no share panel
    plot_pair_curves(runs.filter(pl.col("strategy") != "kl_dp"), tmp_path / "no_share.png")
    assert [ax.get_ylabel() for ax in figures[-1].axes] == ["eval accuracy (top-1 %)", "training loss"]


def test_run_figure_draws_loss_terms_and_says_when_a_strategy_reports_no_teacher_share(tmp_path: Path,
                                                                                     figures: list) -> None:
    from kt.figures import plot_run_curves

    plot_run_curves(with_steps(), tmp_path / "kl_dp.png")
    loss, share = figures[-1].axes
    assert curves(loss) == [("loss", [[5, 2.5], [10, 2.0], [15, 1.7], [20, 1.4]]),
                            ("kl", [[5, 2.0], [10, 1.6], [15, 1.3], [20, 1.0]]),
                            ("ce", [[5, 0.5], [10, 0.4], [15, 0.4], [20, 0.4]])]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["loss", "kl", "ce"]
    assert [line.get_xydata().tolist() for line in share.lines] == [[[5, 0.3], [10, 0.35], [15, 0.4], [20, 0.45]]]
    assert figures[-1].get_suptitle() == "kl_dp: a → s, seed 0"

    plot_run_curves(epochs_only("kl", "a", [50.0, 55.0, 60.0], [2.0, 1.5]), tmp_path / "kl.png")
    loss, share = figures[-1].axes
    assert curves(loss) == [("loss", [[10, 2.0], [20, 1.5]])] and loss.get_legend() is None  # no terms
    assert not share.lines and not share.axison
    assert [t.get_text() for t in share.texts] == ["teacher share: not reported by this strategy"]


def test_curves_count_a_sequential_groups_steps_across_stages(tmp_path: Path, figures: list) -> None:
    """Each stage counts steps from 0 (kt.multi.sequential); its epochs already count across stages."""
    from kt.figures import plot_epoch_curves, plot_pair_curves

    run = epochs_only("sequential", "g", [50.0, 55.0, 58.0], [1.0, 0.8], stage=[1, 1, 2]).with_columns(
        step=pl.Series([0, 10, 10]))  # stage 2's epoch 0 row is left out, as kt.multi.sequential writes it
    soup = epochs_only("soup", "g", [50.0, 56.0], [None]).with_columns(step=pl.lit(0))  # no training: step 0
    plot_pair_curves(pl.concat([run, soup], how="diagonal_relaxed"), tmp_path / "g__s.png")
    accuracy, loss = figures[-1].axes
    assert curves(accuracy) == [("sequential", [[0, 50], [10, 55], [20, 58]]), ("soup", [[0, 50], [0, 56]])]
    assert curves(loss) == [("sequential", [[10, 1.0], [20, 0.8]])]
    # the per-epoch figure: epoch rows of either schema, each seed its own line, relative to its start
    plot_epoch_curves(pl.concat([run, with_steps()], how="diagonal_relaxed"), tmp_path / "epochs.png")
    kl_dp, sequential = figures[-1].axes
    assert curves(kl_dp) == [("a→s", [[0, 0], [1, 7], [2, 11]])]
    assert curves(sequential) == [("g→s", [[0, 0], [1, 5], [2, 8]])]


def test_training_curves_are_read_a_student_at_a_time_and_named_for_the_report(tmp_path: Path) -> None:
    """Seeds and multi-teacher modes come from config.json; files are named as the report's patterns."""
    import json

    from kt.figures import plot_training_curves, read_curves

    def run(folder: str, table: pl.DataFrame, seed: int, **config: str) -> Path:
        path = tmp_path / "transfer" / folder / f"seed{seed}"
        path.mkdir(parents=True)
        table.write_parquet(path / "metrics.parquet")
        (path / "config.json").write_text(json.dumps({"settings": {"seed": seed}} | config))
        return path / "metrics.parquet"

    files = [run("kl/a__s", epochs_only("kl", "a", [50.0, 55.0], [2.0]), 0),
             run("kl/a__s", epochs_only("kl", "a", [50.0, 56.0], [2.1]), 1),
             run("kl/s__t", epochs_only("kl", "s", [40.0, 45.0], [2.0], student="t"), 0),
             run("ce/none__s", epochs_only("ce", None, [50.0, 51.0], [1.0]), 0),
             run("kl_dp/a__s", with_steps(), 0),
             run("parallel/g__s", epochs_only("kl_dp", "g", [50.0, 58.0], [1.2], [0.5]), 0, mode="parallel")]
    students = list(read_curves(files))
    assert [frame["student"].unique().to_list() for frame in students] == [["s"], ["t"]]
    s = students[0]
    assert "lr" not in s.columns and {"loss_kl", "loss_ce", "kind"} <= set(s.columns)  # only what is drawn
    assert sorted(s.select("strategy", "teacher", "seed").unique().rows(), key=str) == sorted(
        [("kl", "a", 0), ("kl", "a", 1), ("ce", None, 0), ("kl_dp", "a", 0), ("parallel", "g", 0)], key=str)
    out = plot_training_curves(read_curves(files), tmp_path / "epoch_curves.png", tmp_path / "pairs",
                               tmp_path / "runs")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in out) == [
        "epoch_curves.png", "pairs/a__s.png", "pairs/g__s.png", "pairs/s__t.png",
        "runs/ce/seed0/none__s.png", "runs/kl/seed0/a__s.png", "runs/kl/seed0/s__t.png", "runs/kl/seed1/a__s.png",
        "runs/kl_dp/seed0/a__s.png", "runs/parallel/seed0/g__s.png"]
    assert all(p.stat().st_size > 1000 for p in out)
    empty = plot_training_curves([], None, tmp_path / "no_pairs", tmp_path / "no_runs")
    assert empty == [] and (tmp_path / "no_pairs").is_dir() and (tmp_path / "no_runs").is_dir()  # workflow outputs
