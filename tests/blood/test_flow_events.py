"""Empty and near-empty FCS files fail the ``flow_events`` QC check instead of giving 0 %.

The near-empty files are SYNTHETIC: the first 0 and 1 events of the real FlowKit T-cell file
(``flow/flowkit/100715.fcs``) written back as FCS with its channels and spillover, named
``synthetic_*``. Every real FCS file of ``../shared/data/flow`` passes the check.
"""

from __future__ import annotations

import json

import flowio
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from blood.config import FlowQcConfig
from blood.flow.qc import acquisition_qc
from blood.flow.read import read_fcs
from integration.cli import app

TCELL = "flowkit/100715.fcs"


def test_flow_events_check_accepts_every_real_fcs_file(shared_data):
    """The smallest real file (cyflow_cube_8.fcs, 725 events) is flagged, never failed."""
    files = sorted((shared_data / "flow").rglob("*.fcs"))
    assert len(files) >= 8
    for path in files:
        qc = acquisition_qc(read_fcs(path).sample, **FlowQcConfig().model_dump())
        assert qc.checks["flow_events"] in ("pass", "flag"), path
        assert not qc.failures, path


def write_synthetic_fcs(source, path, n_events: int) -> None:
    """The first ``n_events`` events of ``source`` as an FCS file (channels, $SPILL kept)."""
    data = flowio.FlowData(str(source))
    events = np.reshape(data.events, (-1, data.channel_count))[:n_events]
    names = [data.channels[i + 1]["pnn"] for i in range(data.channel_count)]
    with open(path, "wb") as handle:
        flowio.create_fcs(handle, events.ravel().tolist(), names,
                          metadata_dict={"SPILL": data.text["spill"]})


@pytest.fixture(scope="module")
def run(shared_data, project_root, tmp_path_factory):
    """``hccbio blood run`` over the real file and 0- and 1-event copies, then integrate."""
    folder = tmp_path_factory.mktemp("flow_events")
    for n in (0, 1):
        write_synthetic_fcs(shared_data / "flow" / TCELL, folder / f"synthetic_{n}_events.fcs",
                            n)
    rows = [("P1", "P1_flow", shared_data / "flow" / TCELL),
            ("P2", "P2_flow", folder / "synthetic_0_events.fcs"),
            ("P3", "P3_flow", folder / "synthetic_1_events.fcs")]
    pd.DataFrame([{"patient_id": p, "timepoint": "baseline", "sample_id": s,
                   "modality": "flow", "stain": "tcell", "path": str(f)} for p, s, f in rows]
                 ).to_csv(folder / "samples.csv", index=False)
    gates = project_root / "configs" / "gates" / "tcell_100715.yaml"
    (folder / "blood.yaml").write_text(f"flow:\n  default_gates: {gates}\n  plots: false\n")
    out = folder / "out"
    blood = CliRunner().invoke(app, ["blood", "run", str(folder / "samples.csv"), "--out",
                                     str(out), "--config", str(folder / "blood.yaml")])
    integrate = CliRunner().invoke(app, ["integrate", str(folder / "samples.csv"), "--out",
                                         str(out)])
    return blood, integrate, out


def test_near_empty_files_fail_in_the_batch_report(run):
    """Before: status done, features 0.0 %."""
    blood, _, out = run
    assert blood.exit_code == 1, blood.output
    report = pd.read_csv(out / "batch_report.csv", keep_default_na=False).set_index("sample_id")
    assert report.loc["P1_flow", "status"] == "done"
    for sample, n in (("P2_flow", 0), ("P3_flow", 1)):
        assert report.loc[sample, "status"] == "failed"
        reason = report.loc[sample, "reason"]
        assert f"synthetic_{n}_events.fcs" in reason and "acquisition QC failed" in reason
        assert f"{n} events < 100 (flow.qc.fail_below_events)" in reason
        qc = json.loads((out / "blood" / sample / "qc.json").read_text())
        assert qc["checks"]["flow_events"] == "fail" and qc["status"] == "fail"
        assert qc["events"] == n
        assert not (out / "blood" / sample / "populations.csv").exists()
    real = json.loads((out / "blood" / "P1_flow" / "qc.json").read_text())
    assert real["checks"]["flow_events"] == "pass"


def test_near_empty_files_give_no_feature_row_and_are_excluded_with_the_reason(run):
    _, integrate, out = run
    assert integrate.exit_code == 0, integrate.output
    features = pd.read_csv(out / "blood_features.csv").set_index("sample_id")
    assert list(features.index) == ["P1_flow"]
    assert features.loc["P1_flow"].notna().all()
    exclusions = pd.read_csv(out / "exclusions.csv").set_index("sample_id")
    for sample in ("P2_flow", "P3_flow"):
        assert exclusions.loc[sample, "reason"].startswith("failed in its arm: ")
        assert "flow.qc.fail_below_events" in exclusions.loc[sample, "reason"]
    wide = pd.read_csv(out / "features.csv").set_index("patient_id")
    assert list(wide.index) == ["P1"]
