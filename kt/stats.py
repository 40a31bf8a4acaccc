"""The statistics behind every reported Δ: paired tests on the same evaluation samples.

A transfer changes a student's prediction on some samples: ``gained`` (wrong before, right after)
and ``lost`` (right before, wrong after) of ``n``. Δ = (gained − lost) / n. Whether Δ is more than
noise is McNemar's exact test (two-sided binomial of ``gained`` out of ``gained + lost`` at 0.5),
and its 95 % confidence interval is the paired (Wald) interval of a difference of proportions.
"""

from __future__ import annotations

import math

from scipy.stats import binomtest, norm


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value; 1.0 when no prediction changed."""
    changed = int(gained) + int(lost)
    return float(binomtest(int(gained), changed, 0.5).pvalue) if changed else 1.0


def delta_ci(gained: int, lost: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of Δ in points: Δ ± z·sqrt(((g + l)/n − Δ²)/n), Δ = (g − l)/n."""
    delta = (gained - lost) / n
    half = norm.ppf(0.5 + level / 2) * math.sqrt(max((gained + lost) / n - delta**2, 0.0) / n)
    return 100 * (delta - half), 100 * (delta + half)
