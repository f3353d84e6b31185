"""Four- and five-parameter log-logistic standard curves, as R drc's ``LL.4`` / ``LL.5``.

Model (Finney 1979; Gottschalk & Dunn 2005; drc ``LL.5`` with ``f`` = g)::

    y = d + (a - d) / (1 + (x / c) ** b) ** g      (4PL: g = 1)

In drc's names (``c + (d - c) / (1 + exp(b (log x - log e))) ** f``) that is
b = b, c = d, d = a, e = c, f = g: a is the response where ``(x / c) ** b`` vanishes (at zero
concentration when b > 0), d the other asymptote, c the inflection (EC50 for 4PL), b the slope
(either sign), g the asymmetry. A zero-concentration standard is an ordinary point: the curve
there is its asymptote, as in drc.

Fitting is least squares by scipy's ``least_squares`` (c and g on the log scale while
optimising, several starts on both branches of b). Standard errors follow drc's ``vcov``: the
inverse of half the Hessian of the (weighted) residual sum of squares, times RSS / df.
Effective doses follow drc's ``ED()`` (relative to the control asymptote; delta method,
t quantile on the residual degrees of freedom).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats
from scipy.optimize import least_squares

Model = Literal["4pl", "5pl"]
Covariance = Literal["model", "sandwich"]
PARAMETERS = ("a", "b", "c", "d", "g")
#: drc's name for each of our parameters (``LL.5``: b, c, d, e, f)
DRC_NAMES = {"b": "b", "d": "c", "a": "d", "c": "e", "g": "f"}


@dataclass(frozen=True)
class EffectiveDose:
    """An effective dose (drc ``ED()``): estimate, delta-method standard error and interval.

    Attributes
    ----------
    percent
        Response level in percent of the way from the control asymptote to the other one.
    estimate, se, lower, upper
        Dose, standard error and confidence limits (NaN where not estimable).
    level
        Confidence level of [lower, upper].
    """

    percent: float
    estimate: float
    se: float
    lower: float
    upper: float
    level: float


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
    free
        Names of the estimated parameters (the others were fixed).
    vcov
        Variance-covariance matrix of the free parameters (drc's ``vcov``), or None.
    df_residual
        Residual degrees of freedom (points - free parameters).
    """

    a: float
    b: float
    c: float
    d: float
    g: float
    model: Model
    rss: float
    free: tuple[str, ...] = ()
    vcov: np.ndarray | None = field(default=None, repr=False, compare=False)
    df_residual: int = 0

    def response(self, x: np.ndarray | float) -> np.ndarray:
        """Predicted response at concentration(s) x (x = 0 gives the asymptote)."""
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
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = (self.a - self.d) / (y - self.d)
            inner = ratio ** (1.0 / self.g) - 1.0
            x = self.c * inner ** (1.0 / self.b)
        lo, hi = sorted((self.a, self.d))
        return np.where((y > lo) & (y < hi) & (inner > 0), x, np.nan)

    @property
    def se(self) -> dict[str, float]:
        """Standard errors of the free parameters (drc's ``summary``), by our names."""
        if self.vcov is None:
            return {}
        return dict(zip(self.free, np.sqrt(np.diag(self.vcov)).tolist(), strict=True))

    def _drc_names(self) -> dict[str, str]:
        # drc spells a 4PL with its d the larger asymptote; b changes sign with the swap
        if self.g == 1.0 and "g" not in self.free and self.a < self.d:
            return {"b": "b", "a": "c", "d": "d", "c": "e", "g": "f"}
        return DRC_NAMES

    def drc_coefficients(self) -> dict[str, float]:
        """Parameters under drc's names (``b, c, d, e, f``), as R prints them."""
        names = self._drc_names()
        flip = names is not DRC_NAMES
        return {names[k]: float(-self.b if flip and k == "b" else getattr(self, k))
                for k in PARAMETERS}

    def drc_standard_errors(self) -> dict[str, float]:
        """Standard errors of the free parameters under drc's names."""
        names = self._drc_names()
        return {names[k]: v for k, v in self.se.items()}

    def effective_dose(self, percent: float, *, level: float = 0.95) -> EffectiveDose:
        """Dose at ``percent`` % of the way from the control asymptote (drc ``ED()``).

        As drc's default (``type="relative"``, ``reference="control"``, ``interval="delta"``):
        the control asymptote is drc's d when b > 0 and drc's c when b < 0; the standard error
        comes from the delta method on :attr:`vcov`, the interval from the t distribution on
        :attr:`df_residual`. ED50 of a 4PL is c.

        Parameters
        ----------
        percent
            Response level, strictly between 0 and 100.
        level
            Confidence level of the interval.

        Returns
        -------
        EffectiveDose

        Examples
        --------
        >>> curve = LogisticCurve(a=8.0, b=2.0, c=3.0, d=0.5, g=1.0, model="4pl", rss=0.0)
        >>> round(curve.effective_dose(50).estimate, 6)
        3.0
        """
        if not 0 < percent < 100:
            raise ValueError(f"effective dose level must lie in (0, 100), got {percent}")
        p0 = np.array([getattr(self, name) for name in PARAMETERS])
        estimate = _ed(p0, percent)
        se = lower = upper = np.nan
        if self.vcov is not None and np.isfinite(estimate):
            index = [PARAMETERS.index(name) for name in self.free]
            grad = np.empty(len(index))
            for k, i in enumerate(index):
                h = 1e-6 * max(abs(p0[i]), 1e-3)
                up, down = p0.copy(), p0.copy()
                up[i] += h
                down[i] -= h
                grad[k] = (_ed(up, percent) - _ed(down, percent)) / (2 * h)
            se = float(np.sqrt(grad @ self.vcov @ grad))
            t = stats.t.ppf(0.5 + level / 2, self.df_residual)
            lower, upper = estimate - t * se, estimate + t * se
        return EffectiveDose(float(percent), float(estimate), float(se), float(lower),
                             float(upper), float(level))


