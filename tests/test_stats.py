"""Statistics of a run's Δ with worked answers: exact McNemar p-values and the paired interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kt.metrics import run_metrics
from kt.stats import bootstrap_ci, delta_ci, mcnemar_p, spearman


def exact_two_sided(g: int, l_: int) -> float:
    """By hand: 2 * P(X <= min(g, l)) for X ~ Binomial(g + l, 1/2), capped at 1."""
    n, k = g + l_, min(g, l_)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_mcnemar_p_against_the_exact_binomial() -> None:
    assert mcnemar_p(15, 1) == pytest.approx(34 / 65536, rel=1e-12)  # 2 * (1 + 16) / 2**16
    assert mcnemar_p(15, 1) == pytest.approx(exact_two_sided(15, 1), rel=1e-12)
    # the vit -> mobilenet run: 113 gained, 88 lost of 10,000 is not significant at 0.05
    assert mcnemar_p(113, 88) == pytest.approx(exact_two_sided(113, 88), rel=1e-9)
    assert 0.08 < mcnemar_p(113, 88) < 0.10
    assert mcnemar_p(88, 113) == mcnemar_p(113, 88)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0


def test_delta_interval_on_a_hand_made_before_after() -> None:
    # 20 samples: 5 gained, 1 lost, 10 right both times, 4 wrong both times
    labels = np.zeros(20, dtype=np.int64)
    right_before = np.array([0] * 5 + [1] + [1] * 10 + [0] * 4, dtype=bool)
    right_after = np.array([1] * 5 + [0] + [1] * 10 + [0] * 4, dtype=bool)
    before, after = np.where(right_before, 0, 1), np.where(right_after, 0, 1)
    m = run_metrics(before, after, before, labels, 2)
    assert (m["gained"], m["lost"]) == (5, 1) and m["delta"] == pytest.approx(20.0)
    # Δ = 4/20 = 0.2; var = ((5 + 1)/20 - 0.2**2)/20 = 0.013; half width = 1.959964 * sqrt(0.013)
    half = 1.959963984540054 * math.sqrt(0.013)
    assert (m["delta_ci_low"], m["delta_ci_high"]) == pytest.approx((100 * (0.2 - half), 100 * (0.2 + half)))
    assert m["mcnemar_p"] == pytest.approx(2 * (1 + 6) / 64)  # 0.21875: 5 of 6 changes is not significant
    assert m["significant"] == 0.0
    assert run_metrics(before, after, before, labels, 2, alpha=0.25)["significant"] == 1.0
    assert delta_ci(113, 88, 10_000) == pytest.approx((-0.02783, 0.52783), abs=1e-4)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate() -> None:
    values = np.array([0.2, -0.1, 0.5, 0.3, 0.9, 0.0, 0.4, 0.6])
    low, high = bootstrap_ci([values], np.mean, seed=3)
    assert bootstrap_ci([values], np.mean, seed=3) == (low, high)  # reproducible
    assert bootstrap_ci([values], np.mean, seed=4) != (low, high)  # the seed matters
    assert values.min() < low < values.mean() < high < values.max()
    # a 95 % interval of a mean of 8 values: about mean ± 1.96 * sd / sqrt(8) (sd with ddof 0)
    half = 1.96 * values.std() / math.sqrt(len(values))
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half), abs=0.06)
    assert all(math.isnan(v) for v in bootstrap_ci([values[:4]], np.mean))  # too few rows: no interval


def test_spearman_interval_skips_undefined_resamples() -> None:
    x, y = np.arange(6.0), np.array([0.0, 2, 1, 3, 5, 4])
    assert spearman(x, y) == pytest.approx(1 - 6 * 4 / (6 * 35))  # two swapped neighbour pairs: sum d^2 = 4
    low, high = bootstrap_ci([x, y], spearman, seed=0)
    assert -1 <= low < spearman(x, y) <= high <= 1  # some resamples are constant (NaN): left out
