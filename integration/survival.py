"""Cox models (lifelines) for every candidate biomarker, OS and PFS alike.

- :func:`univariate_cox`: one model per variable and endpoint; coefficient per unit of the
  feature as given, hazard ratio per standard deviation, Wald p, Benjamini-Hochberg q (per
  endpoint, over all variables), Harrell's C and a Schoenfeld-residual PH test.
- :func:`clinical_model`: the clinical model (configured covariates) alone.
- :func:`multivariable_cox`: per variable, the clinical model plus the variable on the same
  patients: adjusted hazard ratio, PH test, change in concordance and a likelihood-ratio test
  of the added value.
- :func:`cutpoint_table`: median split and maximally selected log-rank cut-point per variable.

On-treatment variables use the landmark population (:func:`integration.frame.outcome`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.statistics import logrank_test, proportional_hazard_test
from scipy.stats import chi2

from integration.config import CoxConfig
from integration.cutpoint import maxstat_test
from integration.fdr import bh_qvalues
from integration.frame import AnalysisData, Variable, outcome

UNIVARIATE_COLUMNS = ("endpoint", "feature", "timepoint", "landmark_months", "label", "modality",
                      "n", "events", "coef", "se", "hr", "ci_low", "ci_high", "p", "q",
                      "hr_per_sd", "sd", "c_index", "ph_p", "note")


def fit_cox(frame: pd.DataFrame, *, duration: str = "time", event: str = "event"
            ) -> CoxPHFitter:
    """Fit an unpenalised Cox model (Efron ties) with lifelines' warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CoxPHFitter().fit(frame, duration_col=duration, event_col=event)


def _ph_p(model: CoxPHFitter, frame: pd.DataFrame, transform: str) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = proportional_hazard_test(model, frame, time_transform=transform)
        except Exception:  # noqa: BLE001 - a failed diagnostic must not stop the analysis
            return pd.Series(dtype=float)
    return result.summary["p"]


def _landmark(variable: Variable, landmark_months: float) -> float | None:
    return landmark_months if variable.landmark else None


def univariate_cox(data: AnalysisData, *, endpoints: Iterable[str] = ("os", "pfs"),
                   landmark_months: float = 1.5, config: CoxConfig | None = None
                   ) -> pd.DataFrame:
    """One Cox model per variable and endpoint.

    Parameters
    ----------
    data
        The analysis frame.
    endpoints
        ``os`` and/or ``pfs``.
    landmark_months
        Landmark for on-treatment variables.
    config
        Minimum patients/events and the PH test transform.

    Returns
    -------
    pandas.DataFrame
        ``UNIVARIATE_COLUMNS``; variables not fitted keep a ``note`` and missing numbers.
    """
    config = config or CoxConfig()
    rows: list[dict] = []
    for endpoint in endpoints:
        start = len(rows)
        for variable in data.variables:
            landmark = _landmark(variable, landmark_months)
            frame = outcome(data.clinical, endpoint, landmark=landmark).join(
                data.x[[variable.key]], how="inner").dropna()
            row = {"endpoint": endpoint, "feature": variable.feature,
                   "timepoint": variable.timepoint,
                   "landmark_months": landmark if landmark is not None else 0.0,
                   "label": variable.label, "modality": variable.modality,
                   "n": len(frame), "events": int(frame["event"].sum()), "note": ""}
            rows.append(row)
            problem = _too_little(frame, variable.key, config)
            if problem:
                row["note"] = problem
                continue
            try:
                model = fit_cox(frame)
            except Exception as error:  # noqa: BLE001 - convergence failures are reported
                row["note"] = f"fit failed: {type(error).__name__}"
                continue
            summary = model.summary.loc[variable.key]
            sd = float(frame[variable.key].std(ddof=1))
            row.update(coef=float(summary["coef"]), se=float(summary["se(coef)"]),
                       hr=float(summary["exp(coef)"]),
                       ci_low=float(summary["exp(coef) lower 95%"]),
                       ci_high=float(summary["exp(coef) upper 95%"]), p=float(summary["p"]),
                       hr_per_sd=float(np.exp(summary["coef"] * sd)), sd=sd,
                       c_index=float(model.concordance_index_),
                       ph_p=float(_ph_p(model, frame, config.ph_test_transform).get(
                           variable.key, np.nan)))
        block = rows[start:]
        q = bh_qvalues([r.get("p", np.nan) for r in block])
        for row, value in zip(block, q, strict=True):
            row["q"] = value
    return pd.DataFrame(rows, columns=list(UNIVARIATE_COLUMNS))


def _too_little(frame: pd.DataFrame, key: str, config: CoxConfig) -> str:
    if len(frame) < config.min_patients:
        return f"too few patients ({len(frame)} < {config.min_patients})"
    if frame["event"].sum() < config.min_events:
        return f"too few events ({int(frame['event'].sum())} < {config.min_events})"
    if frame[key].nunique() < 2:
        return "constant feature"
    return ""


