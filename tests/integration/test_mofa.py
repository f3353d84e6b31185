"""MOFA+ (mofapy2) views, factors, variance explained and factor subtypes.

A planted two-view structure (a latent variable shared by a 12-feature pathology view and a
30-feature RNA view, RNA missing for a quarter of the patients) must come out as the first
factor, explaining most of both views, for the patients missing a view too; the fit is seeded.
Features without shared structure (the SYNTHETIC study's) give no active factor and a note.
The whole path through ``hccbio analyze`` on real data is in test_icb_liu.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mofapy2")

from integration.clinical import read_clinical  # noqa: E402
from integration.config import MofaConfig  # noqa: E402
from integration.frame import build_analysis_data, read_features  # noqa: E402
from integration.integrate import run_integration  # noqa: E402
from integration.mofa import fit_mofa, mofa_views  # noqa: E402
from integration.scores import derive_scores  # noqa: E402
from integration.synthetic import synthetic_study  # noqa: E402

MOFA = MofaConfig(factors=4, resamples=10, k_max=3, iterations=500)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    paths = synthetic_study(tmp_path_factory.mktemp("mofa"), n_patients=60, seed=2)
    run_integration(paths["manifest"], paths["out"])
    features = read_features(paths["out"] / "features.csv")
    wide, dictionary = features.wide, features.dictionary
    clinical = derive_scores(read_clinical(paths["clinical"]))
    return build_analysis_data(wide, clinical, dictionary=dictionary)


@pytest.fixture(scope="module")
def planted(synthetic_data):
    rng = np.random.default_rng(9)
    patients = synthetic_data.x.index
    latent = rng.standard_normal(len(patients))
    x = pd.DataFrame(index=patients)
    blocks: dict[str, list[str]] = {"he": [], "rnaseq": []}
    for modality, n_features in (("he", 12), ("rnaseq", 30)):
        loadings = rng.uniform(0.5, 1.5, n_features) * rng.choice([-1, 1], n_features)
        values = latent[:, None] * loadings + 0.7 * rng.standard_normal((len(patients),
                                                                         n_features))
        for j in range(n_features):
            key = f"{modality}_g{j}"
            x[key] = values[:, j]
            blocks[modality].append(key)
    x.loc[patients[:15], blocks["rnaseq"]] = np.nan  # RNA missing for a quarter
    return replace(synthetic_data, x=x, blocks=blocks, variables=[]), latent


def test_planted_shared_factor_is_recovered_with_a_missing_view(planted):
    data, latent = planted
    views = mofa_views(data, MOFA)
    assert {k: v.shape for k, v in views.items()} == {"pathology": (60, 12), "rna": (45, 30)}
    fit = fit_mofa(data, config=MOFA, seed=1)
    assert fit.note == ""
    assert len(fit.factors) == 60  # patients without RNA keep a factor score
    assert abs(np.corrcoef(fit.factors["mofa_f1"], latent)[0, 1]) > 0.95
    gone = data.x.index[:15]
    assert abs(np.corrcoef(fit.factors.loc[gone, "mofa_f1"], latent[:15])[0, 1]) > 0.9
    first = fit.variance[fit.variance["factor"] == "mofa_f1"].set_index("view")["r2_pct"]
    assert (first > 50).all()  # both views load on the shared factor
    dictionary = fit.dictionary()
    assert list(dictionary["name"]) == list(fit.factors.columns)
    assert dictionary["label"].str.contains("variance explained").all()
    top = fit.loadings[(fit.loadings["factor"] == "mofa_f1") & (fit.loadings["rank"] == 1)]
    assert set(top["view"]) == {"pathology", "rna"}
    assert not fit.subtypes.empty and set(fit.stability["k"]) == {2, 3}


def test_on_treatment_samples_are_projected_onto_the_baseline_factors(planted):
    """SYNTHETIC on-treatment values from the same loadings with a new latent value (shifted
    by +1 for every patient, as a treatment effect): their projected factor follows it, on
    the baseline factor's scale, for patients with only one view on treatment too."""
    data, latent = planted
    rng = np.random.default_rng(11)
    baseline = fit_mofa(data, config=MOFA, seed=1)
    patients = data.x.index[:40]  # 40 of 60 patients have an on-treatment sample
    later = latent[:40] + 1.0 + 0.3 * rng.standard_normal(40)
    x = data.x.copy()
    for modality in ("he", "rnaseq"):
        keys = data.blocks[modality]
        # the loadings, recovered from the baseline data by least squares on the latent
        values = data.x[keys].to_numpy()
        ok = ~np.isnan(values).any(axis=1)
        loadings = np.linalg.lstsq(latent[ok, None], values[ok], rcond=None)[0][0]
        noise = 0.7 * rng.standard_normal((40, len(keys)))
        on = pd.DataFrame(later[:, None] * loadings + noise, index=patients,
                          columns=[f"{k}@on_treatment" for k in keys])
        if modality == "rnaseq":
            on.iloc[:10] = np.nan  # ten patients only have the pathology view on treatment
        x = x.join(on)
    fit = fit_mofa(replace(data, x=x), config=MOFA, seed=1)
    pd.testing.assert_frame_equal(fit.factors, baseline.factors)  # the fit is baseline only
    projected = fit.factors_on_treatment["mofa_f1"]
    assert list(projected.index) == list(patients)
    sign = np.sign(np.corrcoef(fit.factors["mofa_f1"], latent)[0, 1])
    assert np.corrcoef(projected, later)[0, 1] * sign > 0.9
    assert np.corrcoef(projected[:10], later[:10])[0, 1] * sign > 0.85
    # one scale: the shift of +1 in the latent is a shift of about one latent SD's worth of
    # factor (the baseline factor's slope on the latent), not an arbitrary rescaling
    slope = np.polyfit(latent, fit.factors["mofa_f1"], 1)[0]
    change = (projected - fit.factors.loc[patients, "mofa_f1"]).mean()
    assert change == pytest.approx(slope * 1.0, rel=0.35)
    # in the analysis: on-treatment factor variables (landmark) and rows of mofa_factors.csv
    from integration.analyze import _mofa_tables, _with_factors

    analysed = _with_factors(replace(data, x=x), fit)
    variable = next(v for v in analysed.variables if v.key == "mofa_f1@on_treatment")
    assert variable.timepoint == "on_treatment" and variable.landmark
    table = _mofa_tables(analysed, fit, ["os"], None)["mofa_factors"]
    assert table["timepoint"].value_counts().to_dict() == {"baseline": 60, "on_treatment": 40}


def test_mofa_is_seeded(planted):
    data, _ = planted
    first, second = fit_mofa(data, config=MOFA, seed=4), fit_mofa(data, config=MOFA, seed=4)
    pd.testing.assert_frame_equal(first.factors, second.factors)
    pd.testing.assert_frame_equal(first.variance, second.variance)
    pd.testing.assert_series_equal(first.subtypes, second.subtypes)


def test_no_shared_structure_gives_a_note(synthetic_data):
    fit = fit_mofa(synthetic_data, config=MOFA, seed=1)
    assert fit.factors.empty and "no factor explains" in fit.note
