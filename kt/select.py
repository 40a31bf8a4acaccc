"""Choose which (teacher, student) pairs to run transfer on, and record why each was chosen.

Input is the complementarity table (one row per ordered pair, :func:`kt.complementarity.pair_table`);
output has ``teacher, student, policy, reason, bin`` followed by the table's metric columns, so
``results/pairs.parquet`` explains itself. ``bin`` places the teacher against the student by
``acc_diff`` (teacher − student top-1, in points): ``weaker`` below −``similar_within``,
``stronger`` above +``similar_within``, ``similar`` in between (inclusive); default margin from the
schema (1.0).

Policies (``policy`` key; every policy also takes an optional ``students`` list that keeps only
those students, and ``similar_within``):

* ``all`` — every ordered pair.
* ``grid`` — ``teachers`` × ``students`` (each list optional: all models when absent).
* ``random`` — ``n`` pairs drawn uniformly without replacement with ``seed`` (default 0); all
  candidates when fewer than ``n``.
* ``top`` — per student the ``k`` (default 1) teachers with the highest ``by`` (``pos_flips``,
  default, ``forecast_dp`` or ``forecast_dp_unsup``).
* ``bins`` — ``per_bin`` pairs in each of weaker / similar / stronger (the paper's question: do
  weaker teachers help too?). ``pick``: ``pos_flips`` (the pairs with the most positive flips in the
  bin: where transfer has most to gain, deterministic) or ``random`` (seeded by ``seed``, an
  unbiased look at the bin). Default: ``random`` when ``seed`` is given, else ``pos_flips``.

Ties are broken by teacher, then student name, so a selection is reproducible. Self-pairs are never
selected. Settings that belong to another policy are ignored (so switching ``policy`` in a config
does not require deleting the old policy's keys). Mistakes (unknown policy, key or model) raise
:class:`KtError` naming the config key (``select.<key>``) and the accepted values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from kt.errors import KtError, closest
from kt.schema import defaults

BINS = ("weaker", "similar", "stronger")
RANK_BY = ("pos_flips", "forecast_dp", "forecast_dp_unsup")
COMMON_KEYS = {"policy", "students", "similar_within"}
POLICY_KEYS: dict[str, set[str]] = {
    "all": set(),
    "grid": {"teachers"},
    "random": {"n", "seed"},
    "top": {"k", "by"},
    "bins": {"per_bin", "pick", "seed"},
}
LEAD = ["teacher", "student", "policy", "reason", "bin"]
SIMILAR_WITHIN = defaults("select")["similar_within"]  # points of accuracy difference still "similar"


def _known_list(name: str, value: Any, known: list[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise KtError(f"select.{name} must be a list of model names, got {value!r}.")
    unknown = [v for v in value if v not in known]
    if unknown:
        hint = closest(unknown[0], known)
        raise KtError(f"select.{name}: unknown model(s) {unknown}; known: {known}.{hint}")
    return list(dict.fromkeys(value))


def _int(policy: dict[str, Any], key: str, default: int | None = None, minimum: int = 0) -> int:
    value = policy.get(key, default)
    if value is None:
        raise KtError(f"select.{key} is required for policy {policy.get('policy')!r}.")
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise KtError(f"select.{key} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def bin_expr(similar_within: float = SIMILAR_WITHIN) -> pl.Expr:
    """weaker / similar / stronger teacher by the ``acc_diff`` column (points) and the margin."""
    d = pl.col("acc_diff")
    return (pl.when(d < -similar_within).then(pl.lit("weaker"))
            .when(d > similar_within).then(pl.lit("stronger"))
            .otherwise(pl.lit("similar")))


def _ranked(df: pl.DataFrame, by: str) -> pl.DataFrame:
    """Rows by ``by`` descending; ties by teacher, then student (the one tie rule of every ranking)."""
    return df.sort([by, "teacher", "student"], descending=[True, False, False])


def top_teachers(table: pl.DataFrame, student: str, k: int, by: str = "pos_flips") -> list[str]:
    """The ``k`` teachers with the highest ``by`` for ``student`` (ties by teacher name): the
    ``top`` selection policy's rule, also used for multi-teacher groups given as ``top: k``."""
    rows = table.filter((pl.col("student") == student) & (pl.col("teacher") != student))
    return _ranked(rows, by)["teacher"].head(k).to_list()


