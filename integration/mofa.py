"""Multi-omics factor analysis (MOFA+; Argelaguet R et al., Genome Biol 2020;21:111) of the
baseline views, and subtypes from its factors.

Views are built from the analysis frame's baseline blocks: ``pathology`` (H&E, IHC, mIF slide
features), ``blood`` (flow, ELISA, scRNA-seq), ``rna`` (tumour RNA-seq) and, with
``mofa.include_clinical``, ``clinical`` (the derived clinical scores); features of another
modality form a view named after it. A patient without any
value in a view is missing from that view (MOFA+ allows it: the view's likelihood simply has
no term for the patient). Within a view, features missing in more than
``mofa.max_missing_fraction`` of the view's patients or constant are left out; MOFA+ centres
each feature and scales each view to unit total variance (``scale_views``) so that a view with
many features does not dominate. The model (mofapy2, spike-and-slab and ARD priors on the
weights) is seeded by ``analysis.seed``; factors explaining less than
``mofa.min_variance_pct`` of every view's variance are dropped.

Subtypes from the factors: k-means (k = ``k_min``..``k_max``) on the standardised factors;
each k's stability is the mean adjusted Rand index between the full clustering and the
clusterings of ``resamples`` 80% subsamples (on the patients they share); the most stable k is
kept. The consensus-clustering subtypes (:mod:`integration.subtypes`) stay as a comparison.

On-treatment samples (``feature@on_treatment`` of the same view features) are too few to fit
a model of their own; they are **projected** onto the baseline factors: centred and scaled
with the baseline's feature means and view scales, each sample's factor values are the
posterior mean of MOFA+'s model for a new sample given the weights and noise precisions,
``z = (W' T W + I)^-1 W' T y`` over the features it has (a standard-normal prior on the
factors, as MOFA+). Baseline and on-treatment factors are then on one scale, so their
difference is a change in the same axes (:func:`project_samples`).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from integration.config import MofaConfig
from integration.frame import AnalysisData

VIEW_OF_MODALITY = {"he": "pathology", "ihc": "pathology", "mif": "pathology",
                    "flow": "blood", "elisa": "blood", "scrna": "blood", "rnaseq": "rna"}
FACTOR_PREFIX = "mofa_f"


@dataclass
class MofaResult:
    """A fitted MOFA+ model's outputs.

    Attributes
    ----------
    factors
        Patients (index ``patient_id``) x ``mofa_f1``, ``mofa_f2``, ... (baseline).
    factors_on_treatment
        The same factors for patients with on-treatment values in any view, projected onto
        the baseline model (:func:`project_samples`); empty when none.
    variance
        ``view, factor, r2_pct``: variance of each view explained by each factor (%).
    loadings
        ``factor, view, key, feature, label, weight, rank`` for the top ``top_loadings``
        features per factor and view, by absolute weight.
    views
        ``view -> feature keys`` used.
    subtypes
        ``patient_id -> M1, M2, ...`` (largest first); empty when not found.
    stability
        ``k, stability`` (mean adjusted Rand index over subsamples) per k tried.
    note
        Why the model was not fitted (empty when it was).
    """

    factors: pd.DataFrame = field(default_factory=pd.DataFrame)
    factors_on_treatment: pd.DataFrame = field(default_factory=pd.DataFrame)
    variance: pd.DataFrame = field(default_factory=pd.DataFrame)
    loadings: pd.DataFrame = field(default_factory=pd.DataFrame)
    views: dict[str, list[str]] = field(default_factory=dict)
    subtypes: pd.Series = field(default_factory=lambda: pd.Series(dtype=str))
    stability: pd.DataFrame = field(default_factory=pd.DataFrame)
    note: str = ""

    def dictionary(self) -> pd.DataFrame:
        """Data-dictionary rows (``name, label, unit, modality, method, config_keys,
        source``) of the factor columns."""
        rows = []
        for column in self.factors.columns:
            part = self.variance[self.variance["factor"] == column]
            explained = ", ".join(f"{r.view} {r.r2_pct:.1f}%" for r in part.itertuples())
            rows.append({"name": column, "label": f"MOFA+ factor {column[len(FACTOR_PREFIX):]} "
                         f"(variance explained: {explained})", "unit": "factor score",
                         "modality": "mofa", "method": "MOFA+ (mofapy2), baseline views",
                         "config_keys": "analysis.mofa", "source": "analysis/mofa_factors.csv"})
        return pd.DataFrame(rows, columns=["name", "label", "unit", "modality", "method",
                                           "config_keys", "source"])


def mofa_views(data: AnalysisData, config: MofaConfig) -> dict[str, pd.DataFrame]:
    """Patients x features per view, filtered for missingness and constant features.

    Rows are the patients with at least one value in the view; views with fewer than two
    features left are dropped.
    """
    keys: dict[str, list[str]] = {}
    for modality, block in data.blocks.items():
        # arms' modalities map onto the three views; anything else is a view of its own
        keys.setdefault(VIEW_OF_MODALITY.get(modality, modality), []).extend(block)
    if config.include_clinical:
        keys["clinical"] = [v.key for v in data.variables if v.timepoint == "clinical"]
    views: dict[str, pd.DataFrame] = {}
    for view, columns in keys.items():
        block = data.x[columns]
        block = block[block.notna().any(axis=1)]
        block = block.loc[:, (block.isna().mean() <= config.max_missing_fraction)
                          & (block.nunique() > 1)]
        if block.shape[1] >= 2:
            views[view] = block
    return views


def fit_mofa(data: AnalysisData, *, config: MofaConfig | None = None, seed: int = 0
             ) -> MofaResult:
    """Fit MOFA+ on the baseline views and cluster its factors.

    Parameters
    ----------
    data
        The analysis frame (its ``blocks`` and, optionally, clinical scores).
    config
        Factors, iterations, views, subtype range.
    seed
        Seeds MOFA+'s initialisation and the clustering.

    Returns
    -------
    MofaResult
    """
    config = config or MofaConfig()
    views = mofa_views(data, config)
    patients = sorted(set().union(*(v.index for v in views.values()))) if views else []
    if not views or len(patients) < 10:
        return MofaResult(note=f"not done: needs a view with >= 2 features and >= 10 patients "
                               f"(has {len(views)} view(s), {len(patients)} patients)")
    matrices = [[views[v].reindex(patients).to_numpy(dtype=float)] for v in views]
    factors, weights, r2, tau = _run(matrices, list(views), patients, views, config, seed)
    keep = np.flatnonzero((r2 >= config.min_variance_pct).any(axis=0))
    if keep.size == 0:
        return MofaResult(note=f"no factor explains >= {config.min_variance_pct}% of a view")
    # order by total variance explained; sign: positive mean weight in the first view
    keep = keep[np.argsort(-r2[:, keep].sum(axis=0), kind="stable")]
    names = [f"{FACTOR_PREFIX}{i + 1}" for i in range(keep.size)]
    signs = np.array([1.0 if weights[0][:, k].sum() >= 0 else -1.0 for k in keep])
    table = pd.DataFrame(factors[:, keep] * signs, index=pd.Index(patients, name="patient_id"),
                         columns=names)
    variance = pd.DataFrame([{"view": view, "factor": name, "r2_pct": float(r2[v, k])}
                             for v, view in enumerate(views)
                             for name, k in zip(names, keep, strict=True)])
    by_key = {var.key: var for var in data.variables}
    rows = []
    for v, view in enumerate(views):
        columns = list(views[view].columns)
        for name, k, sign in zip(names, keep, signs, strict=True):
            w = weights[v][:, k] * sign
            for rank, j in enumerate(np.argsort(-np.abs(w), kind="stable")[:config.top_loadings]):
                variable = by_key.get(columns[j])
                rows.append({"factor": name, "view": view, "key": columns[j],
                             "feature": variable.feature if variable else columns[j],
                             "label": variable.label if variable else "",
                             "weight": float(w[j]), "rank": rank + 1})
    on_treatment = _on_treatment_views(data, views)
    projected = pd.DataFrame(columns=names)
    if on_treatment:
        z = project_samples(
            [on_treatment[v].to_numpy(dtype=float) for v in views],
            [views[v].to_numpy(dtype=float) for v in views],
            [weights[i][:, keep] * signs for i in range(len(views))], tau)
        index = next(iter(on_treatment.values())).index
        projected = pd.DataFrame(z, index=index.rename("patient_id"), columns=names)
        projected = projected[np.isfinite(z).all(axis=1)]
    result = MofaResult(table, projected, variance, pd.DataFrame(rows),
                        {v: list(views[v].columns) for v in views})
    result.subtypes, result.stability = factor_subtypes(table, config=config, seed=seed)
    return result


def _on_treatment_views(data: AnalysisData, views: dict[str, pd.DataFrame]
                        ) -> dict[str, pd.DataFrame]:
    """Each view's features on treatment (``key@on_treatment``; absent ones all missing), for
    the patients with at least one on-treatment value in any view; {} when none."""
    out = {}
    for view, block in views.items():
        columns = {f"{key}@on_treatment": key for key in block.columns}
        present = [c for c in columns if c in data.x.columns]
        out[view] = data.x[present].rename(columns=columns).reindex(columns=block.columns)
    if not out:
        return {}
    has = np.logical_or.reduce([frame.notna().any(axis=1).to_numpy() for frame in out.values()])
    if not has.any():
        return {}
    return {view: frame[has] for view, frame in out.items()}


def project_samples(new: list[np.ndarray], baseline: list[np.ndarray],
                    weights: list[np.ndarray], tau: list[np.ndarray]) -> np.ndarray:
    """Factor values of new samples under a fitted MOFA+ model (posterior mean given the
    weights, noise precisions and a standard-normal prior).

    Parameters
    ----------
    new
        Per view, new samples x features (NaN = missing), on the original scale.
    baseline
        Per view, the training samples x features the model was fitted on (for MOFA+'s
        centring and view scaling).
    weights
        Per view, features x K expected weights.
    tau
        Per view, the expected noise precision of each feature.

    Returns
    -------
    numpy.ndarray
        Samples x K; NaN for a sample with no value in any view.

    Examples
    --------
    >>> w = [np.array([[1.0], [2.0]])]
    >>> train = [np.array([[-1.0, -2.0], [1.0, 2.0]])]
    >>> z = project_samples([np.array([[1.0, 2.0]])], train, w, [np.array([1e6, 1e6])])
    >>> round(float(z[0, 0] * np.nanstd(train[0])), 3)  # y = z w on the scaled data
    1.0
    """
    k = weights[0].shape[1]
    n = new[0].shape[0]
    precision = np.repeat(np.eye(k)[None], n, axis=0)
    rhs = np.zeros((n, k))
    seen = np.zeros(n, dtype=bool)
    for y, train, w, t in zip(new, baseline, weights, tau, strict=True):
        mean = np.nanmean(train, axis=0)
        scale = np.nanstd(train - mean)
        centred = (y - mean) / (scale if scale > 0 else 1.0)
        observed = np.isfinite(centred)
        seen |= observed.any(axis=1)
        values = np.where(observed, centred, 0.0) * t  # T y over observed features
        rhs += values @ w
        for i in range(n):
            wi = w[observed[i]] * t[observed[i], None]
            precision[i] += w[observed[i]].T @ wi
    z = np.linalg.solve(precision, rhs[..., None])[..., 0]
    z[~seen] = np.nan
    return z


def _run(matrices: list[list[np.ndarray]], view_names: list[str], patients: list[str],
         views: dict[str, pd.DataFrame], config: MofaConfig, seed: int
         ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Train mofapy2; returns factors (patients x K), weights per view (features x K), the
    variance explained (views x K, %) and the noise precision per view (features)."""
    from mofapy2.run.entry_point import entry_point  # imported here: optional at import time

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = entry_point()
        model.set_data_options(scale_views=True, scale_groups=False)
        model.set_data_matrix(matrices, views_names=view_names, groups_names=["baseline"],
                              samples_names=[list(patients)],
                              features_names=[list(views[v].columns) for v in view_names])
        # MOFA+ starts from a PCA of the concatenated views: no more factors than columns
        n_features = sum(views[v].shape[1] for v in view_names)
        factors = max(1, min(config.factors, n_features, len(patients) - 1))
        model.set_model_options(factors=factors, spikeslab_weights=True,
                                ard_weights=True)
        model.set_train_options(iter=config.iterations, convergence_mode="fast", seed=seed,
                                verbose=False, quiet=True, dropR2=None)
        model.build()
        model.run()
        expectations = model.model.getExpectations()
        r2 = model.model.calculate_variance_explained()[0]  # group 'baseline': views x K
    factors = np.asarray(expectations["Z"]["E"], dtype=float)
    weights = [np.asarray(w["E"], dtype=float) for w in expectations["W"]]
    # Tau's expectation is stored per sample and feature (constant over samples)
    tau = [np.asarray(t["E"] if isinstance(t, dict) else t, dtype=float)
           .reshape(-1, w.shape[0]).mean(axis=0)
           for t, w in zip(expectations["Tau"], weights, strict=True)]
    return factors, weights, 100.0 * np.asarray(r2, dtype=float), tau


