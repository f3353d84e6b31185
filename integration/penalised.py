"""Elastic-net Cox model over many baseline features (scikit-survival ``Coxnet``).

Features missing in more than ``max_missing_fraction`` of the patients are left out. Within
each cross-validation training fold the rest are median-imputed and standardised with that
fold's statistics only. The penalty is chosen by the mean out-of-fold Harrell's C over the
folds; that C (``cv_c_index``) reuses the folds that chose the penalty, so it is optimistic.
The honest estimate is ``nested_c_index``: nested cross-validation, where each outer fold's
penalty path and penalty are chosen by an inner cross-validation on its training patients only
(the outer test patients never see the tuning), the model refitted there and scored on the
outer test patients. ``apparent_c_index`` is the final model's C on the patients it was fitted
on (the most optimistic). Intervals are percentile bootstraps of the pooled out-of-fold (or
outer-fold) concordance. The final model is refitted on all patients at the chosen penalty;
its non-zero standardised coefficients are reported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from integration.config import ElasticNetConfig
from integration.frame import AnalysisData, outcome


@dataclass
class ElasticNetResult:
    """Penalised Cox model of one endpoint.

    Attributes
    ----------
    endpoint
        ``os`` or ``pfs``.
    n, events, n_features
        Patients, events and candidate features used.
    alpha
        Chosen penalty.
    cv_c_index
        Mean out-of-fold Harrell's C at ``alpha`` (the folds also chose ``alpha``: optimistic).
    c_low, c_high
        95% bootstrap interval of the pooled out-of-fold C.
    nested_c_index
        Mean outer-fold Harrell's C of nested cross-validation (tuning inside each outer
        training set only).
    nested_c_low, nested_c_high
        95% bootstrap interval of the pooled outer-fold C.
    apparent_c_index
        Harrell's C of the final model on the patients it was fitted on.
    coefficients
        ``feature, timepoint, coef`` (per SD) of the non-zero terms, by absolute size.
    note
        Why the model was not fitted (empty when it was).
    """

    endpoint: str
    n: int
    events: int
    n_features: int
    alpha: float = float("nan")
    cv_c_index: float = float("nan")
    c_low: float = float("nan")
    c_high: float = float("nan")
    nested_c_index: float = float("nan")
    nested_c_low: float = float("nan")
    nested_c_high: float = float("nan")
    apparent_c_index: float = float("nan")
    coefficients: pd.DataFrame | None = None
    note: str = ""

    def summary(self) -> dict:
        """One row for ``analysis/elastic_net.csv``."""
        return {"endpoint": self.endpoint, "n": self.n, "events": self.events,
                "n_features": self.n_features, "alpha": self.alpha,
                "cv_c_index": self.cv_c_index, "c_low": self.c_low, "c_high": self.c_high,
                "nested_c_index": self.nested_c_index, "nested_c_low": self.nested_c_low,
                "nested_c_high": self.nested_c_high, "apparent_c_index": self.apparent_c_index,
                "n_selected": 0 if self.coefficients is None else len(self.coefficients),
                "note": self.note}


def _prepare(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    median = np.nanmedian(train, axis=0)
    train = np.where(np.isnan(train), median, train)
    test = np.where(np.isnan(test), median, test)
    mean = train.mean(axis=0)
    sd = train.std(axis=0)
    sd[sd == 0] = 1.0
    return (train - mean) / sd, (test - mean) / sd


def _cindex(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    return float(concordance_index_censored(event, time, risk)[0])


def elastic_net_cox(data: AnalysisData, endpoint: str, *, config: ElasticNetConfig | None = None,
                    seed: int = 0) -> ElasticNetResult:
    """Cross-validated elastic-net Cox model on the baseline variables.

    Parameters
    ----------
    data
        The analysis frame (baseline and clinical-score variables are used).
    endpoint
        ``os`` or ``pfs``.
    config
        Penalty mix, path length, folds, bootstrap size, missingness limit.
    seed
        Seeds the folds and the bootstrap.

    Returns
    -------
    ElasticNetResult
    """
    config = config or ElasticNetConfig()
    keys = [v.key for v in data.variables if not v.landmark]
    frame = outcome(data.clinical, endpoint).join(data.x[keys], how="inner")
    frame = frame[frame[keys].notna().any(axis=1)] if keys else frame.iloc[:0]
    keep = [k for k in keys if frame[k].isna().mean() <= config.max_missing_fraction
            and frame[k].nunique() > 1]
    n, events = len(frame), int(frame["event"].sum())
    result = ElasticNetResult(endpoint, n, events, len(keep))
    if len(keep) < 2 or n < 20 or events < 2 * config.folds:
        result.note = (f"not fitted: needs >= 2 features, >= 20 patients and >= "
                       f"{2 * config.folds} events (has {len(keep)}, {n}, {events})")
        return result
    x = frame[keep].to_numpy(dtype=float)
    time = frame["time"].to_numpy(dtype=float)
    event = frame["event"].to_numpy().astype(bool)
    full_x, _ = _prepare(x, x[:1])
    tuned = _tune(x, time, event, config=config, seed=seed)
    if tuned is None:
        result.note = "not fitted: every fold failed"
        return result
    path, alphas, best, mean_c, risk = tuned
    result.alpha = float(alphas[best])
    result.cv_c_index = float(mean_c[best])
    result.c_low, result.c_high = _bootstrap(event, time, risk, config.bootstrap, seed)
    result.apparent_c_index = _cindex(event, time, path.predict(full_x, alpha=alphas[best]))
    nested = _nested(x, time, event, config=config, seed=seed)
    if nested is not None:
        result.nested_c_index = nested[0]
        result.nested_c_low, result.nested_c_high = _bootstrap(event, time, nested[1],
                                                               config.bootstrap, seed)
    coef = path.coef_[:, best]
    by_key = {v.key: v for v in data.variables}
    rows = [{"feature": by_key[k].feature, "timepoint": by_key[k].timepoint,
             "label": by_key[k].label, "coef_per_sd": float(c)}
            for k, c in zip(keep, coef, strict=True) if c != 0]
    table = pd.DataFrame(rows, columns=["feature", "timepoint", "label", "coef_per_sd"])
    result.coefficients = table.reindex(table["coef_per_sd"].abs().sort_values(
        ascending=False).index).reset_index(drop=True)
    return result


def _tune(x: np.ndarray, time: np.ndarray, event: np.ndarray, *, config: ElasticNetConfig,
          seed: int) -> tuple[CoxnetSurvivalAnalysis, np.ndarray, int, np.ndarray,
                              np.ndarray] | None:
    """Penalty path on ``x``, penalty chosen by cross-validated Harrell's C.

    Returns the path fitted on all of ``x`` (standardised), the penalties, the chosen index,
    the mean fold C per penalty and the out-of-fold risk at the chosen penalty; None when every
    fold failed.
    """
    y = Surv.from_arrays(event, time)
    full_x, _ = _prepare(x, x[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = CoxnetSurvivalAnalysis(l1_ratio=config.l1_ratio, n_alphas=config.n_alphas,
                                      alpha_min_ratio=0.05).fit(full_x, y)
    alphas = path.alphas_
    folds = StratifiedKFold(n_splits=config.folds, shuffle=True, random_state=seed)
    oof = np.full((len(x), len(alphas)), np.nan)
    fold_c = np.full((config.folds, len(alphas)), np.nan)
    for f, (train, test) in enumerate(folds.split(x, event)):
        x_train, x_test = _prepare(x[train], x[test])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = CoxnetSurvivalAnalysis(l1_ratio=config.l1_ratio, alphas=alphas).fit(
                    x_train, y[train])
        except (ArithmeticError, ValueError):
            continue
        for a, alpha in enumerate(model.alphas_):
            risk = model.predict(x_test, alpha=alpha)
            oof[test, a] = risk
            if event[test].any():
                fold_c[f, a] = _cindex(event[test], time[test], risk)
    if np.isnan(fold_c).all():
        return None
    mean_c = np.nanmean(fold_c, axis=0)
    best = int(np.nanargmax(mean_c))
    return path, alphas, best, mean_c, oof[:, best]


def _nested(x: np.ndarray, time: np.ndarray, event: np.ndarray, *, config: ElasticNetConfig,
            seed: int) -> tuple[float, np.ndarray] | None:
    """Nested cross-validation: tune inside each outer training set, score its test set.

    Returns the mean outer-fold C and the pooled outer-fold risk (NaN where a fold failed).
    The outer split uses ``seed + 1`` so that it differs from the tuning folds.
    """
    outer = StratifiedKFold(n_splits=config.folds, shuffle=True, random_state=seed + 1)
    risk = np.full(len(x), np.nan)
    fold_c = []
    for train, test in outer.split(x, event):
        if int(event[train].sum()) < config.folds:
            continue
        tuned = _tune(x[train], time[train], event[train], config=config, seed=seed)
        if tuned is None:
            continue
        path, alphas, best, _, _ = tuned
        # the path was fitted on the outer training set standardised by its own statistics
        _, x_test = _prepare(x[train], x[test])
        risk[test] = path.predict(x_test, alpha=alphas[best])
        if event[test].any():
            fold_c.append(_cindex(event[test], time[test], risk[test]))
    if not fold_c:
        return None
    return float(np.mean(fold_c)), risk


def _bootstrap(event: np.ndarray, time: np.ndarray, risk: np.ndarray, resamples: int,
               seed: int) -> tuple[float, float]:
    """Percentile 95% interval of Harrell's C over bootstrap resamples of the patients."""
    rng = np.random.default_rng(seed)
    n = len(risk)
    boot = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        if event[pick].any() and not np.isnan(risk[pick]).any():
            boot.append(_cindex(event[pick], time[pick], risk[pick]))
    if not boot:
        return float("nan"), float("nan")
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(low), float(high)
