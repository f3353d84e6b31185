"""Merged feature table: QC exclusions, deltas, unknown samples, exports read back equal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from integration.arms import FeatureTableError, read_arm_features
from integration.dictionary import delta_name
from integration.exports import write_feature_table
from integration.manifest import read_manifest
from integration.review import ReviewError, read_review
from integration.table import build_feature_table

MANIFEST = """patient_id,timepoint,sample_id,modality,stain,path,mpp
P1,baseline,p1_he_0,he,HE,a.svs,0.5
P1,on_treatment,p1_he_1,he,HE,b.svs,0.5
P1,baseline,p1_flow_0,flow,T,c.fcs,
P1,on_treatment,p1_flow_1,flow,T,d.fcs,
P2,baseline,p2_he_0,he,HE,e.svs,0.5
P2,on_treatment,p2_he_1,he,HE,f.svs,0.5
P2,baseline,p2_flow_0,flow,T,g.fcs,
"""


@pytest.fixture()
def run(tmp_path):
    (tmp_path / "samples.csv").write_text(MANIFEST)
    (tmp_path / "pathology_features.csv").write_text(
        "sample_id,modality,stain,he_lym_density,he_immune_class\n"
        "p1_he_0,he,HE,100,inflamed\np1_he_1,he,HE,160,inflamed\n"
        "p2_he_0,he,HE,50,desert\np2_he_1,he,HE,80,excluded\n")
    (tmp_path / "pathology_features_dictionary.csv").write_text(
        "name,label,unit,modality,method,config_keys,source\n"
        "he_lym_density,Lymphocytes per mm2 of tissue,cells/mm^2,he,count / area,"
        "\"regions.margin_width_um, panels\",cells.parquet (he HE)\n"
        "he_immune_class,Immune phenotype,category,he,rule,spatial,cells.parquet (he HE)\n")
    (tmp_path / "blood_features.csv").write_text(
        "sample_id,flow_cd8_pct\np1_flow_0,20\np1_flow_1,26.5\np2_flow_0,31\n")
    (tmp_path / "blood_features_dictionary.csv").write_text(
        "name,label,unit,modality,method,config_keys,source\n"
        "flow_cd8_pct,CD8+ T cells (% of CD3+),%,flow,gates,flow.features,blood.flow\n")
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "review.csv").write_text(
        "sample_id,decision,reviewer,time,comment\n"
        "p2_he_1,rejected,dr a,2026-01-02T09:00,folded tissue\n"
        "p2_he_1,approved,dr a,2026-01-01T09:00,\n"   # earlier: the later rejection wins
        "p1_he_1,rejected,dr b,2026-01-01T09:00,blurred\n"
        "p1_he_1,approved,dr b,2026-01-03T09:00,rescanned\n")
    return tmp_path


def _build(run):
    return build_feature_table(read_manifest(run / "samples.csv"), read_arm_features(run),
                               review=read_review(run / "qc" / "review.csv"))


def test_wide_table_deltas_and_exclusions(run):
    table = _build(run)
    wide = table.wide.set_index(["patient_id", "timepoint"])
    # p2_he_1 is rejected (the later decision wins) and was P2's only on-treatment sample
    assert list(wide.index) == [("P1", "baseline"), ("P1", "on_treatment"),
                                ("P2", "baseline")]
    assert wide.loc[("P1", "on_treatment"), "he_lym_density"] == 160
    assert wide.loc[("P1", "on_treatment"), "d_he_lym_density"] == 60
    assert wide.loc[("P1", "on_treatment"), "d_flow_cd8_pct"] == pytest.approx(6.5)
    assert np.isnan(wide.loc[("P1", "baseline"), "d_he_lym_density"])
    assert "d_he_immune_class" not in table.wide.columns  # categories get no change column
    excluded = table.exclusions.set_index("sample_id")
    assert list(excluded.index) == ["p2_he_1"]
    assert excluded.loc["p2_he_1", "reason"] == ("rejected at QC review by dr a "
                                                 "(2026-01-02T09:00): folded tissue")
    assert table.counts["samples_rejected_qc"] == 1 and table.counts["samples_used"] == 6
    long = table.long
    assert set(long.columns) == {"patient_id", "timepoint", "sample_id", "modality",
                                 "qc_review", "feature", "value", "level"}
    # p1_he_1 was approved; p1_he_0 and p2_he_0 were never reviewed: flagged, not approved
    assert wide.loc[("P1", "on_treatment"), "qc_review"] == "approved"
    assert wide.loc[("P1", "baseline"), "qc_review"] == "not_reviewed"
    assert table.counts["slides_not_reviewed"] == 2
    assert any("without a QC review decision" in n and "p1_he_0" in n for n in table.notes)
    assert len(long[long["feature"] == "he_lym_density"]) == 3
    assert long.loc[long["feature"] == "he_immune_class", "level"].tolist()[0] == "inflamed"
    miss = table.missingness.set_index(["feature", "timepoint"])
    assert miss.loc[("flow_cd8_pct", "baseline"), "missing"] == 0
    assert miss.loc[("he_lym_density", "on_treatment"), "rows"] == 1
    entry = table.dictionary.set_index("name").loc["d_he_lym_density"]
    assert entry["label"].startswith("Change from baseline: Lymphocytes")
    assert entry["unit"] == "cells/mm^2" and "pathology_features.csv" in entry["source"]


def test_exports_read_back_equal(run):
    table = _build(run)
    write_feature_table(table, run)
    wide = table.wide
    pd.testing.assert_frame_equal(pd.read_parquet(run / "features.parquet"), wide)
    csv = pd.read_csv(run / "features.csv", dtype={"patient_id": str})
    pd.testing.assert_frame_equal(csv, wide, check_dtype=False)
    dta = pd.read_stata(run / "features.dta")
    numeric = [c for c in wide.columns if wide[c].dtype == float]
    pd.testing.assert_frame_equal(dta[numeric], wide[numeric])
    assert dta["he_immune_class"].tolist() == wide["he_immune_class"].fillna("").tolist()
    with pd.io.stata.StataReader(run / "features.dta") as reader:
        labels = reader.variable_labels()
    expected = dict(zip(table.dictionary["name"], table.dictionary["label"], strict=True))
    assert labels == {k: v[:80] for k, v in expected.items()}
    dictionary = pd.read_csv(run / "data_dictionary.csv", keep_default_na=False)
    assert dictionary["name"].tolist() == list(wide.columns)
    assert list(dictionary.columns) == ["name", "label", "unit", "modality", "method",
                                        "config_keys", "source"]
    pd.testing.assert_frame_equal(pd.read_parquet(run / "features_long.parquet"), table.long)


def test_unknown_sample_names_file_and_line(run):
    with (run / "blood_features.csv").open("a") as handle:
        handle.write("ghost,1\n")
    with pytest.raises(FeatureTableError, match=r"blood_features.csv, line 5.*'ghost'.*manifest"):
        _build(run)


def test_duplicate_sample_and_bad_column(run):
    (run / "blood_features.csv").write_text("sample_id,flow_cd8_pct\np1_flow_0,1\np1_flow_0,2\n")
    with pytest.raises(FeatureTableError, match="line 3, column 'sample_id'.*duplicates line 2"):
        read_arm_features(run)
    (run / "blood_features.csv").write_text("sample_id,Flow CD8\np1_flow_0,1\n")
    with pytest.raises(FeatureTableError, match="line 1, column 'Flow CD8'"):
        read_arm_features(run)
    (run / "blood_features.csv").write_text("id,flow_cd8_pct\np1_flow_0,1\n")
    with pytest.raises(FeatureTableError, match="first column is 'id'"):
        read_arm_features(run)


def test_review_errors_name_line_and_column(run):
    path = run / "qc" / "review.csv"
    path.write_text("sample_id,decision,reviewer,time,comment\np1_he_0,maybe,x,2026-01-01,\n")
    with pytest.raises(ReviewError, match="line 2, column 'decision': 'maybe'"):
        read_review(path)
    path.write_text("sample_id,decision,reviewer,time,comment\np1_he_0,rejected,x,yesterday,\n")
    with pytest.raises(ReviewError, match="line 2, column 'time'"):
        read_review(path)


def test_delta_names_fit_32_characters():
    assert delta_name("he_lym_density") == "d_he_lym_density"
    long_a, long_b = "a" * 31 + "b", "a" * 31 + "c"
    assert len(delta_name(long_a)) == 32 and delta_name(long_a) != delta_name(long_b)