def factor_subtypes(factors: pd.DataFrame, *, config: MofaConfig, seed: int
                    ) -> tuple[pd.Series, pd.DataFrame]:
    """K-means subtypes of the standardised factors, k chosen by subsample stability.

    Returns
    -------
    tuple
        ``patient_id -> M1, M2, ...`` (M1 the largest) and ``k, stability`` per k.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = pd.DataFrame(np.r_[rng.normal(-3, 1, (20, 2)), rng.normal(3, 1, (20, 2))])
    >>> labels, table = factor_subtypes(f, config=MofaConfig(resamples=10), seed=0)
    >>> float(table.set_index("k").loc[2, "stability"]), labels.nunique()
    (1.0, 2)
    """
    values = factors.to_numpy(dtype=float)
    sd = values.std(axis=0)
    values = (values - values.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    n = len(values)
    rng = np.random.default_rng(seed)
    rows, fits = [], {}
    for k in range(config.k_min, min(config.k_max, n // 3) + 1):
        full = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(values)
        scores = []
        for r in range(config.resamples):
            pick = np.sort(rng.choice(n, size=max(int(0.8 * n), k + 1), replace=False))
            part = KMeans(n_clusters=k, n_init=5, random_state=seed + r).fit_predict(
                values[pick])
            scores.append(adjusted_rand_score(full[pick], part))
        rows.append({"k": k, "stability": float(np.mean(scores)),
                     "stability_sd": float(np.std(scores))})
        fits[k] = full
    table = pd.DataFrame(rows, columns=["k", "stability", "stability_sd"])
    if table.empty:
        return pd.Series(dtype=str, name="subtype"), table
    best = int(table.sort_values(["stability", "k"], ascending=[False, True]).iloc[0]["k"])
    order = pd.Series(fits[best]).value_counts().index
    rename = {c: f"M{i + 1}" for i, c in enumerate(order)}
    labels = pd.Series([rename[c] for c in fits[best]], index=factors.index, name="subtype")
    return labels, table
