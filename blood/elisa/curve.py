"""Four- and five-parameter logistic standard curves (weighted least squares) and inverses.

Model (Gottschalk & Dunn 2005; R drc ``LL.5`` / nplr)::

    y = d + (a - d) / (1 + (x / c) ** b) ** g      (4PL: g = 1)

a = response at zero concentration, d = response at infinite concentration, c = inflection
(EC50 for 4PL), b = slope, g = asymmetry. Fitted by scipy's ``least_squares`` with c on the
log scale (keeps it positive and well conditioned) and weights 1 / y^power.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import least_squares

Model = Literal["4pl", "5pl"]


@dataclass(frozen=True)
class LogisticCurve:
    """A fitted 4PL / 5PL curve.

    Attributes
    ----------
    a, b, c, d, g
        Parameters (g = 1 for 4PL).
    model
        "4pl" or "5pl".
    rss
        Weighted residual sum of squares.
    """

    a: float
    b: float
    c: float
    d: float
    g: float
    model: Model
    rss: float

    def response(self, x: np.ndarray | float) -> np.ndarray:
        """Predicted response at concentration(s) x."""
        return _logistic(np.asarray(x, dtype=float), self.a, self.b, self.c, self.d, self.g)

    def concentration(self, y: np.ndarray | float) -> np.ndarray:
        """Back-calculated concentration; NaN where y lies outside the asymptotes.

        Examples
        --------
        >>> curve = LogisticCurve(a=0.05, b=1.2, c=100.0, d=3.0, g=1.0, model="4pl", rss=0.0)
        >>> float(np.round(curve.concentration(curve.response(50.0)), 6))
        50.0
        """
        y = np.asarray(y, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (self.a - self.d) / (y - self.d)
            inner = ratio ** (1.0 / self.g) - 1.0
            x = self.c * inner ** (1.0 / self.b)
        lo, hi = sorted((self.a, self.d))
        return np.where((y > lo) & (y < hi) & (inner > 0), x, np.nan)


def _logistic(x: np.ndarray, a: float, b: float, c: float, d: float, g: float) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return d + (a - d) / (1.0 + (x / c) ** b) ** g


def fit_logistic(x: np.ndarray, y: np.ndarray, *, model: Model = "4pl",
                 weight_power: float = 2.0) -> LogisticCurve:
    """Fit a 4PL or 5PL curve by weighted least squares.

    Parameters
    ----------
    x
        Standard concentrations (> 0).
    y
        Responses (blank-corrected OD or MFI), one per x (replicates as separate points).
    model
        "4pl" or "5pl".
    weight_power
        Weights are 1 / |y|^weight_power (2 = the usual 1/Y^2 for MFI; 0 = unweighted).

    Returns
    -------
    LogisticCurve

    Raises
    ------
    ValueError
        Too few points, non-positive concentrations or a failed optimisation.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n_par = 4 if model == "4pl" else 5
    if np.unique(x).size < n_par:
        raise ValueError(f"{model} needs at least {n_par} distinct standard concentrations, "
                         f"got {np.unique(x).size}")
    if np.any(x <= 0):
        raise ValueError("standard concentrations must be > 0 (blanks are not standards)")
    sigma = np.maximum(np.abs(y), 1e-9 * max(np.abs(y).max(), 1.0)) ** (weight_power / 2.0)
    order = np.argsort(x)
    increasing = y[order][-1] >= y[order][0]
    a0, d0 = (y.min(), y.max()) if increasing else (y.max(), y.min())
    span = np.ptp(y) or 1.0
    start = [a0 - 0.05 * span, 1.0, np.log(np.exp(np.log(x).mean())), d0 + 0.05 * span]
    if model == "5pl":
        start.append(1.0)

    def residuals(p: np.ndarray) -> np.ndarray:
        g = p[4] if model == "5pl" else 1.0
        return (_logistic(x, p[0], p[1], np.exp(p[2]), p[3], g) - y) / sigma

    lower = [-np.inf, 0.05, np.log(x.min()) - 10, -np.inf] + ([0.05] if model == "5pl" else [])
    upper = [np.inf, 20.0, np.log(x.max()) + 10, np.inf] + ([20.0] if model == "5pl" else [])
    best = None
    # a few starting slopes: logistic fits have local minima, R's drc also self-starts
    for slope in (1.0, 0.5, 2.0):
        p0 = np.array(start)
        p0[1] = slope
        fit = least_squares(residuals, p0, bounds=(lower, upper), method="trf",
                            x_scale="jac", max_nfev=5000)
        if fit.success and (best is None or fit.cost < best.cost):
            best = fit
    if best is None:
        raise ValueError(f"{model} fit did not converge")
    p = best.x
    return LogisticCurve(a=float(p[0]), b=float(p[1]), c=float(np.exp(p[2])), d=float(p[3]),
                         g=float(p[4]) if model == "5pl" else 1.0, model=model,
                         rss=float(2.0 * best.cost))
