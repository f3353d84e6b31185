"""Blood batch run and CLI on real FCS files: one bad file never stops the others."""

from __future__ import annotations

import pandas as pd
import typer
from typer.testing import CliRunner

from blood.batch import BloodJob, run_blood
from blood.cli import app
from blood.config import load_config


def test_run_blood_writes_features_dictionary_and_merged_report(shared_data, tmp_path):
    (tmp_path / "batch_report.csv").write_text(
        "sample_id,status,reason,seconds\nslide1,done,,1.0\nP2,failed,old,1.0\n")
    flow = shared_data / "flow"
    jobs = [BloodJob("P1", "flow", "tcell", flow / "flowkit/100715.fcs"),
            BloodJob("P2", "flow", "tcell", flow / "fcsparser/Cytek_xP5.fcs"),
            BloodJob("P3", "flow", "tcell", tmp_path / "missing.fcs"),
            BloodJob("P4", "scrna", "", tmp_path / "x.h5ad")]
    result = run_blood(jobs, tmp_path, config=load_config())
    report = pd.read_csv(tmp_path / "batch_report.csv", keep_default_na=False)
    assert report["sample_id"].tolist() == ["slide1", "P1", "P2", "P3", "P4"]
    status = report.set_index("sample_id")["status"]
    assert status["P1"] == "done" and status["slide1"] == "done"
    assert (status[["P2", "P3", "P4"]] == "failed").all()
    reasons = report.set_index("sample_id")["reason"]
    assert "Cytek_xP5.fcs" in reasons["P2"] and "missing.fcs" in reasons["P3"]
    features = pd.read_csv(tmp_path / "blood_features.csv")
    assert features.columns[0] == "sample_id" and features["sample_id"].tolist() == ["P1"]
    assert all(len(c) <= 32 and c == c.lower() for c in features.columns)
    assert 40 < features.loc[0, "flow_cd4_pct_cd3"] < 85
    dictionary = pd.read_csv(tmp_path / "blood_features_dictionary.csv")
    assert dictionary["name"].tolist() == list(features.columns[1:])
    assert list(dictionary.columns) == ["name", "label", "unit", "modality", "method",
                                        "config_keys", "source"]
    assert (tmp_path / "blood" / "P1" / "populations.csv").is_file()
    assert result.failed == ["P2", "P3", "P4"]


def test_cli_flow_writes_populations(shared_data, project_root, tmp_path):
    gates = project_root / "configs" / "gates" / "tcell_100715.yaml"
    fcs = shared_data / "flow" / "flowkit" / "100715.fcs"
    root = typer.Typer()  # mounted as in integration/cli.py: 'hccbio blood flow ...'
    root.add_typer(app, name="blood")
    root.command("noop")(lambda: None)
    run = CliRunner().invoke(root, ["blood", "flow", str(fcs), "--gates", str(gates), "--out",
                                   str(tmp_path), "--no-plots"])
    assert run.exit_code == 0, run.output
    table = pd.read_csv(tmp_path / "populations.csv")
    assert "cd4_naive" in set(table["population"])
    bad = CliRunner().invoke(root, ["blood", "flow", str(tmp_path / "nope.fcs"),
                                    "--gates", str(gates), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "nope.fcs" in bad.output