def design_covariates(data: AnalysisData, covariates: Iterable[str]
                      ) -> tuple[pd.DataFrame, list[str]]:
    """Numeric design matrix of the clinical covariates.

    Numbers (and derived scores) enter as they are; categories as indicator columns
    ``<name>_<level>`` against the most frequent level (ties: alphabetical first).

    Parameters
    ----------
    data
        The analysis frame.
    covariates
        Clinical column names (absent ones are skipped with a note).

    Returns
    -------
    tuple
        The design (index ``patient_id``; missing where the covariate is missing) and notes.
    """
    notes: list[str] = []
    parts: list[pd.DataFrame] = []
    table = data.clinical.data
    for name in covariates:
        if name not in table.columns:
            notes.append(f"covariate '{name}' is not in the clinical table: left out")
            continue
        kind = data.clinical.specs[name].kind
        column = table[name]
        if kind in ("number", "integer", "binary"):
            parts.append(column.astype(float).to_frame(name))
            continue
        if kind != "category":
            notes.append(f"covariate '{name}' ({kind}) cannot enter a Cox model: left out")
            continue
        counts = column.dropna().value_counts()
        if len(counts) < 2:
            notes.append(f"covariate '{name}' has fewer than 2 levels: left out")
            continue
        reference = sorted(counts[counts == counts.max()].index)[0]
        levels = sorted(level for level in counts.index if level != reference)
        safe = {level: "".join(ch if ch.isalnum() else "_" for ch in str(level).lower())
                for level in levels}
        dummies = pd.DataFrame({f"{name}_{safe[level]}": (column == level).astype(float)
                                for level in levels}, index=table.index)
        dummies[column.isna()] = np.nan
        parts.append(dummies)
        notes.append(f"covariate '{name}': reference level '{reference}'")
    design = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=table.index)
    return design, notes


def _drop_constant(frame: pd.DataFrame, keep: Iterable[str]) -> pd.DataFrame:
    fixed = {"time", "event", *keep}
    constant = [c for c in frame.columns if c not in fixed and frame[c].nunique() < 2]
    return frame.drop(columns=constant)


def clinical_model(data: AnalysisData, design: pd.DataFrame, *,
                   endpoints: Iterable[str] = ("os", "pfs"),
                   landmark_months: float | None = None) -> pd.DataFrame:
    """The clinical model alone (complete cases), one row per term and endpoint.

    Returns
    -------
    pandas.DataFrame
        ``endpoint, population, term, n, events, coef, hr, ci_low, ci_high, p, c_index``.
    """
    rows: list[dict] = []
    for endpoint in endpoints:
        for population, landmark in (("all", None), ("landmark", landmark_months)):
            if population == "landmark" and landmark is None:
                continue
            frame = _drop_constant(outcome(data.clinical, endpoint, landmark=landmark).join(
                design, how="inner").dropna(), [])
            if design.empty or frame.shape[1] <= 2 or frame["event"].sum() < 1:
                continue
            try:
                model = fit_cox(frame)
            except Exception:  # noqa: BLE001
                continue
            for term, summary in model.summary.iterrows():
                rows.append({"endpoint": endpoint, "population": population, "term": term,
                             "n": len(frame), "events": int(frame["event"].sum()),
                             "coef": summary["coef"], "hr": summary["exp(coef)"],
                             "ci_low": summary["exp(coef) lower 95%"],
                             "ci_high": summary["exp(coef) upper 95%"], "p": summary["p"],
                             "c_index": model.concordance_index_})
    return pd.DataFrame(rows, columns=["endpoint", "population", "term", "n", "events", "coef",
                                       "hr", "ci_low", "ci_high", "p", "c_index"])


MULTIVARIABLE_COLUMNS = ("endpoint", "feature", "timepoint", "landmark_months", "n", "events",
                         "covariates", "coef", "hr", "ci_low", "ci_high", "p", "q", "ph_p",
                         "ph_global_p", "c_clinical", "c_full", "delta_c", "lr_chi2", "lr_p",
                         "note")