def fixed_pairs(policy: dict[str, Any] | None, known: list[str]) -> list[tuple[str, str]] | None:
    """The pairs ``all`` and ``grid`` choose: they do not depend on the complementarity table, so the
    workflow plans their transfers before it exists (``snakemake -n`` lists them); None for the
    policies that read the table."""
    policy = dict(policy or {})
    name = policy.get("policy", "all")
    if name not in ("all", "grid"):
        return None
    students = _known_list("students", policy["students"], known) if "students" in policy else known
    teachers = _known_list("teachers", policy["teachers"], known) if name == "grid" and "teachers" in policy else known
    return [(t, s) for t in teachers for s in students if t != s]


def select_pairs(table: pl.DataFrame, policy: dict[str, Any] | None) -> pl.DataFrame:
    """The pairs chosen by ``policy`` from the complementarity ``table``, with why (see module doc)."""
    policy = dict(policy or {})
    name = policy.get("policy", "all")
    if name not in POLICY_KEYS:
        hint = closest(str(name), POLICY_KEYS)
        raise KtError(f"select.policy: unknown policy {name!r}; known: {', '.join(POLICY_KEYS)}.{hint}")
    # Settings of other policies are ignored (switching `policy` in a config leaves them behind);
    # a key no policy knows is a typo.
    known_keys = COMMON_KEYS.union(*POLICY_KEYS.values())
    extra = sorted(set(policy) - known_keys)
    if extra:
        hint = closest(extra[0], known_keys)
        raise KtError(f"select.{extra[0]}: unknown setting; policy {name!r} takes "
                      f"{', '.join(sorted(COMMON_KEYS | POLICY_KEYS[name]))}.{hint}")
    missing = {"teacher", "student", "acc_diff", "pos_flips"} - set(table.columns)
    if missing:
        raise KtError(f"the complementarity table lacks column(s) {sorted(missing)}; rerun the "
                      "complementarity step.")
    similar_within = policy.get("similar_within", SIMILAR_WITHIN)
    if isinstance(similar_within, bool) or not isinstance(similar_within, int | float) or similar_within < 0:
        raise KtError(f"select.similar_within must be a number of points >= 0, got {similar_within!r}.")

    known = list(dict.fromkeys([*table["teacher"].to_list(), *table["student"].to_list()]))
    df = (table.filter(pl.col("teacher") != pl.col("student"))
          .with_columns(bin_expr(float(similar_within)).alias("bin")))
    students = _known_list("students", policy["students"], known) if "students" in policy else None
    if students is not None:
        df = df.filter(pl.col("student").is_in(students))

    out = POLICIES[name](df, policy, known, students)
    out = out.with_columns(pl.lit(name).alias("policy"), pl.col("reason").cast(pl.String))
    rest = [c for c in table.columns if c not in LEAD]
    return out.select([*LEAD, *rest])


# Policies: (candidate pairs with their bin, the select section, known models in table order, the
# select.students filter or None) -> the chosen rows with a "reason" column.


def _every_pair(df: pl.DataFrame, policy: dict[str, Any], known: list[str], students: list[str] | None
                ) -> pl.DataFrame:
    where = f" of the listed students {students}" if students is not None else ""
    return df.with_columns(pl.lit(f"every ordered pair{where}").alias("reason"))


