"""The statistics behind every reported Δ: paired tests on the same evaluation samples.

A transfer changes a student's prediction on some samples: ``gained`` (wrong before, right after)
and ``lost`` (right before, wrong after) of ``n``. Δ = (gained − lost) / n. Whether Δ is more than
noise is McNemar's exact test (two-sided binomial of ``gained`` out of ``gained + lost`` at 0.5),
and its 95 % confidence interval is the paired (Wald) interval of a difference of proportions.

Aggregates over runs (mean Δ, success rate, the forecast's rank correlation) get percentile
bootstrap intervals over pairs (:func:`bootstrap_ci`), in the spirit of rliable's interval
estimates: with few pairs they are wide, and that is the honest answer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import binomtest, bootstrap, norm, spearmanr


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value; 1.0 when no prediction changed."""
    changed = int(gained) + int(lost)
    return float(binomtest(int(gained), changed, 0.5).pvalue) if changed else 1.0


def delta_ci(gained: int, lost: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of Δ in points: Δ ± z·sqrt(((g + l)/n − Δ²)/n), Δ = (g − l)/n."""
    delta = (gained - lost) / n
    half = norm.ppf(0.5 + level / 2) * math.sqrt(max((gained + lost) / n - delta**2, 0.0) / n)
    return 100 * (delta - half), 100 * (delta + half)


MIN_ROWS = 5  # below this, a percentile bootstrap interval is little more than the values' range


def bootstrap_ci(samples: Sequence[np.ndarray], statistic: Callable[..., float], level: float = 0.95,
                 seed: int = 0, n_resamples: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``, resampling the rows of the (paired)
    ``samples`` together with :func:`scipy.stats.bootstrap`; seeded, so a summary is reproducible.
    Resamples where the statistic is undefined (NaN, e.g. a constant resample for a correlation)
    are left out. (NaN, NaN) for fewer than :data:`MIN_ROWS` rows: no interval rather than a
    falsely narrow one."""
    samples = [np.asarray(s, dtype=float) for s in samples]
    if len(samples[0]) < MIN_ROWS:
        return math.nan, math.nan
    with warnings.catch_warnings():  # degenerate resamples are expected with few rows
        warnings.simplefilter("ignore")
        res = bootstrap(samples, statistic, n_resamples=n_resamples, paired=True, vectorized=False,
                        method="percentile", confidence_level=level, rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution
    if np.isnan(dist).all():
        return math.nan, math.nan
    low, high = np.nanpercentile(dist, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy; average ranks for ties); NaN for fewer than 3 points or a
    constant input."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)
