"""Optimal cut-point by maximally selected log-rank statistics (Lausen & Schumacher 1992).

The same computation as R's ``maxstat.test(Surv(time, event) ~ x, smethod = "LogRank",
pmethod = "Lau92")`` (package maxstat): log-rank scores (``exactRankTests::cscores.Surv``), the
standardised linear rank statistic at every candidate cut-point with between ``minprop`` and
``maxprop`` of the patients below it, and the Lausen-Schumacher (1992) approximation of the p
value of the maximum, which corrects for having searched over cut-points. Groups are
``x <= cutpoint`` (low) and ``x > cutpoint`` (high).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class MaxstatResult:
    """Result of :func:`maxstat_test`.

    Attributes
    ----------
    cutpoint
        Estimated cut-point (largest value of the low group).
    statistic
        Maximum absolute standardised log-rank statistic.
    p_value
        Lausen-Schumacher 1992 corrected p value.
    cuts, stats
        Every candidate cut-point and its statistic.
    n_low, n_high
        Group sizes at the cut-point.
    """

    cutpoint: float
    statistic: float
    p_value: float
    cuts: np.ndarray
    stats: np.ndarray
    n_low: int
    n_high: int


def logrank_scores(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Log-rank (Savage) scores of censored times, as ``exactRankTests::cscores.Surv``.

    Parameters
    ----------
    time, event
        Survival times and event indicators (1 = event).

    Returns
    -------
    numpy.ndarray
        ``event_i - sum_{j: t_j <= t_i} event_j / (N - r_j + 1)`` with ``r`` the max-rank.

    Examples
    --------
    >>> logrank_scores(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0])).round(3).tolist()
    [0.667, 0.167, -0.833]
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    n = len(time)
    order = np.argsort(time, kind="stable")
    rank = rankdata(time, method="max").astype(int)
    fact = event / (n - rank + 1)
    cumulative = np.cumsum(fact[order])
    return event - cumulative[rank - 1]


def p_lausen92(statistic: float, *, minprop: float = 0.1, maxprop: float = 0.9) -> float:
    """Lausen & Schumacher (1992) approximate p value of a maximally selected statistic.

    Examples
    --------
    >>> round(p_lausen92(3.0), 4)
    0.0578
    """
    if statistic < 1:
        return 1.0
    density = norm.pdf(statistic)
    p = (4 * density / statistic + density * (statistic - 1 / statistic)
         * math.log((maxprop * (1 - minprop)) / ((1 - maxprop) * minprop)))
    return float(min(max(p, 0.0), 1.0))


def maxstat_test(x: np.ndarray, time: np.ndarray, event: np.ndarray, *,
                 minprop: float = 0.1, maxprop: float = 0.9) -> MaxstatResult:
    """Maximally selected log-rank statistic and its corrected p value.

    Parameters
    ----------
    x
        The feature (no missing values).
    time, event
        Survival times and event indicators.
    minprop, maxprop
        Candidate cut-points leave at least ``floor(N minprop)`` and at most
        ``floor(N maxprop)`` patients in the low group.

    Returns
    -------
    MaxstatResult

    Raises
    ------
    ValueError
        Missing values, fewer than 2 distinct values, or no cut-point between minprop and
        maxprop.
    """
    x = np.asarray(x, dtype=float)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    if not (len(x) == len(time) == len(event)):
        raise ValueError("x, time and event differ in length")
    if np.isnan(x).any() or np.isnan(time).any() or np.isnan(event).any():
        raise ValueError("missing values: drop incomplete patients first")
    n = len(x)
    scores = logrank_scores(time, event)
    order = np.argsort(x, kind="stable")
    y = scores[order]
    xs = x[order]
    first = np.ones(n, dtype=bool)
    first[1:] = xs[1:] != xs[:-1]
    m = np.flatnonzero(first)  # observations below each distinct value
    m = m[(m >= max(1, math.floor(n * minprop))) & (m <= math.floor(n * maxprop))]
    if len(m) == 0:
        raise ValueError("no cut-point leaves between minprop and maxprop of the patients "
                         "in each group")
    total = y.sum()
    expected = m / n * total
    variance = m * (n - m) / (n**2 * (n - 1)) * (n * np.sum(y**2) - total**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = np.abs((np.cumsum(y)[m - 1] - expected) / np.sqrt(variance))
    if not np.isfinite(stats).any():
        raise ValueError("no events, or all scores equal: the statistic is undefined")
    stats = np.where(np.isfinite(stats), stats, 0.0)
    best = int(np.argmax(stats))
    statistic = float(stats[best])
    cut = float(xs[m[best] - 1])
    n_low = int(np.sum(x <= cut))
    return MaxstatResult(cut, statistic, p_lausen92(statistic, minprop=minprop, maxprop=maxprop),
                         xs[m - 1], stats, n_low, n - n_low)