def _ed(p: np.ndarray, percent: float) -> float:
    """drc's llogistic ``edfct``: e (((100 / (100 - p)) ** (1 / f)) - 1) ** (1 / b)."""
    _, b, c, _, g = p
    if b < 0:
        percent = 100 - percent
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return float(c * ((100 / (100 - percent)) ** (1 / g) - 1) ** (1 / b))


def _logistic(x: np.ndarray, a: float, b: float, c: float, d: float, g: float) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_u = b * np.log(x / c)  # -inf / +inf at x = 0, by the sign of b
        return d + (a - d) * np.exp(-g * np.logaddexp(0.0, log_u))


def _jacobian(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """d response / d (a, b, c, d, g); columns at x = 0 are their limits."""
    a, b, c, d, g = p
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_xc = np.log(x / c)
        log_u = b * log_xc
        log_1u = np.logaddexp(0.0, log_u)
        s = np.exp(-g * log_1u)                       # (1 + u) ** -g
        share = np.exp(log_u - log_1u)                # u / (1 + u)
        common = -g * (a - d) * s * share
        db = common * log_xc
        dc = common * (-b / c)
        dg = -(a - d) * s * log_1u
    zero = x == 0
    db, dc = np.where(zero, 0.0, db), np.where(zero, 0.0, dc)
    dg = np.where(zero, 0.0, dg)
    return np.column_stack([s, db, dc, 1.0 - s, dg])


def fit_logistic(x: np.ndarray, y: np.ndarray, *, model: Model = "4pl",
                 weight_power: float = 2.0, weights: np.ndarray | None = None,
                 fixed: dict[str, float] | None = None,
                 covariance: Covariance = "model") -> LogisticCurve:
    """Fit a 4PL or 5PL curve by (weighted) least squares, as R drc's ``LL.4`` / ``LL.5``.

    Parameters
    ----------
    x
        Standard concentrations (>= 0; a zero standard is the curve's asymptote).
    y
        Responses (blank-corrected OD or MFI), one per x (replicates as separate points).
    model
        "4pl" or "5pl".
    weight_power
        Without ``weights``: each residual is divided by |y|^(weight_power / 2), i.e. squared
        residuals weighted by 1 / |y|^weight_power (2 = the usual 1/Y^2 for MFI; 0 =
        unweighted, drc's default).
    weights
        drc's ``weights`` (drc 3.0 on CRAN): multiplied with each residual inside the square,
        minimising sum((w (y - f(x)))^2). Overrides ``weight_power``.
    fixed
        Parameters held at a value (our names, e.g. ``{"d": 0}`` is drc's ``LL.3``, lower
        limit 0); they get no standard error.
    covariance
        "model": drc's ``vcov`` (residual variance x inverse half-Hessian); "sandwich": the
        heteroscedasticity-robust HC0 estimate of R's ``sandwich::sandwich`` on a drc fit.

    Returns
    -------
    LogisticCurve

    Raises
    ------
    ValueError
        Too few points, negative concentrations or a failed optimisation.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.shape != x.shape:
            raise ValueError(f"weights has {w.size} values for {x.size} points")
        keep &= np.isfinite(w)
    x, y = x[keep], y[keep]
    fixed = dict(fixed or {})
    if model == "4pl":
        fixed["g"] = 1.0
    unknown = set(fixed) - set(PARAMETERS)
    if unknown:
        raise ValueError(f"unknown fixed parameter(s) {sorted(unknown)}; use {PARAMETERS}")
    free = tuple(name for name in PARAMETERS if name not in fixed)
    if np.unique(x).size < len(free):
        raise ValueError(f"{model} needs at least {len(free)} distinct standard "
                         f"concentrations, got {np.unique(x).size}")
    if np.any(x < 0):
        raise ValueError("standard concentrations must be >= 0")
    if weights is not None:
        w = w[keep]
    else:
        w = 1.0 / np.maximum(np.abs(y), 1e-9 * max(np.abs(y).max(), 1.0)) ** (weight_power / 2)
    positive = x[x > 0]
    if positive.size == 0:
        raise ValueError("at least one standard concentration must be > 0")
    order = np.argsort(x)
    low, high = y[order][0], y[order][-1]
    span = np.ptp(y) or 1.0
    log_c0 = np.log(positive).mean()
    log_scale = {"c", "g"}  # optimised on the log scale (positive)

    def full(q: np.ndarray) -> np.ndarray:
        p = dict(fixed)
        for name, value in zip(free, q, strict=True):
            p[name] = np.exp(value) if name in log_scale else value
        return np.array([p[name] for name in PARAMETERS])

    def residuals(q: np.ndarray) -> np.ndarray:
        return w * (_logistic(x, *full(q)) - y)

    def jac(q: np.ndarray) -> np.ndarray:
        p = full(q)
        j = _jacobian(x, p)[:, [PARAMETERS.index(name) for name in free]]
        for k, name in enumerate(free):
            if name in log_scale:
                j[:, k] *= p[PARAMETERS.index(name)]
        return w[:, None] * j

    best = None
    # both branches of b (a at the low- or the high-concentration end) and a few slopes:
    # logistic fits have local minima; for 5PL the two branches are different curves
    for sign in (1.0, -1.0):
        a0, d0 = (low, high) if sign > 0 else (high, low)
        for slope in (1.0, 0.5, 2.0):
            start = {"a": a0 - 0.05 * span * np.sign(d0 - a0 or 1), "b": sign * slope,
                     "c": log_c0, "d": d0 + 0.05 * span * np.sign(d0 - a0 or 1), "g": 0.0}
            q0 = np.array([start[name] for name in free], dtype=float)
            try:
                fit = least_squares(residuals, q0, jac=jac, method="trf", x_scale="jac",
                                    xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
            except (ValueError, FloatingPointError):
                continue
            if np.all(np.isfinite(fit.x)) and np.isfinite(fit.cost) and (
                    best is None or fit.cost < best.cost):
                best = fit
    if best is None:
        raise ValueError(f"{model} fit did not converge")
    p = full(best.x)
    if "g" not in free and p[4] == 1.0 and p[1] < 0:
        # a 4PL has two spellings of one curve: keep b > 0 (a = response at zero)
        p = np.array([p[3], -p[1], p[2], p[0], 1.0])
    rss = float(2.0 * best.cost)
    df = int(x.size - len(free))
    vcov = _vcov(x, y, w, p, free, rss, df, covariance)
    return LogisticCurve(a=float(p[0]), b=float(p[1]), c=float(p[2]), d=float(p[3]),
                         g=float(p[4]), model=model, rss=rss, free=free, vcov=vcov,
                         df_residual=df)


def _vcov(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray,
          free: tuple[str, ...], rss: float, df: int,
          covariance: Covariance = "model") -> np.ndarray | None:
    """drc's vcov: inverse of (Hessian of the weighted RSS / 2), times RSS / df.

    "sandwich": that inverse (unscaled) on both sides of the sum of r_i^2 grad_i grad_i'.

    The Hessian is the full one (as R's ``optim(hessian = TRUE)``), not Gauss-Newton's J'J:
    the analytic Jacobian differentiated once more by central differences.
    """
    if df <= 0:
        return None
    index = [PARAMETERS.index(name) for name in free]
    r = w * (_logistic(x, *p) - y)
    j = w[:, None] * _jacobian(x, p)[:, index]
    second = np.zeros((len(index), len(index)))
    for k, i in enumerate(index):
        h = 1e-6 * max(abs(p[i]), 1e-3 * max(np.ptp(y), 1e-12) if i in (0, 3) else 1e-3)
        up, down = p.copy(), p.copy()
        up[i] += h
        down[i] -= h
        dj = (w[:, None] * (_jacobian(x, up) - _jacobian(x, down))[:, index]) / (2 * h)
        second[k] = r @ dj
    half_hessian = j.T @ j + (second + second.T) / 2
    try:
        inverse = np.linalg.inv(half_hessian)
    except np.linalg.LinAlgError:
        return None
    if covariance == "sandwich":
        score = r[:, None] * j
        return inverse @ (score.T @ score) @ inverse
    return inverse * rss / df