def _grid(df: pl.DataFrame, policy: dict[str, Any], known: list[str], students: list[str] | None) -> pl.DataFrame:
    teachers = _known_list("teachers", policy["teachers"], known) if "teachers" in policy else None
    if teachers is not None:
        df = df.filter(pl.col("teacher").is_in(teachers))
    t_txt = "select.teachers" if teachers is not None else "any teacher"
    s_txt = "select.students" if students is not None else "any student"
    return df.with_columns(pl.format("grid: {} ({}) × {} ({})", pl.col("teacher"), pl.lit(t_txt),
                                     pl.col("student"), pl.lit(s_txt)).alias("reason"))


def _random(df: pl.DataFrame, policy: dict[str, Any], known: list[str], students: list[str] | None
            ) -> pl.DataFrame:
    n = _int(policy, "n")
    seed = _int(policy, "seed", 0)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(df), size=min(n, len(df)), replace=False)) if len(df) else []
    out = df[[int(i) for i in picked]] if len(df) else df
    return out.with_columns(pl.lit(f"random draw of {len(out)} from {len(df)} candidate pairs "
                                   f"(seed {seed})").alias("reason"))


def _top(df: pl.DataFrame, policy: dict[str, Any], known: list[str], students: list[str] | None) -> pl.DataFrame:
    k = _int(policy, "k", 1, minimum=1)
    by = policy.get("by", "pos_flips")
    if by not in RANK_BY:
        raise KtError(f"select.by: unknown ranking {by!r}; known: {', '.join(RANK_BY)}.")
    if by not in df.columns or (len(df) and df[by].null_count() == len(df)):
        raise KtError(f"select.by: the complementarity table has no {by} values (the forecast needs "
                      "eval logits with softmax); use by: pos_flips.")
    out = (_ranked(df, by).with_columns(pl.int_range(pl.len()).over("student").alias("_rank"))
           .filter(pl.col("_rank") < k))
    out = out.with_columns(pl.format("top-{} teacher by {} for student {} ({} %)", pl.col("_rank") + 1,
                                     pl.lit(by), pl.col("student"), pl.col(by).round(1)).alias("reason"))
    order = {s: i for i, s in enumerate(known)}
    return (out.with_columns(pl.col("student").replace_strict(order, return_dtype=pl.Int64).alias("_s"))
            .sort(["_s", "_rank"]).drop("_s", "_rank"))


def _bins(df: pl.DataFrame, policy: dict[str, Any], known: list[str], students: list[str] | None) -> pl.DataFrame:
    per_bin = _int(policy, "per_bin")
    pick = policy.get("pick", "random" if "seed" in policy else "pos_flips")
    if pick not in ("pos_flips", "random"):
        raise KtError(f"select.pick: unknown choice {pick!r}; known: pos_flips, random.")
    seed = _int(policy, "seed", 0)
    rng = np.random.default_rng(seed)
    parts = []
    for b in BINS:
        in_bin = df.filter(pl.col("bin") == b)
        if pick == "pos_flips":
            chosen = _ranked(in_bin, "pos_flips").head(per_bin)
            why = [f"{b} teacher (acc_diff {d:+.1f} points): #{i + 1} of {len(in_bin)} in bin by "
                   f"pos_flips ({v:.1f} %)" for i, (d, v) in
                   enumerate(zip(chosen["acc_diff"], chosen["pos_flips"], strict=True))]
        else:
            idx = np.sort(rng.choice(len(in_bin), size=min(per_bin, len(in_bin)), replace=False))
            chosen = in_bin[[int(i) for i in idx]] if len(in_bin) else in_bin
            why = [f"{b} teacher (acc_diff {d:+.1f} points): random pick from {len(in_bin)} in bin "
                   f"(seed {seed})" for d in chosen["acc_diff"]]
        parts.append(chosen.with_columns(pl.Series("reason", why, dtype=pl.String)))
    return pl.concat(parts)


POLICIES = {"all": _every_pair, "grid": _grid, "random": _random, "top": _top, "bins": _bins}
