"""Cox models and cut-points on real data (rossi) against lifelines and R's maxstat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.statistics import proportional_hazard_test
from statsmodels.stats.multitest import multipletests

from integration.clinical import read_clinical
from integration.config import CoxConfig
from integration.cutpoint import logrank_scores, maxstat_test, p_lausen92
from integration.fdr import bh_qvalues
from integration.frame import Variable, build_analysis_data, outcome, read_features
from integration.scores import derive_scores
from integration.survival import (
    cutpoint_table,
    design_covariates,
    multivariable_cox,
    univariate_cox,
)

ROSSI_FEATURES = ("prio", "wexp", "mar", "paro", "race")  # as laid out in conftest.rossi_study


@pytest.fixture(scope="module")
def rossi_data(rossi_study):
    features = read_features(rossi_study / "features.csv")
    wide, dictionary = features.wide, features.dictionary
    clinical = derive_scores(read_clinical(rossi_study / "clinical.csv"))
    return build_analysis_data(wide, clinical, dictionary=dictionary)


def test_qc_bookkeeping_columns_are_not_candidate_biomarkers(rossi_study):
    """Areas before QC / under artefacts, excluded cells and automatic thresholds stay in
    features.csv for provenance, but the analysis does not test them."""
    features = read_features(rossi_study / "features.csv")
    wide, dictionary = features.wide, features.dictionary
    wide = wide.assign(he_tumour_raw_mm2=wide["prio"], he_n_cells_excl=wide["prio"],
                       d_he_tumour_excl_mm2=wide["prio"], ihc_ki67_pct_auto=wide["prio"])
    clinical = derive_scores(read_clinical(rossi_study / "clinical.csv"))
    data = build_analysis_data(wide, clinical, dictionary=dictionary)
    names = {v.feature for v in data.variables}
    assert "prio" in names
    assert not names & {"he_tumour_raw_mm2", "he_n_cells_excl", "d_he_tumour_excl_mm2",
                        "ihc_ki67_pct_auto"}
    assert any("4 QC bookkeeping" in note for note in data.notes)


def test_univariate_cox_equals_lifelines(rossi, rossi_data):
    table = univariate_cox(rossi_data, endpoints=["os"]).set_index("feature")
    assert set(ROSSI_FEATURES) <= set(table.index)
    for feature in ROSSI_FEATURES:
        direct = CoxPHFitter().fit(rossi[["week", "arrest", feature]], "week", "arrest")
        ref = direct.summary.loc[feature]
        row = table.loc[feature]
        assert row["n"] == 432 and row["events"] == 114
        np.testing.assert_allclose(
            [row["coef"], row["se"], row["hr"], row["ci_low"], row["ci_high"], row["p"]],
            [ref["coef"], ref["se(coef)"], ref["exp(coef)"], ref["exp(coef) lower 95%"],
             ref["exp(coef) upper 95%"], ref["p"]], rtol=1e-8)
        assert row["hr_per_sd"] == pytest.approx(
            np.exp(ref["coef"] * rossi[feature].std(ddof=1)), rel=1e-10)
        assert row["c_index"] == pytest.approx(direct.concordance_index_, rel=1e-10)
        ph = proportional_hazard_test(direct, rossi[["week", "arrest", feature]],
                                      time_transform="rank")
        assert row["ph_p"] == pytest.approx(float(ph.summary.loc[feature, "p"]), rel=1e-8)
    np.testing.assert_allclose(table["q"], multipletests(table["p"], method="fdr_bh")[1])


def test_multivariable_cox_equals_lifelines_and_r(rossi, rossi_data):
    design, notes = design_covariates(rossi_data, ["fin", "age", "not_there"])
    assert any("not_there" in n for n in notes)
    table = multivariable_cox(rossi_data, design, endpoints=["os"]).set_index("feature")
    row = table.loc["prio"]
    full = CoxPHFitter().fit(rossi[["week", "arrest", "fin", "age", "prio"]], "week", "arrest")
    base = CoxPHFitter().fit(rossi[["week", "arrest", "fin", "age"]], "week", "arrest")
    assert row["coef"] == pytest.approx(full.params_["prio"], rel=1e-8)
    assert row["p"] == pytest.approx(full.summary.loc["prio", "p"], rel=1e-8)
    # R 4.x survival: coxph(Surv(week, arrest) ~ fin + age + prio, data = rossi)
    assert row["coef"] == pytest.approx(0.09689319914, abs=1e-6)
    lr = 2 * (full.log_likelihood_ - base.log_likelihood_)
    assert row["lr_chi2"] == pytest.approx(lr, rel=1e-8)
    assert row["c_clinical"] == pytest.approx(base.concordance_index_, rel=1e-10)
    assert row["delta_c"] == pytest.approx(full.concordance_index_ - base.concordance_index_)


# Reference values from R 4.2 (Debian r-cran-maxstat 0.7-25, r-cran-survival), rossi written by
# lifelines.datasets.load_rossi().to_csv("rossi.csv", index=False):
#   r <- read.csv("rossi.csv")
#   m <- maxstat.test(Surv(week, arrest) ~ prio, data = r, smethod = "LogRank",
#                     pmethod = "Lau92")            # and ~ age; and minprop = 0.2, maxprop = 0.8
#   sprintf("%.10f %.10f %.10f", m$estimate, m$statistic, m$p.value)
R_MAXSTAT = {
    ("prio", 0.1, 0.9): (2.0, 3.7279563854, 0.0062320796),
    ("age", 0.1, 0.9): (19.0, 4.9163172604, 0.0000484565),
    ("prio", 0.2, 0.8): (2.0, 3.7279563854, 0.0040836292),
}


@pytest.mark.parametrize("key", list(R_MAXSTAT))
def test_maxstat_matches_r(rossi, key):
    feature, minprop, maxprop = key
    cut, statistic, p = R_MAXSTAT[key]
    result = maxstat_test(rossi[feature], rossi["week"], rossi["arrest"], minprop=minprop,
                          maxprop=maxprop)
    assert result.cutpoint == cut
    assert result.statistic == pytest.approx(statistic, abs=1e-9)
    assert result.p_value == pytest.approx(p, abs=1e-9)
    assert result.n_low == int((rossi[feature] <= cut).sum())


def test_lausen92_and_scores_match_r():
    # R: maxstat:::pLausen92(3) = 0.057844;
    # exactRankTests::cscores(Surv(c(1, 2, 2, 3), c(1, 1, 0, 1)), type = "LogRank")
    #   = 0.75 0.25 -0.75 -0.75 (ties share the max-rank risk set)
    assert p_lausen92(3.0) == pytest.approx(0.057844, abs=1e-6)
    assert p_lausen92(0.5) == 1.0
    scores = logrank_scores(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1, 1, 0, 1]))
    np.testing.assert_allclose(scores, [0.75, 0.25, -0.75, -0.75])


def test_cutpoint_table_uses_maxstat(rossi_data):
    table = cutpoint_table(rossi_data, endpoints=["os"]).set_index("feature")
    assert table.loc["prio", "cutpoint"] == 2.0
    assert table.loc["prio", "maxstat_p"] == pytest.approx(0.0062320796, abs=1e-9)
    assert table.loc["prio", "median"] == 2.0


def test_bh_matches_r_p_adjust():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005, 0.20, 0.5, 0.04, NA), "BH")
    p = [0.01, 0.04, 0.03, 0.005, 0.20, 0.5, 0.04, np.nan]
    expected = [0.035, 0.056, 0.056, 0.035, 0.2333333333, 0.5, 0.056, np.nan]
    np.testing.assert_allclose(bh_qvalues(p), expected, rtol=1e-9)
    present = np.array(p[:-1])
    np.testing.assert_allclose(bh_qvalues(present), multipletests(present, method="fdr_bh")[1])


def test_landmark_keeps_only_patients_event_free_at_landmark(rossi_study):
    clinical = read_clinical(rossi_study / "clinical.csv")
    full = outcome(clinical, "os")
    landmarked = outcome(clinical, "os", landmark=10.0)
    assert len(landmarked) == int((full["time"] > 10).sum())
    assert (landmarked["time"] > 0).all()
    np.testing.assert_allclose(landmarked["time"], full.loc[landmarked.index, "time"] - 10)


def test_landmark_is_used_for_on_treatment_variables(rossi_data):
    data = rossi_data
    on = data.x["prio"].rename("prio@on_treatment")
    data.x = pd.concat([data.x, on], axis=1)
    data.variables.append(Variable("prio@on_treatment", "prio", "on_treatment", True))
    try:
        table = univariate_cox(data, endpoints=["os"], landmark_months=20.0,
                               config=CoxConfig())
    finally:
        data.variables.pop()
        data.x = data.x.drop(columns="prio@on_treatment")
    row = table[(table["feature"] == "prio") & (table["timepoint"] == "on_treatment")].iloc[0]
    assert row["landmark_months"] == 20.0
    assert row["n"] == int((data.clinical.data["os_time"] > 20).sum())
    assert row["n"] < 432
