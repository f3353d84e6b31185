"""Clinical table validation (errors name line and column) and the derived clinical scores."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from integration.clinical import ClinicalError, read_clinical
from integration.config import ScoresConfig
from integration.scores import derive_scores

HEADER = "patient_id,os_time,os_event,pfs_time,pfs_event,best_response"
GOOD = "P1,12.5,1,6.0,1,PR"


def _write(tmp_path, *lines: str, header: str = HEADER):
    path = tmp_path / "clinical.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_valid_table_is_typed(tmp_path):
    path = _write(tmp_path, GOOD + ",71,HBV,C,A6,2026-01-03",
                  "P2,3,0,3,0,NE,64,alcohol,B,B,2026-02-01",
                  header=HEADER + ",age,etiology,bclc,child_pugh,start_date")
    table = read_clinical(path)
    data = table.data
    assert list(data.index) == ["P1", "P2"]
    assert data.loc["P1", "os_time"] == 12.5 and data["os_event"].dtype == "Int64"
    assert data.loc["P1", "child_pugh"] == "A"  # A6 -> class A
    assert data.loc["P2", "start_date"] == pd.Timestamp("2026-02-01")
    assert table.specs["etiology"].kind == "category"
    assert table.specs["start_date"].kind == "date"


@pytest.mark.parametrize("extra,lines,words", [
    ("", [GOOD, "P1,3,0,3,0,SD"], ["line 3", "patient_id", "duplicates line 2"]),
    ("", ["P1,,1,6,1,PR"], ["line 2", "os_time", "missing"]),
    ("", ["P1,-2,1,-2,1,PR"], ["line 2", "os_time", "negative"]),
    ("", ["P1,12,2,6,1,PR"], ["line 2", "os_event", "0 or 1"]),
    ("", ["P1,12,1,6,yes,PR"], ["line 2", "pfs_event", "not a number"]),
    ("", ["P1,12,1,6,1,MR"], ["line 2", "best_response", "MR", "CR, PR, SD, PD, NE"]),
    ("", ["P1,12,1,6,1,"], ["line 2", "best_response", "missing", "NE"]),
    ("", ["P1,12,1,16,1,PR"], ["line 2", "pfs_time", "longer than os_time"]),
    (",start_date", [GOOD + ",2026-01-01", "P2,12,1,6,1,PR,2026-13-01"],
     ["line 3", "start_date", "not a date"]),
    (",age", ["P1,12,1,6,1,PR,abc"], ["line 2", "age", "not a number"]),
    (",bclc", ["P1,12,1,6,1,PR,E"], ["line 2", "bclc", "'E'"]),
])
def test_errors_name_line_and_column(tmp_path, extra, lines, words):
    path = _write(tmp_path, *lines, header=HEADER + extra)
    with pytest.raises(ClinicalError) as caught:
        read_clinical(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_missing_required_column_and_bad_name(tmp_path):
    with pytest.raises(ClinicalError, match="missing column.*best_response"):
        read_clinical(_write(tmp_path, "P1,1,1,1,1",
                             header="patient_id,os_time,os_event,pfs_time,pfs_event"))
    with pytest.raises(ClinicalError, match="column name 'AFP level'"):
        read_clinical(_write(tmp_path, GOOD + ",3", header=HEADER + ",AFP level"))


def test_scores_from_published_definitions(tmp_path):
    path = _write(tmp_path,
                  # crp  afp  afp_w6 albumin bilirubin neutro lympho
                  GOOD + ",0.5,50,10,40,10,4.0,2.0",   # CRAFITY 0; AFP 50 -> 10 = -80%
                  "P2,5,1,2,1,PD,1.0,100,120,30,34,6.0,1.5",  # CRAFITY 2
                  "P3,5,1,2,1,SD,2.0,10,30,35,17,3.0,0",     # AFP < 20: no AFP response
                  "P4,5,1,2,1,SD,,500,100,,17,3.0,1.0",      # CRP missing -> CRAFITY missing
                  header=HEADER + ",crp,afp,afp_w6,albumin,bilirubin,neutrophils,lymphocytes")
    data = derive_scores(read_clinical(path)).data
    assert data["crafity"].tolist()[:3] == [0, 2, 1] and pd.isna(data.loc["P4", "crafity"])
    assert data.loc["P1", "afp_w6_chg_pct"] == pytest.approx(-80.0)
    assert data.loc["P1", "afp_resp"] == 1 and data.loc["P1", "afp_nonprog"] == 1
    assert data.loc["P2", "afp_w6_chg_pct"] == pytest.approx(20.0)
    assert data.loc["P2", "afp_resp"] == 0 and data.loc["P2", "afp_nonprog"] == 0
    assert pd.isna(data.loc["P3", "afp_resp"])  # baseline AFP 10 < 20 ng/mL
    assert data.loc["P4", "afp_resp"] == 1  # 500 -> 100 = -80%
    albi = 0.66 * math.log10(10) - 0.085 * 40
    assert data.loc["P1", "albi"] == pytest.approx(albi)
    assert data.loc["P1", "albi_grade"] == 1  # -2.74
    assert data.loc["P2", "albi_grade"] == 2  # 0.66*log10(34) - 2.55 = -1.54
    assert pd.isna(data.loc["P4", "albi"])
    assert data.loc["P1", "nlr"] == pytest.approx(2.0)
    assert pd.isna(data.loc["P3", "nlr"])  # zero lymphocytes
    strict = derive_scores(read_clinical(path), config=ScoresConfig(crafity_crp_mg_dl=3.0)).data
    assert strict.loc["P2", "crafity"] == 1
