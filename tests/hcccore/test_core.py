"""The shared run-folder core: atomic writes, spreadsheet-safe cells, batch report merge,
the run lock and the run table rebuilt from sample folders."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from hcccore.atomic import write_atomic, write_csv, write_json, write_parquet, write_text
from hcccore.batch_report import (
    BATCH_REPORT,
    BatchReportError,
    BatchRow,
    merge_report,
    read_report,
)
from hcccore.lock import LOCK_FILE, RunFolderError, RunLock, RunLockedError
from hcccore.sample_features import (
    SampleFeaturesError,
    adopt_table_rows,
    finished_samples,
    run_table,
    write_sample_features,
)
from hcccore.spreadsheet import spreadsheet_safe, spreadsheet_text


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=pd.Index(["r1", "r2"]))
    write_csv(frame, tmp_path / "t.csv")
    write_json({"b": 1, "a": [1.5]}, tmp_path / "sub" / "t.json")
    write_parquet(frame, tmp_path / "t.parquet")
    write_text(tmp_path / "t.txt", "é\n")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), frame.reset_index(drop=True))
    assert json.loads((tmp_path / "sub" / "t.json").read_text()) == {"a": [1.5], "b": 1}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é\n"
    assert not list(tmp_path.rglob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "t.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = write_text(tmp_path / "t.csv", "old\n")

    def half(temp):
        temp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    with pytest.raises(TypeError, match="t.parquet"):
        write_parquet([1, 2], tmp_path / "t.parquet")


def test_spreadsheet_cells_round_trip():
    texts = ["=SUM(A1)", "+1", "-x", "@cmd", "\tx", "'=quoted", "plain", "", "'plain"]
    for text in texts:
        safe = spreadsheet_safe(text)
        assert not safe.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert spreadsheet_text(safe) == text
    assert spreadsheet_safe(-3.5) == -3.5 and spreadsheet_safe(None) is None


def test_batch_report_merge_replaces_reruns_and_keeps_other_rows(tmp_path):
    (tmp_path / BATCH_REPORT).write_text(
        "sample_id,status,reason,seconds\nslide1,done,,12.5\nP1,failed,\"'=old, bad\",1\n"
        "P2,done,,2\n")
    merged = merge_report(tmp_path, [BatchRow("P1", "done", "", 3.456),
                                     BatchRow("P3", "failed", "-5 counts", 0.1)])
    assert list(merged) == ["slide1", "P2", "P1", "P3"]
    again = read_report(tmp_path)
    assert list(again) == list(merged) and again["slide1"] == merged["slide1"]
    assert again["P3"].reason == "-5 counts" and again["P1"].seconds == pytest.approx(3.46)
    text = (tmp_path / BATCH_REPORT).read_text().splitlines()
    assert text[0] == "sample_id,status,reason,seconds"
    assert "P3,failed,'-5 counts,0.10" in text  # no spreadsheet runs the reason
    assert not list(tmp_path.glob(".*.tmp"))


def test_batch_report_contract_errors_name_the_file(tmp_path):
    (tmp_path / BATCH_REPORT).write_text("sample_id,state\nP1,done\n")
    with pytest.raises(BatchReportError, match=r"batch_report.csv: .*lacks column\(s\) "
                                               r"status, reason, seconds"):
        read_report(tmp_path)
    (tmp_path / BATCH_REPORT).write_text("sample_id,status,reason,seconds\nP1,done,,fast\n")
    with pytest.raises(BatchReportError, match="batch_report.csv: line 2: seconds 'fast'"):
        merge_report(tmp_path, [BatchRow("P2", "done", "", 1.0)])


def test_run_lock_names_the_lock_file_and_holder_and_is_released(tmp_path):
    out = tmp_path / "out"
    with RunLock(out):
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunLockedError) as refused:
            with RunLock(out):
                pass
        message = str(refused.value)
        assert "another hccbio run" in message and str(out / LOCK_FILE) in message
        assert f'"pid": {os.getpid()}' in message
    assert (out / LOCK_FILE).read_text() == ""  # released: the next run goes ahead
    with RunLock(out):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"), RunLock(tmp_path / "file"):
        pass


def test_run_table_is_every_finished_sample(tmp_path):
    arm = tmp_path / "arm"
    write_sample_features(arm / "a", sample_id="a", values={"x": 1.0, "k": 3},
                          dictionary={"x": {"label": "X old", "unit": "%"}},
                          meta={"config_sha256": "c1"})
    write_sample_features(arm / "b", sample_id="b", values={"y": 2.5, "x": float("nan")},
                          dictionary={"x": {"label": "X", "unit": "%"}, "y": {"label": "Y"}},
                          meta={"config_sha256": "c1"})
    write_sample_features(arm / "c", sample_id="c", values={"x": 9.0}, dictionary={})
    merge_report(tmp_path, [BatchRow("b", "done", "", 1), BatchRow("a", "done", "", 1),
                            BatchRow("c", "failed", "broken", 1)])
    assert finished_samples(tmp_path, "arm") == ["b", "a"]  # c failed on its latest run
    table = run_table(tmp_path, "arm", finished_samples(tmp_path, "arm"))
    assert table.features.columns.tolist() == ["sample_id", "y", "x", "k"]  # first seen
    assert table.features["x"].isna().tolist() == [True, False]
    assert table.features["k"].tolist()[1] == 3
    assert table.dictionary.set_index("name").loc["x", "label"] == "X old"  # the last sample's
    assert table.groups("config_sha256") == {"c1": ["b", "a"]}
    (arm / "a" / "features.json").write_text("{broken")
    with pytest.raises(SampleFeaturesError, match=r"arm/a/features.json: cannot read.*run the "
                                                  "sample again"):
        run_table(tmp_path, "arm", ["a"])


def test_rows_of_an_earlier_versions_table_are_adopted(tmp_path):
    write_csv(pd.DataFrame({"sample_id": ["old1", "old2", "new"], "x": [1.0, None, 3.0]}),
              tmp_path / "arm_features.csv")
    write_csv(pd.DataFrame({"name": ["x"], "label": ["X"], "unit": ["%"], "modality": ["m"],
                            "method": [""], "config_keys": [""], "source": ["s"]}),
              tmp_path / "arm_dictionary.csv")
    merge_report(tmp_path, [BatchRow("old2", "failed", "rerun failed", 1)])
    adopted = adopt_table_rows(tmp_path, "arm", "arm_features.csv", "arm_dictionary.csv",
                               exclude=["new"], meta={"old1": {"note": "n"}})
    assert adopted == ["old1"]
    table = run_table(tmp_path, "arm", finished_samples(tmp_path, "arm"))
    assert table.features["sample_id"].tolist() == ["old1"]
    assert table.records["old1"]["note"] == "n"
    assert table.dictionary.loc[0, "unit"] == "%"
    assert adopt_table_rows(tmp_path, "arm", "arm_features.csv", "arm_dictionary.csv",
                            exclude=["new"]) == []  # once
