"""Pair selection: every policy on a hand-made table with the exact pairs expected."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kt.artifacts import write_table
from kt.errors import KtError
from kt.select import fixed_pairs, select_pairs, top_teachers

# Models a (80.0 %), b (80.5 %), c (85.0 %); one row per ordered pair plus a self-pair row that must
# never be selected. bins with the default margin of 1 point: |acc_diff| <= 1 is "similar".
ROWS = [
    # teacher, student, acc_diff, pos_flips, forecast_dp
    ("a", "b", -0.5, 5.0, 40.0),  # similar
    ("a", "c", -5.0, 3.0, 30.0),  # weaker
    ("b", "a", 0.5, 6.0, 45.0),   # similar
    ("b", "c", -4.5, 4.0, 20.0),  # weaker
    ("c", "a", 5.0, 9.0, 50.0),   # stronger
    ("c", "b", 4.5, 8.0, 55.0),   # stronger
    ("a", "a", 0.0, 0.0, 0.0),    # self-pair
]
ACC = {"a": 80.0, "b": 80.5, "c": 85.0}


@pytest.fixture
def table() -> pl.DataFrame:
    return pl.DataFrame({
        "teacher": [r[0] for r in ROWS], "student": [r[1] for r in ROWS],
        "teacher_acc": [ACC[r[0]] for r in ROWS], "student_acc": [ACC[r[1]] for r in ROWS],
        "acc_diff": [r[2] for r in ROWS], "pos_flips": [r[3] for r in ROWS],
        "forecast_dp": [r[4] for r in ROWS], "forecast_dp_unsup": [None] * len(ROWS),
    }, schema_overrides={"forecast_dp_unsup": pl.Float64})


def pairs(df: pl.DataFrame) -> list[tuple[str, str]]:
    return list(zip(df["teacher"], df["student"], strict=True))


def test_all(table: pl.DataFrame) -> None:
    out = select_pairs(table, {"policy": "all"})
    assert pairs(out) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
    assert out.columns[:5] == ["teacher", "student", "policy", "reason", "bin"]
    assert set(table.columns) - {"teacher", "student"} <= set(out.columns)  # metrics carried over
    assert out["policy"].unique().to_list() == ["all"]
    assert out["bin"].to_list() == ["similar", "weaker", "similar", "weaker", "stronger", "stronger"]
    assert pairs(select_pairs(table, {})) == pairs(out)  # "all" is the default
    assert pairs(select_pairs(table, {"policy": "all", "students": ["c"]})) == [("a", "c"), ("b", "c")]


def test_grid(table: pl.DataFrame) -> None:
    out = select_pairs(table, {"policy": "grid", "students": ["a"], "teachers": ["b", "c", "a"]})
    assert pairs(out) == [("b", "a"), ("c", "a")]  # a -> a is never selected
    assert out["reason"][0] == "grid: b (select.teachers) × a (select.students)"
    assert pairs(select_pairs(table, {"policy": "grid", "teachers": ["c"]})) == [("c", "a"), ("c", "b")]


@pytest.mark.parametrize("policy", [{"policy": "all"}, {}, {"policy": "all", "students": ["c"]},
                                    {"policy": "grid", "students": ["a"], "teachers": ["b", "c", "a"]},
                                    {"policy": "grid", "teachers": ["c"]}])
def test_fixed_pairs_are_what_the_table_selection_picks(table: pl.DataFrame, policy: dict) -> None:
    """all and grid are planned before the complementarity table exists: the same pairs."""
    assert sorted(fixed_pairs(policy, ["a", "b", "c"])) == sorted(pairs(select_pairs(table, policy)))


def test_table_policies_are_not_fixed() -> None:
    assert all(fixed_pairs({"policy": p}, ["a", "b"]) is None for p in ("random", "top", "bins"))
    with pytest.raises(KtError, match=r"select\.teachers: unknown model"):
        fixed_pairs({"policy": "grid", "teachers": ["z"]}, ["a", "b"])


def test_random(table: pl.DataFrame) -> None:
    one = select_pairs(table, {"policy": "random", "n": 2, "seed": 7})
    assert one.height == 2 and len(set(pairs(one))) == 2
    assert set(pairs(one)) <= set(pairs(select_pairs(table, {"policy": "all"})))
    assert pairs(select_pairs(table, {"policy": "random", "n": 2, "seed": 7})) == pairs(one)  # reproducible
    draws = {tuple(pairs(select_pairs(table, {"policy": "random", "n": 2, "seed": s}))) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    everything = select_pairs(table, {"policy": "random", "n": 50})
    assert sorted(pairs(everything)) == sorted(pairs(select_pairs(table, {"policy": "all"})))
    assert everything["reason"][0] == "random draw of 6 from 6 candidate pairs (seed 0)"
    only_b = select_pairs(table, {"policy": "random", "n": 5, "students": ["b"]})
    assert sorted(pairs(only_b)) == [("a", "b"), ("c", "b")]


def test_top(table: pl.DataFrame) -> None:
    out = select_pairs(table, {"policy": "top", "k": 1})
    # student a: b 6.0, c 9.0 -> c; student b: a 5.0, c 8.0 -> c; student c: a 3.0, b 4.0 -> b
    assert pairs(out) == [("c", "a"), ("c", "b"), ("b", "c")]
    assert out["reason"].to_list() == ["top-1 teacher by pos_flips for student a (9.0 %)",
                                       "top-1 teacher by pos_flips for student b (8.0 %)",
                                       "top-1 teacher by pos_flips for student c (4.0 %)"]
    by_dp = select_pairs(table, {"policy": "top", "k": 1, "by": "forecast_dp"})
    assert pairs(by_dp) == [("c", "a"), ("c", "b"), ("a", "c")]  # c: a 30 > b 20
    two = select_pairs(table, {"policy": "top", "k": 2, "students": ["c"]})
    assert pairs(two) == [("b", "c"), ("a", "c")]
    assert two["reason"][1] == "top-2 teacher by pos_flips for student c (3.0 %)"
    assert select_pairs(table, {"policy": "top", "k": 9}).height == 6


def test_bins(table: pl.DataFrame) -> None:
    out = select_pairs(table, {"policy": "bins", "per_bin": 1})
    # weaker: (a,c) 3.0, (b,c) 4.0 -> (b,c); similar: (a,b) 5.0, (b,a) 6.0 -> (b,a); stronger -> (c,a)
    assert pairs(out) == [("b", "c"), ("b", "a"), ("c", "a")]
    assert out["bin"].to_list() == ["weaker", "similar", "stronger"]
    assert out["reason"][0] == "weaker teacher (acc_diff -4.5 points): #1 of 2 in bin by pos_flips (4.0 %)"
    # A margin of 0.4 points moves (a,b) to weaker and (b,a) to stronger; no similar pair is left.
    narrow = select_pairs(table, {"policy": "bins", "per_bin": 1, "similar_within": 0.4})
    assert pairs(narrow) == [("a", "b"), ("c", "a")]
    assert narrow["bin"].to_list() == ["weaker", "stronger"]
    rand = select_pairs(table, {"policy": "bins", "per_bin": 1, "seed": 3})
    assert rand["bin"].to_list() == ["weaker", "similar", "stronger"]
    assert "random pick" in rand["reason"][0]
    assert pairs(select_pairs(table, {"policy": "bins", "per_bin": 1, "seed": 3})) == pairs(rand)
    full = select_pairs(table, {"policy": "bins", "per_bin": 5, "pick": "random"})
    assert sorted(pairs(full)) == sorted(pairs(select_pairs(table, {"policy": "all"})))


def test_settings_of_other_policies_are_ignored(table: pl.DataFrame) -> None:
    # The shipped config sets per_bin and pick for `bins`; switching to `top` keeps them around.
    out = select_pairs(table, {"policy": "top", "per_bin": 3, "pick": "pos_flips", "k": 1})
    assert pairs(out) == [("c", "a"), ("c", "b"), ("b", "c")]


def test_self_pairs_never_selected(table: pl.DataFrame) -> None:
    policies = [{"policy": "all"}, {"policy": "grid", "teachers": ["a"], "students": ["a"]},
                {"policy": "random", "n": 100}, {"policy": "top", "k": 10},
                {"policy": "bins", "per_bin": 10}, {"policy": "bins", "per_bin": 10, "seed": 1}]
    for policy in policies:
        out = select_pairs(table, policy)
        assert out.filter(pl.col("teacher") == pl.col("student")).height == 0, policy


@pytest.mark.parametrize("policy, key, named", [
    ({"policy": "best"}, "select.policy", ["all", "grid", "random", "top", "bins"]),
    ({"policy": "all", "students": ["a", "zz"]}, "select.students", ["'zz'", "a", "b", "c"]),
    ({"policy": "grid", "teachers": ["q"]}, "select.teachers", ["'q'", "a", "b", "c"]),
    ({"policy": "top", "by": "accuracy"}, "select.by", ["pos_flips", "forecast_dp"]),
    ({"policy": "top", "by": "forecast_dp_unsup"}, "select.by", ["forecast_dp_unsup"]),
    ({"policy": "random"}, "select.n", []),
    ({"policy": "random", "n": -1}, "select.n", []),
    ({"policy": "bins", "per_bin": 1, "pick": "worst"}, "select.pick", ["pos_flips", "random"]),
    ({"policy": "top", "kk": 1}, "select.kk", ["by", "k", "students", "Did you mean: k"]),
])
def test_errors_name_the_key_and_known_values(table: pl.DataFrame, policy: dict, key: str,
                                              named: list[str]) -> None:
    with pytest.raises(KtError) as err:
        select_pairs(table, policy)
    message = str(err.value)
    assert key in message
    for word in named:
        assert word in message


def test_write_selected_pairs(table: pl.DataFrame, tmp_path: Path) -> None:
    out = select_pairs(table, {"policy": "top", "k": 1})
    write_table(out, tmp_path / "results" / "pairs.parquet")
    assert pl.read_parquet(tmp_path / "results" / "pairs.parquet").equals(out)
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["pairs.parquet"]


def test_one_tie_rule_for_top_teachers_and_the_top_policy() -> None:
    """Student d has four teachers; three tie on pos_flips. Listed in config order (z, y, x) they
    used to keep that order for a group but not for the policy; both now rank ties by name."""
    table = pl.DataFrame({"teacher": ["z", "y", "w", "x", "d"], "student": ["d"] * 5,
                          "acc_diff": [1.0, -3.0, 0.0, 2.0, 0.0], "pos_flips": [4.0, 4.0, 9.0, 4.0, 0.0]})
    assert top_teachers(table, "d", 3) == ["w", "x", "y"]
    assert top_teachers(table, "d", 9) == ["w", "x", "y", "z"]  # never the student itself
    policy = select_pairs(table, {"policy": "top", "k": 3})
    assert policy["teacher"].to_list() == top_teachers(table, "d", 3)
    reversed_rows = table.reverse()
    assert top_teachers(reversed_rows, "d", 3) == ["w", "x", "y"]
