"""Transfer metrics and the summary on hand-made predictions with answers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kt.errors import KtError
from kt.metrics import run_metrics, spearman, summarize, top_classes

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


def test_top_classes_and_spearman() -> None:
    assert top_classes(np.array([1, 2, 2]), 20).tolist() == [1]
    assert top_classes(np.array([1, 2, 2]), 100).tolist() == [1, 2, 0]
    assert top_classes(np.zeros(3), 50).tolist() == []
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([1, 2]), np.array([2, 1])))
    assert np.isnan(spearman(np.array([1, 2, 3]), np.array([5, 5, 5])))


def run_file(folder: Path, strategy: str, teacher: str, delta: float, members: str | None = None,
             base: str | None = None, teacher_acc: float = 80.0, significant: bool = False) -> Path:
    """A per-run metrics file as `kt evaluate` writes it (only the metrics the summary reads)."""
    values = {"delta": delta, "knowledge_gain": max(delta, 0) + 1, "knowledge_loss": 1 - min(delta, 0),
              "acc_before": 80.0 - delta / 2, "acc_after": 80.0 + delta / 2, "teacher_acc": teacher_acc,
              "significant": float(significant)}
    path = folder / f"{strategy}-{teacher}.parquet"
    pl.DataFrame({"strategy": strategy, "teacher": teacher, "student": "s", "members": members or teacher,
                  "base_strategy": base, "metric": list(values), "value": list(values.values())},
                 schema_overrides={"base_strategy": pl.String}).write_parquet(path)
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
