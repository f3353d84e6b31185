"""Objective response (CR+PR vs SD+PD) and disease control (CR+PR+SD vs PD) per feature.

For every variable: Mann-Whitney U test, logistic-regression odds ratio (per unit and per SD,
statsmodels), and ROC AUC with a DeLong 95% confidence interval (as R's pROC). Patients with
best response NE are left out. q values are Benjamini-Hochberg over the Mann-Whitney p values
per endpoint.

On-treatment variables (on-treatment samples, changes from baseline; ``Variable.landmark``)
are analysed with the landmark, as the survival analyses are: only patients still on study,
progression-free and followed, at ``landmark_months`` (``pfs_time`` > landmark). A patient who
progressed before the on-treatment biopsy is almost always a non-responder, and an on-treatment
value that exists for such a patient (a late biopsy, a blood draw after progression) is
measured after the outcome it would predict; keeping them credits the feature with the early
progressions (the response analogue of immortal-time bias).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import mannwhitneyu, norm

from integration.config import ResponseConfig
from integration.fdr import bh_qvalues
from integration.frame import AnalysisData

RESPONSE_ENDPOINTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "orr": (frozenset({"CR", "PR"}), frozenset({"SD", "PD"})),
    "dcr": (frozenset({"CR", "PR", "SD"}), frozenset({"PD"})),
}
RESPONSE_COLUMNS = ("endpoint", "feature", "timepoint", "n", "n_pos", "n_neg", "median_pos",
                    "median_neg", "mw_p", "q", "or", "or_ci_low", "or_ci_high", "or_per_sd",
                    "logit_p", "auc", "auc_ci_low", "auc_ci_high", "note")


def response_labels(best_response: pd.Series, endpoint: str) -> pd.Series:
    """1 (responder), 0 (non-responder) or missing (NE, unknown) for ``orr`` or ``dcr``."""
    positive, negative = RESPONSE_ENDPOINTS[endpoint]
    labels = pd.Series(np.nan, index=best_response.index)
    labels[best_response.isin(positive)] = 1.0
    labels[best_response.isin(negative)] = 0.0
    return labels


def auc_delong(scores: np.ndarray, labels: np.ndarray, *, level: float = 0.95
               ) -> tuple[float, float, float]:
    """ROC AUC of ``scores`` for ``labels`` (1 = positive) with DeLong's confidence interval.

    Returns
    -------
    tuple of float
        AUC, lower and upper bound (clipped to [0, 1]).

    Examples
    --------
    >>> auc_delong(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))[0]
    0.75
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs both positives and negatives")
    psi = (pos[:, None] > neg[None, :]).astype(float) + 0.5 * (pos[:, None] == neg[None, :])
    v10 = psi.mean(axis=1)
    v01 = psi.mean(axis=0)
    auc = float(v10.mean())
    variance = 0.0
    if len(pos) > 1:
        variance += float(np.var(v10, ddof=1)) / len(pos)
    if len(neg) > 1:
        variance += float(np.var(v01, ddof=1)) / len(neg)
    half = norm.ppf(0.5 + level / 2) * np.sqrt(variance)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def on_study_at(data: AnalysisData, landmark_months: float) -> pd.Series:
    """Whether each patient was still on study at the landmark: progression-free and followed
    beyond it (``pfs_time > landmark_months``); the set an on-treatment feature is analysed in.
    """
    return data.clinical.data["pfs_time"].astype(float) > landmark_months


def response_table(data: AnalysisData, *, config: ResponseConfig | None = None,
                   landmark_months: float | None = None) -> pd.DataFrame:
    """Response statistics for every variable, ORR and DCR.

    Parameters
    ----------
    data
        The analysis frame.
    config
        Minimum patients per group.
    landmark_months
        On-treatment variables are analysed only in patients on study at this time
        (:func:`on_study_at`); the note says how many were left out. None: no landmark.

    Returns
    -------
    pandas.DataFrame
        ``RESPONSE_COLUMNS``.
    """
    config = config or ResponseConfig()
    best = data.clinical.data["best_response"]
    on_study = (on_study_at(data, landmark_months) if landmark_months is not None else None)
    rows: list[dict] = []
    for endpoint in RESPONSE_ENDPOINTS:
        labels = response_labels(best, endpoint)
        start = len(rows)
        for variable in data.variables:
            frame = pd.DataFrame({"x": data.x[variable.key], "y": labels}).dropna()
            notes = []
            if on_study is not None and variable.landmark:
                kept = frame[on_study.reindex(frame.index, fill_value=False)]
                if len(kept) < len(frame):
                    notes.append(f"landmark {landmark_months:g} mo: {len(frame) - len(kept)} "
                                 "patient(s) progressed or left the study before it, left out")
                frame = kept
            pos = frame.loc[frame["y"] == 1, "x"]
            neg = frame.loc[frame["y"] == 0, "x"]
            row = {"endpoint": endpoint, "feature": variable.feature,
                   "timepoint": variable.timepoint, "n": len(frame), "n_pos": len(pos),
                   "n_neg": len(neg)}
            rows.append(row)
            if min(len(pos), len(neg)) < config.min_per_group:
                notes.append(f"fewer than {config.min_per_group} patients in a group")
            elif frame["x"].nunique() < 2:
                notes.append("constant feature")
            else:
                row.update(median_pos=float(pos.median()), median_neg=float(neg.median()),
                           mw_p=float(mannwhitneyu(pos, neg, alternative="two-sided").pvalue))
                auc, low, high = auc_delong(frame["x"].to_numpy(), frame["y"].to_numpy())
                row.update(auc=auc, auc_ci_low=low, auc_ci_high=high)
                fit = _logistic(frame)
                notes += [fit.pop("note")] if "note" in fit else []
                row.update(fit)
            row["note"] = "; ".join(notes)
        block = rows[start:]
        q = bh_qvalues([r.get("mw_p", np.nan) for r in block])
        for row, value in zip(block, q, strict=True):
            row["q"] = value
    return pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS))


def _logistic(frame: pd.DataFrame) -> dict:
    design = sm.add_constant(frame[["x"]].astype(float))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.Logit(frame["y"].astype(float), design).fit(disp=0, maxiter=100)
    except Exception as error:  # noqa: BLE001 - separation etc. is reported, not raised
        return {"note": f"logistic fit failed: {type(error).__name__}"}
    coef = float(fit.params["x"])
    low, high = fit.conf_int().loc["x"]
    if not np.isfinite(fit.bse["x"]) or fit.bse["x"] > 10 or abs(coef) > 15:
        return {"note": "logistic fit unstable (separation?)"}
    sd = float(frame["x"].std(ddof=1))
    return {"or": float(np.exp(coef)), "or_ci_low": float(np.exp(low)),
            "or_ci_high": float(np.exp(high)), "or_per_sd": float(np.exp(coef * sd)),
            "logit_p": float(fit.pvalues["x"])}
