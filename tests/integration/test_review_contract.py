"""The review log crosses the boundary: what the review app writes, the study table reads.

Decisions go in through the app's HTTP API (as the browser sends them) and come out in
``hccbio integrate``'s tables: a rejected slide is left out with its reason, an approved one
stays, one never reviewed is flagged as such.
"""

from __future__ import annotations

import json

import pandas as pd
from starlette.testclient import TestClient
from typer.testing import CliRunner

from integration.cli import app as cli_app
from pathology.review.app import create_app
from pathology.run.review_log import APPROVED, NOT_REVIEWED, REJECTED

MANIFEST = """patient_id,timepoint,sample_id,modality,stain,path,mpp
P1,baseline,p1_he,he,HE,p1.svs,0.5
P2,baseline,p2_he,he,HE,p2.svs,0.5
P3,baseline,p3_he,he,HE,p3.svs,0.5
P1,baseline,p1_flow,flow,T,p1.fcs,
"""


def _run_folder(tmp_path):
    (tmp_path / "samples.csv").write_text(MANIFEST)
    (tmp_path / "pathology_features.csv").write_text(
        "sample_id,modality,stain,he_lym_density\np1_he,he,HE,100\np2_he,he,HE,200\n"
        "p3_he,he,HE,300\n")
    (tmp_path / "blood_features.csv").write_text("sample_id,flow_cd8_pct\np1_flow,20\n")
    for arm, name, unit in (("pathology", "he_lym_density", "cells/mm^2"),
                            ("blood", "flow_cd8_pct", "%")):
        (tmp_path / f"{arm}_features_dictionary.csv").write_text(
            f"name,label,unit,modality,method,config_keys,source\n{name},{name},{unit},,,,\n")
    for sample in ("p1_he", "p2_he", "p3_he"):
        folder = tmp_path / "slides" / sample
        folder.mkdir(parents=True)
        (folder / "features.json").write_text(json.dumps(
            {"sample_id": sample, "modality": "he", "slide": {"path": str(tmp_path / "x.svs")}}))
    return tmp_path


def test_a_rejection_in_the_app_leaves_the_slide_out_of_the_study_table(tmp_path):
    out = _run_folder(tmp_path)
    with TestClient(create_app(out), base_url="http://127.0.0.1") as client:
        reply = client.post("/api/review/p1_he", json={
            "decision": REJECTED, "reviewer": "Dr A", "comment": "pen over the tumour"})
        assert reply.status_code == 200, reply.text
        reply = client.post("/api/review/p2_he", json={"decision": APPROVED, "reviewer": "Dr A"})
        assert reply.status_code == 200, reply.text
        states = {s["sample_id"]: s["decision"] for s in client.get("/api/slides").json()}
    assert states == {"p1_he": REJECTED, "p2_he": APPROVED, "p3_he": NOT_REVIEWED}

    result = CliRunner().invoke(cli_app, ["integrate", str(out / "samples.csv"), "--out",
                                          str(out)])
    assert result.exit_code == 0, result.output
    assert "1 rejected at QC review" in result.output
    wide = pd.read_csv(out / "features.csv")
    assert wide["patient_id"].tolist() == ["P1", "P2", "P3"]
    row = wide.set_index("patient_id")
    assert pd.isna(row.loc["P1", "he_lym_density"])  # the rejected slide's value is gone
    assert row.loc["P1", "flow_cd8_pct"] == 20  # the patient's other samples stay
    assert row.loc["P2", "he_lym_density"] == 200 and row.loc["P2", "qc_review"] == APPROVED
    assert row.loc["P3", "he_lym_density"] == 300 and row.loc["P3", "qc_review"] == NOT_REVIEWED
    exclusions = pd.read_csv(out / "exclusions.csv").set_index("sample_id")
    assert list(exclusions.index) == ["p1_he"]
    reason = exclusions.loc["p1_he", "reason"]
    assert reason.startswith("rejected at QC review by Dr A") and "pen over the tumour" in reason
    long = pd.read_csv(out / "features_long.csv")
    assert "p1_he" not in set(long["sample_id"])
    summary = json.loads((out / "integration.json").read_text())
    assert summary["counts"]["samples_rejected_qc"] == 1
    assert summary["counts"]["slides_not_reviewed"] == 1

    # the pathologist changes their mind: the later approval stands
    with TestClient(create_app(out), base_url="http://127.0.0.1") as client:
        client.post("/api/review/p1_he", json={"decision": APPROVED, "reviewer": "Dr B",
                                               "comment": "ink is off the tissue"})
    assert CliRunner().invoke(cli_app, ["integrate", str(out / "samples.csv"), "--out",
                                        str(out)]).exit_code == 0
    assert pd.read_csv(out / "exclusions.csv").empty
    assert pd.read_csv(out / "features.csv").set_index("patient_id").loc[
        "P1", "he_lym_density"] == 100
