"""``hccbio blood run`` into one run folder twice: the tables keep every finished sample, and
the run lock keeps a second run out (issue 29, item 1)."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from hcccore.lock import LOCK_FILE, RunLock
from integration.cli import app

FCS = "flowkit/100715.fcs"


def _manifest(path, rows: list[tuple[str, str]]):
    lines = ["patient_id,timepoint,sample_id,modality,stain,path"]
    lines += [f"{sid.split('_')[0]},baseline,{sid},flow,tcell,{fcs}" for sid, fcs in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _blood_run(manifest: str, out) -> object:
    return CliRunner().invoke(app, ["blood", "run", manifest, "--out", str(out)])


def test_second_blood_run_adds_its_samples(shared_data, tmp_path):
    fcs = shared_data / "flow" / FCS
    out = tmp_path / "out"
    first = _manifest(tmp_path / "first.csv", [("P1_flow", fcs)])
    second = _manifest(tmp_path / "second.csv", [("P2_flow", fcs)])
    assert _blood_run(first, out).exit_code == 0
    run = _blood_run(second, out)
    assert run.exit_code == 0, run.output
    features = pd.read_csv(out / "blood_features.csv")
    assert features["sample_id"].tolist() == ["P1_flow", "P2_flow"]
    assert features["flow_cd4_pct_cd3"].iloc[0] == features["flow_cd4_pct_cd3"].iloc[1]
    dictionary = pd.read_csv(out / "blood_features_dictionary.csv")
    assert dictionary["name"].tolist() == list(features.columns[1:])
    report = pd.read_csv(out / "batch_report.csv", keep_default_na=False)
    assert report["sample_id"].tolist() == ["P1_flow", "P2_flow"]
    assert set(report["status"]) == {"done"}
    record = json.loads((out / "blood" / "P1_flow" / "features.json").read_text())
    assert record["features"]["flow_cd4_pct_cd3"] == features["flow_cd4_pct_cd3"].iloc[0]

    # A rerun that fails replaces its row and leaves the table; other samples stay.
    again = _manifest(tmp_path / "again.csv", [("P1_flow", tmp_path / "gone.fcs")])
    run = _blood_run(again, out)
    assert run.exit_code == 1 and "gone.fcs" in run.output
    report = pd.read_csv(out / "batch_report.csv", keep_default_na=False).set_index("sample_id")
    assert report["status"].to_dict() == {"P2_flow": "done", "P1_flow": "failed"}
    assert pd.read_csv(out / "blood_features.csv")["sample_id"].tolist() == ["P2_flow"]


def test_blood_run_into_a_locked_folder_is_refused(shared_data, tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "samples.csv", [("P1_flow", shared_data / "flow" / FCS)])
    with RunLock(out):  # another run holds the folder
        run = _blood_run(manifest, out)
    assert run.exit_code == 2
    message = " ".join(run.output.split())
    assert "another hccbio run is writing into this folder" in message
    assert str(out / LOCK_FILE) in message and '"pid":' in message
    assert not (out / "blood").exists() and not (out / "batch_report.csv").exists()
    assert _blood_run(manifest, out).exit_code == 0  # released: the next run goes ahead


def test_integrate_takes_the_run_lock(shared_data, tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "samples.csv", [("P1_flow", shared_data / "flow" / FCS)])
    assert _blood_run(manifest, out).exit_code == 0
    with RunLock(out):
        run = CliRunner().invoke(app, ["integrate", manifest, "--out", str(out)])
    assert run.exit_code == 2 and "another hccbio run" in run.output
    assert not (out / "features.csv").exists()
    run = CliRunner().invoke(app, ["integrate", manifest, "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert (out / "features.csv").is_file()
