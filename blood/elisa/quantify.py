"""Standard curve QC and sample concentrations for one analyte on one plate.

Input is a long table, one row per well: ``well, kind (standard|blank|sample), sample_id,
concentration (standards), dilution (samples), value`` (OD or MFI).

A curve that does not describe its standards is refused (:class:`CurveRejected`), never
turned into concentrations: a dead assay (flat standards) would otherwise read as "every
sample below the LLOQ", i.e. as a biological result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from blood.elisa.curve import LogisticCurve, Model, fit_logistic

BelowRule = Literal["lloq_half", "lowest_standard", "censor"]
Exclusion = Literal["leave_one_out", "none"]
CurveCheck = Literal["flat", "non_monotonic", "recovery"]
WELL_COLUMNS = ("well", "kind", "sample_id", "concentration", "dilution", "value")


class CurveRejected(ValueError):
    """A standard curve that does not fit its standards; no concentration may come from it.

    Attributes
    ----------
    check
        Which check failed: "flat", "non_monotonic" or "recovery".
    standards
        The standard levels as far as they were evaluated (as :attr:`Quantified.standards`;
        without fit columns when the shape checks failed before fitting).
    """

    def __init__(self, check: CurveCheck, message: str, standards: pd.DataFrame) -> None:
        super().__init__(message)
        self.check = check
        self.standards = standards


@dataclass(frozen=True)
class Quantified:
    """Result of :func:`quantify`.

    Attributes
    ----------
    curve
        Final curve (fitted on retained standards).
    standards
        One row per standard level: concentration, mean response, back-calculated,
        recovery_pct, cv_pct, in_fit (the final curve was fitted on it), used (in the fit
        and, above zero concentration, recovering within the window), in_range (inside the
        working range LLOQ..ULOQ).
    samples
        One row per sample: sample_id, dilution, mean response, cv_pct, concentration
        (dilution applied), flag ('' | '<LLOQ' | '>ULOQ'), cv_flag.
    lloq, uloq
        Limits of quantification (in-well concentration): lowest / highest standard of the
        working range.
    """

    curve: LogisticCurve
    standards: pd.DataFrame
    samples: pd.DataFrame
    lloq: float
    uloq: float


def _cv(values: pd.Series) -> float:
    return float(100 * values.std(ddof=1) / values.mean()) if len(values) > 1 else np.nan


def quantify(wells: pd.DataFrame, *, model: Model = "4pl", weight_power: float = 2.0,
             weight_floor: float = 0.0, recovery_window: tuple[float, float] = (70.0, 130.0),
             max_cv_pct: float = 15.0, below_rule: BelowRule = "lloq_half",
             exclusion: Exclusion = "leave_one_out", min_span: float = 0.3,
             min_tau: float = 0.7, min_recovering: float = 0.5) -> Quantified:
    """Blank-correct, fit the standard curve, check recovery and back-calculate samples.

    Before any concentration is computed the curve must pass three checks (see
    :func:`curve_shape_problem` for the first two): the standard levels' mean responses
    span at least ``min_span`` of the largest (else *flat*), they rise or fall with
    concentration (|Kendall tau| >= ``min_tau``, else *non-monotonic*), and at least
    ``min_recovering`` of the levels above zero back-calculate within ``recovery_window``
    on the final curve (else the curve does not fit its standards).

    ``exclusion="leave_one_out"``: standards whose back-calculated mean recovers outside
    ``recovery_window`` are excluded one at a time and the curve is refitted, while enough
    levels remain; LLOQ / ULOQ are the lowest / highest retained level.
    ``exclusion="none"``: one fit on every standard (Luminex xPONENT's "fit of all
    standards"); the working range is the longest run of consecutive levels whose recovery
    lies within ``recovery_window``, LLOQ / ULOQ its lowest / highest level. A
    zero-concentration standard (S0) is fitted as the curve's asymptote, has no recovery and
    never sets the LLOQ.
    Samples are never extrapolated: responses below the LLOQ follow ``below_rule``
    ('lloq_half': LLOQ/2 x dilution; 'lowest_standard': LLOQ x dilution; 'censor': NaN),
    responses above the ULOQ are NaN; both are flagged.

    Parameters
    ----------
    wells
        Long table with columns ``well, kind, sample_id, concentration, dilution, value``.
    model, weight_power
        Curve model and weights 1/|y|^power (see :func:`fit_logistic`).
    weight_floor
        Responses closer to zero than this count as this in the weights, so that a standard
        at background (blank-corrected response near 0) cannot dominate the fit; 0 = none.
        Luminex xPONENT's 1/Y^2 fit behaves as a floor of 1 MFI.
    recovery_window
        Accepted back-calculated recovery of standards, in percent.
    max_cv_pct
        Replicate CV above this is flagged (intra-assay).
    below_rule
        Value reported below the LLOQ.
    exclusion
        "leave_one_out" (refit without failing standards) or "none" (see above).
    min_span
        Smallest accepted (highest - lowest) / highest |mean response| of the standard
        levels, raw (not blank-corrected); 0 turns the check off.
    min_tau
        Smallest accepted |Kendall tau| between concentration and mean response of the
        standard levels; 0 turns the check off.
    min_recovering
        Smallest accepted fraction of standard levels above zero that back-calculate within
        ``recovery_window`` on the final curve.

    Returns
    -------
    Quantified

    Raises
    ------
    CurveRejected
        A flat or non-monotonic set of standards, a curve on which too few standards (or
        none) recover within the window.
    ValueError
        Missing columns, too few standard levels or a fit that does not converge.
    """
    missing = [c for c in WELL_COLUMNS if c not in wells.columns]
    if missing:
        raise ValueError(f"well table lacks column(s) {missing}")
    wells = wells.copy()
    blanks = wells.loc[wells["kind"] == "blank", "value"]
    wells["signal"] = wells["value"] - (blanks.mean() if len(blanks) else 0.0)
    std = wells[wells["kind"] == "standard"]
    levels = (std.groupby("concentration")["signal"].agg(["mean", _cv]).rename(
        columns={"mean": "response", "_cv": "cv_pct"}).reset_index())
    raw = std.groupby("concentration")["value"].mean().to_numpy(dtype=float)
    shape = curve_shape_problem(levels["concentration"].to_numpy(dtype=float), raw,
                                min_span=min_span, min_tau=min_tau)
    if shape is not None:
        raise CurveRejected(shape[0], shape[1], levels)
    used = np.ones(len(levels), dtype=bool)
    n_min = 4 if model == "4pl" else 5
    conc = levels["concentration"].to_numpy()

    def fit_on(mask: np.ndarray) -> tuple[LogisticCurve, np.ndarray]:
        keep = std["concentration"].isin(conc[mask])
        y = std.loc[keep, "signal"].to_numpy(dtype=float)
        weights = (1.0 / np.maximum(np.abs(y), weight_floor) ** (weight_power / 2)
                   if weight_floor > 0 else None)
        curve = fit_logistic(std.loc[keep, "concentration"], y, model=model,
                             weight_power=weight_power, weights=weights)
        with np.errstate(divide="ignore", invalid="ignore"):
            recovery = 100 * curve.concentration(levels["response"].to_numpy()) / conc
        return curve, np.where(conc > 0, recovery, np.nan)

    def outside(recovery: np.ndarray) -> np.ndarray:
        # a zero standard (S0) has no recovery: it anchors the asymptote and is always kept
        return (conc > 0) & ~((recovery >= recovery_window[0]) &
                              (recovery <= recovery_window[1]))

    curve, recovery = fit_on(used)
    while exclusion == "leave_one_out" and (outside(recovery) & used).any() and \
            used.sum() > n_min:
        # leave-one-out: drop the level whose removal leaves the fewest failing levels
        # (then the smallest weighted RSS); a gross outlier distorts the whole curve, so
        # "worst recovery first" would drop its innocent neighbours instead
        best = None
        for i in np.flatnonzero(used):
            trial = used.copy()
            trial[i] = False
            trial_curve, trial_recovery = fit_on(trial)
            score = (int((outside(trial_recovery) & trial).sum()), trial_curve.rss)
            if best is None or score < best[0]:
                best = (score, i, trial_curve, trial_recovery)
        _, drop, curve, recovery = best
        used[drop] = False
    back = recovery * conc / 100
    levels["back_calculated"] = back
    levels["recovery_pct"] = recovery
    levels["in_fit"] = used
    # leave-one-out stops at the fewest levels a fit needs: what it could not drop is still
    # outside the window and must not count as a good standard
    levels["used"] = used & ~outside(recovery)
    problem = _recovery_problem(conc, recovery, outside(recovery), recovery_window,
                                min_recovering)
    if problem:
        raise CurveRejected("recovery", problem, levels)
    if exclusion == "none":
        in_range = _longest_run(~outside(recovery) & (conc > 0), conc)
    else:
        in_range = levels["used"].to_numpy() & (conc > 0)
    levels["in_range"] = in_range
    lloq = float(levels.loc[in_range, "concentration"].min())
    uloq = float(levels.loc[in_range, "concentration"].max())
    samples = _samples(wells, curve, lloq, uloq, max_cv_pct, below_rule)
    return Quantified(curve, levels, samples, lloq, uloq)


def curve_shape_problem(concentration: np.ndarray, response: np.ndarray, *,
                        min_span: float = 0.3, min_tau: float = 0.7
                        ) -> tuple[CurveCheck, str] | None:
    """Why a set of standard levels cannot carry a standard curve, before any fit.

    *Flat*: the levels' mean responses span less than ``min_span`` of the largest |mean|
    (raw OD or MFI: a dead assay reads the same at every level). *Non-monotonic*: the means
    do not rise or fall with concentration, |Kendall tau| < ``min_tau`` (a logistic curve
    is monotonic; one mis-pipetted level costs little tau and is left to the recovery
    check, a hook or swapped standard positions cost a lot).

    Parameters
    ----------
    concentration
        Standard levels (a zero standard included).
    response
        Mean response of each level, raw (not blank-corrected).
    min_span, min_tau
        Thresholds; 0 turns a check off.

    Returns
    -------
    tuple or None
        ``(check, message)`` with check "flat" or "non_monotonic", or None when the
        standards pass.

    Examples
    --------
    >>> conc = np.array([1000.0, 500.0, 250.0, 125.0, 62.5])
    >>> curve_shape_problem(conc, np.array([2.1, 1.4, 0.8, 0.4, 0.2])) is None
    True
    >>> curve_shape_problem(conc, np.array([0.08, 0.08, 0.09, 0.08, 0.08]))[0]
    'flat'
    >>> curve_shape_problem(conc, np.array([0.2, 1.9, 0.4, 2.1, 0.8]))[0]
    'non_monotonic'
    """
    finite = np.isfinite(concentration) & np.isfinite(response)
    conc, y = concentration[finite], response[finite]
    order = np.argsort(conc)
    conc, y = conc[order], y[order]
    reads = ", ".join(f"{c:g}: {v:.4g}" for c, v in zip(conc, y, strict=True))
    scale = float(np.abs(y).max()) if y.size else 0.0
    span = float(np.ptp(y)) if y.size else 0.0
    if min_span > 0 and (scale == 0 or span < min_span * scale):
        share = 100 * span / scale if scale else 0.0
        return "flat", (f"flat standard curve: the {y.size} standard levels read {y.min():.4g} "
                        f"to {y.max():.4g} (span {share:.0f}% of the highest, at least "
                        f"{100 * min_span:.0f}% needed; by concentration {reads}): the assay "
                        "gave no signal (reagent, incubation or reading failed)")
    tau = stats.kendalltau(conc, y).statistic if y.size > 1 else np.nan
    if min_tau > 0 and not abs(tau) >= min_tau:
        return "non_monotonic", (
            f"non-monotonic standard curve: the standards' responses do not rise or fall "
            f"with concentration (Kendall tau {tau:.2f}, at least {min_tau:g} needed; by "
            f"concentration {reads}): check the standards' wells and concentrations in the "
            "layout, or a hook effect")
    return None


def _recovery_problem(conc: np.ndarray, recovery: np.ndarray, outside: np.ndarray,
                      window: tuple[float, float], min_recovering: float) -> str:
    """Message when too few standard levels above zero recover within the window, or ''."""
    positive = conc > 0
    good = int((positive & ~outside).sum())
    if good and good >= min_recovering * positive.sum():
        return ""
    bad = np.flatnonzero(positive & outside)
    listed = ", ".join(f"{conc[i]:g} at {recovery[i]:.0f}%" if np.isfinite(recovery[i])
                       else f"{conc[i]:g} beyond the curve's asymptotes" for i in bad[:8])
    return (f"the standard curve does not fit its standards: {good} of {int(positive.sum())} "
            f"levels back-calculate within the recovery window {window[0]:g}-{window[1]:g}% "
            f"(at least {100 * min_recovering:.0f}% needed; outside: {listed}"
            f"{' ...' if bad.size > 8 else ''}): check the standards' dilution series")


def _longest_run(ok: np.ndarray, conc: np.ndarray) -> np.ndarray:
    """Mask of the longest run of consecutive (by concentration) True levels; ties: higher."""
    order = np.argsort(conc, kind="stable")
    best, start, best_span = np.zeros_like(ok), None, (0, 0)
    for position, index in enumerate([*order, -1]):
        if index >= 0 and ok[index]:
            start = position if start is None else start
            continue
        if start is not None and position - start >= best_span[1] - best_span[0]:
            best_span = (start, position)
        start = None
    best[order[best_span[0]:best_span[1]]] = True
    return best


def range_flags(curve: LogisticCurve, lloq: float, uloq: float,
                response: np.ndarray | float) -> np.ndarray:
    """Where responses fall against the working range: '<LLOQ', '>ULOQ' or ''.

    Compared on the response scale (the curve at LLOQ and ULOQ), so increasing and
    decreasing curves are handled alike and nothing is extrapolated. A non-finite response
    gives ''.

    Examples
    --------
    >>> curve = LogisticCurve(a=0.0, b=1.0, c=100.0, d=10.0, g=1.0, model="4pl", rss=0.0)
    >>> range_flags(curve, 10.0, 1000.0, [0.1, 5.0, 9.99]).tolist()
    ['<LLOQ', '', '>ULOQ']
    """
    response = np.atleast_1d(np.asarray(response, dtype=float))
    y_lloq, y_uloq = float(curve.response(lloq)), float(curve.response(uloq))
    increasing = y_uloq > y_lloq
    below = response < y_lloq if increasing else response > y_lloq
    above = response > y_uloq if increasing else response < y_uloq
    return np.select([below, above], ["<LLOQ", ">ULOQ"], "").astype(object)


def _samples(wells: pd.DataFrame, curve: LogisticCurve, lloq: float, uloq: float,
             max_cv_pct: float, below_rule: BelowRule) -> pd.DataFrame:
    rows = []
    for (sample_id, dilution), group in wells[wells["kind"] == "sample"].groupby(
            ["sample_id", "dilution"], sort=False):
        response = float(group["signal"].mean())
        cv = _cv(group["signal"])
        flag = str(range_flags(curve, lloq, uloq, response)[0])
        below, above = flag == "<LLOQ", flag == ">ULOQ"
        if below:
            value = {"lloq_half": lloq / 2, "lowest_standard": lloq,
                     "censor": np.nan}[below_rule] * dilution
        elif above:
            value = np.nan
        else:
            value = float(curve.concentration(response)) * dilution
        rows.append({"sample_id": sample_id, "dilution": dilution, "response": response,
                     "cv_pct": cv, "concentration": value, "flag": flag,
                     "cv_flag": bool(np.isfinite(cv) and cv > max_cv_pct)})
    return pd.DataFrame(rows, columns=["sample_id", "dilution", "response", "cv_pct",
                                       "concentration", "flag", "cv_flag"])