def multivariable_cox(data: AnalysisData, design: pd.DataFrame, *,
                      endpoints: Iterable[str] = ("os", "pfs"), landmark_months: float = 1.5,
                      config: CoxConfig | None = None) -> pd.DataFrame:
    """Clinical model + each variable: adjusted effect and added value.

    For every variable and endpoint, both models are fitted on the same patients (complete
    cases of covariates and variable; landmark population for on-treatment variables):
    adjusted HR of the variable, its PH test and the global PH test, Harrell's C of the
    clinical and full model and their difference, and the likelihood-ratio test (1 df).

    Returns
    -------
    pandas.DataFrame
        ``MULTIVARIABLE_COLUMNS``; q is Benjamini-Hochberg over the adjusted p per endpoint.
    """
    config = config or CoxConfig()
    rows: list[dict] = []
    covariate_names = ", ".join(design.columns)
    for endpoint in endpoints:
        start = len(rows)
        for variable in data.variables:
            if variable.key in design.columns:
                continue  # a covariate is not its own added value
            landmark = _landmark(variable, landmark_months)
            frame = outcome(data.clinical, endpoint, landmark=landmark).join(
                design, how="inner").join(data.x[[variable.key]], how="inner").dropna()
            frame = _drop_constant(frame, [variable.key])
            row = {"endpoint": endpoint, "feature": variable.feature,
                   "timepoint": variable.timepoint,
                   "landmark_months": landmark if landmark is not None else 0.0,
                   "n": len(frame), "events": int(frame["event"].sum()),
                   "covariates": covariate_names, "note": ""}
            rows.append(row)
            problem = _too_little(frame, variable.key, config)
            if problem:
                row["note"] = problem
                continue
            try:
                full = fit_cox(frame)
                covariates = [c for c in frame.columns if c not in ("time", "event",
                                                                       variable.key)]
                base = fit_cox(frame.drop(columns=[variable.key])) if covariates else None
            except Exception as error:  # noqa: BLE001
                row["note"] = f"fit failed: {type(error).__name__}"
                continue
            summary = full.summary.loc[variable.key]
            ph = _ph_p(full, frame, config.ph_test_transform)
            if base is not None:
                lr = max(2.0 * (full.log_likelihood_ - base.log_likelihood_), 0.0)
                c_base = base.concordance_index_
            else:  # no covariates: the clinical model is the null model
                lr = float(full.log_likelihood_ratio_test().test_statistic)
                c_base = 0.5
            row.update(coef=summary["coef"], hr=summary["exp(coef)"],
                       ci_low=summary["exp(coef) lower 95%"],
                       ci_high=summary["exp(coef) upper 95%"], p=summary["p"],
                       ph_p=float(ph.get(variable.key, np.nan)),
                       ph_global_p=_global_ph(full, frame, config.ph_test_transform),
                       c_clinical=c_base, c_full=full.concordance_index_,
                       delta_c=full.concordance_index_ - c_base, lr_chi2=lr,
                       lr_p=float(chi2.sf(lr, 1)))
        block = rows[start:]
        q = bh_qvalues([r.get("p", np.nan) for r in block])
        for row, value in zip(block, q, strict=True):
            row["q"] = value
    return pd.DataFrame(rows, columns=list(MULTIVARIABLE_COLUMNS))


def _global_ph(model: CoxPHFitter, frame: pd.DataFrame, transform: str) -> float:
    """Global Schoenfeld test: chi-square summed over terms (approximation, df = terms)."""
    p = _ph_p(model, frame, transform)
    if p.empty:
        return float("nan")
    statistics = chi2.isf(p.clip(lower=1e-300).to_numpy(), 1)
    return float(chi2.sf(statistics.sum(), len(statistics)))


def cutpoint_table(data: AnalysisData, *, endpoints: Iterable[str] = ("os", "pfs"),
                   landmark_months: float = 1.5, config: CoxConfig | None = None
                   ) -> pd.DataFrame:
    """Median split and maximally selected log-rank cut-point per variable and endpoint.

    Returns
    -------
    pandas.DataFrame
        ``endpoint, feature, timepoint, n, events, median, median_logrank_p, cutpoint,
        maxstat, maxstat_p`` (Lausen-Schumacher corrected), ``maxstat_q`` (BH per endpoint),
        ``n_low, n_high, note``.
    """
    config = config or CoxConfig()
    rows: list[dict] = []
    for endpoint in endpoints:
        start = len(rows)
        for variable in data.variables:
            landmark = _landmark(variable, landmark_months)
            frame = outcome(data.clinical, endpoint, landmark=landmark).join(
                data.x[[variable.key]], how="inner").dropna()
            row = {"endpoint": endpoint, "feature": variable.feature,
                   "timepoint": variable.timepoint, "n": len(frame),
                   "events": int(frame["event"].sum()), "note": ""}
            rows.append(row)
            problem = _too_little(frame, variable.key, config)
            if problem:
                row["note"] = problem
                continue
            x = frame[variable.key].to_numpy()
            median = float(np.median(x))
            high = x > median
            if not high.any():  # many values at the median (e.g. binary): split at >= median
                high = x >= median
            row["median"] = median
            if 0 < high.sum() < len(x):
                row["median_logrank_p"] = logrank_test(
                    frame["time"][~high], frame["time"][high], frame["event"][~high],
                    frame["event"][high]).p_value
            try:
                result = maxstat_test(x, frame["time"].to_numpy(), frame["event"].to_numpy(),
                                      minprop=config.minprop, maxprop=config.maxprop)
            except ValueError as error:
                row["note"] = f"no cut-point: {error}"
                continue
            row.update(cutpoint=result.cutpoint, maxstat=result.statistic,
                       maxstat_p=result.p_value, n_low=result.n_low, n_high=result.n_high)
        block = rows[start:]
        q = bh_qvalues([r.get("maxstat_p", np.nan) for r in block])
        for row, value in zip(block, q, strict=True):
            row["maxstat_q"] = value
    return pd.DataFrame(rows, columns=["endpoint", "feature", "timepoint", "n", "events",
                                       "median", "median_logrank_p", "cutpoint", "maxstat",
                                       "maxstat_p", "maxstat_q", "n_low", "n_high", "note"])
