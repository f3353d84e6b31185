"""Standard curve QC and sample concentrations for one analyte on one plate.

Input is a long table, one row per well: ``well, kind (standard|blank|sample), sample_id,
concentration (standards), dilution (samples), value`` (OD or MFI).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from blood.elisa.curve import LogisticCurve, Model, fit_logistic

BelowRule = Literal["lloq_half", "lowest_standard", "censor"]
Exclusion = Literal["leave_one_out", "none"]
WELL_COLUMNS = ("well", "kind", "sample_id", "concentration", "dilution", "value")


@dataclass(frozen=True)
class Quantified:
    """Result of :func:`quantify`.

    Attributes
    ----------
    curve
        Final curve (fitted on retained standards).
    standards
        One row per standard level: concentration, mean response, back-calculated,
        recovery_pct, cv_pct, used (False = excluded for recovery outside the window),
        in_range (inside the working range LLOQ..ULOQ).
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
             exclusion: Exclusion = "leave_one_out") -> Quantified:
    """Blank-correct, fit the standard curve, check recovery and back-calculate samples.

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

    Returns
    -------
    Quantified

    Raises
    ------
    ValueError
        Missing columns, too few standard levels, or (``exclusion="none"``) no standard
        level recovering within the window.
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
    levels["used"] = used
    if exclusion == "none":
        in_range = _longest_run(~outside(recovery) & (conc > 0), conc)
        if not in_range.any():
            raise ValueError(f"no standard level back-calculates within the recovery window "
                             f"{recovery_window[0]:g}-{recovery_window[1]:g}%")
    else:
        in_range = used & (conc > 0)
    levels["in_range"] = in_range
    lloq = float(levels.loc[in_range, "concentration"].min())
    uloq = float(levels.loc[in_range, "concentration"].max())
    samples = _samples(wells, curve, lloq, uloq, max_cv_pct, below_rule)
    return Quantified(curve, levels, samples, lloq, uloq)


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
