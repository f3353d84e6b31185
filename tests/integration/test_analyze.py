"""End to end on a SYNTHETIC study (seeded): integration, analysis, report and the CLI.

The outcomes are synthetic because that is the point here: a known effect planted in one
feature must come out, and every on-treatment variable must use the landmark.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from integration.analyze import run_analysis
from integration.cli import app
from integration.config import (
    AnalysisConfig,
    ConfigError,
    CoxConfig,
    ElasticNetConfig,
    SubtypeConfig,
    load_analysis_config,
)
from integration.integrate import run_integration
from integration.synthetic import synthetic_study

FAST = AnalysisConfig(synthetic_outcomes=True, cox=CoxConfig(n_km_plots=1),
                      elastic_net=ElasticNetConfig(bootstrap=20, n_alphas=10, folds=3),
                      subtypes=SubtypeConfig(resamples=8, k_max=3))


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    paths = synthetic_study(tmp_path_factory.mktemp("synthetic"), n_patients=60, seed=1)
    run_integration(paths["manifest"], paths["out"])
    result = run_analysis(paths["out"] / "features.csv", paths["clinical"], paths["out"],
                          config=FAST)
    return paths, result


def test_planted_effect_found_and_landmark_used(synthetic_run):
    paths, result = synthetic_run
    uni = result.tables["univariate_cox"]
    lym = uni[(uni["feature"] == "he_lym_density") & (uni["timepoint"] == "baseline")]
    assert (lym["hr_per_sd"] < 1).all() and (lym["p"] < 0.05).all()
    clinical = result.data.clinical.data
    for row in uni[uni["timepoint"].isin(["on_treatment", "change"])].itertuples():
        assert row.landmark_months == FAST.landmark_months
        at_landmark = int((clinical[f"{row.endpoint}_time"] > FAST.landmark_months).sum())
        assert row.n <= at_landmark
    assert (uni.loc[uni["timepoint"] == "baseline", "landmark_months"] == 0).all()
    assert set(uni["endpoint"]) == {"os", "pfs"}
    assert {"afp_resp", "crafity", "albi_grade", "nlr"} <= set(uni["feature"])
    multi = result.tables["multivariable_cox"]
    assert "crafity" not in set(multi["feature"])  # a covariate is not tested against itself
    assert multi["delta_c"].notna().any() and multi["lr_p"].between(0, 1).all()


def test_on_treatment_response_uses_the_landmark(synthetic_run):
    """On-treatment and change variables are tested for response only in patients still
    progression-free and followed at the landmark; baseline ones in everyone evaluable."""
    from integration.response import response_labels

    _, result = synthetic_run
    clinical = result.data.clinical.data
    response = result.tables["response"]
    on_study = clinical["pfs_time"] > FAST.landmark_months
    assert (~on_study).any(), "the synthetic cohort has early progressions"
    keys = {(v.feature, v.timepoint): v for v in result.data.variables}
    checked = 0
    for row in response.itertuples():
        variable = keys[(row.feature, row.timepoint)]
        labels = response_labels(clinical["best_response"], row.endpoint)
        present = result.data.x[variable.key].notna() & labels.notna()
        if variable.landmark:
            expected = int((present & on_study).sum())
            if (present & ~on_study).any():
                assert "landmark" in row.note
                checked += 1
        else:
            expected = int(present.sum())
            assert "landmark" not in str(row.note)
        assert row.n == expected, (row.feature, row.timepoint)
    assert checked > 0


def test_outputs_and_report(synthetic_run):
    paths, result = synthetic_run
    out = paths["out"]
    for name in ("univariate_cox", "multivariable_cox", "cutpoints", "response", "changes",
                 "clinical_model", "elastic_net"):
        assert (out / "analysis" / f"{name}.csv").is_file(), name
    columns = pd.read_csv(out / "analysis" / "univariate_cox.csv").columns
    assert {"feature", "n", "events", "coef", "hr", "ci_low", "ci_high", "p", "q",
            "hr_per_sd"} <= set(columns)
    changes = result.tables["changes"].set_index("feature")
    assert changes.loc["he_lym_density", "wilcoxon_p"] < 1e-6  # planted 1.4-fold rise
    provenance = json.loads((out / "analysis" / "analysis.json").read_text())
    assert provenance["config_hash"] == FAST.hash()
    assert len(provenance["inputs"]) == 2
    html = (out / "report.html").read_text()
    assert "SYNTHETIC CLINICAL OUTCOMES" in html
    assert "data:image/png;base64," in html and "src='http" not in html
    assert "rejected at QC review" in html and "Lausen-Schumacher" in html
    assert "Provenance" in html and FAST.hash() in html


def test_cli_analyze(synthetic_run, tmp_path):
    paths, _ = synthetic_run
    config = tmp_path / "study.yaml"
    config.write_text("analysis:\n  synthetic_outcomes: true\n  endpoints: [os]\n"
                      "  elastic_net: {enabled: false}\n  subtypes: {enabled: false}\n"
                      "  cox: {n_km_plots: 0}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", "--features", str(paths["out"] / "features.csv"),
                                      "--clinical", str(paths["clinical"]), "--out", str(out),
                                      "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(out / "analysis" / "univariate_cox.csv")["endpoint"]) == {"os"}
    bad = CliRunner().invoke(app, ["analyze", "--features", str(paths["out"] / "features.csv"),
                                   "--clinical", str(tmp_path / "none.csv"), "--out", str(out)])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_config_refuses_unknown_keys(tmp_path, project_root):
    path = tmp_path / "study.yaml"
    path.write_text("analysis:\n  cox:\n    covariatez: [age]\n")
    with pytest.raises(ConfigError, match="analysis.cox.covariatez"):
        load_analysis_config(path)
    assert load_analysis_config(project_root / "configs" / "study.yaml") == AnalysisConfig()
