"""``hccbio analyze`` and ``hccbio integrate`` never drop rows or columns silently.

Each case takes a SYNTHETIC study (seeded, :func:`integration.synthetic.synthetic_study`),
breaks one of its files the way a careless edit or a cut copy would, and runs the command:
it must either read the file as meant and say so (time points spelled ``Baseline``) or refuse
it naming the file, the line and the column.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from integration.cli import app
from integration.integrate import run_integration
from integration.synthetic import synthetic_study

CONFIG = ("analysis:\n  synthetic_outcomes: true\n  endpoints: [os]\n"
          "  elastic_net: {enabled: false}\n  subtypes: {enabled: false}\n"
          "  mofa: {enabled: false}\n  cox: {n_km_plots: 0}\n")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A synthetic study, integrated once; each test works on its own copy."""
    paths = synthetic_study(tmp_path_factory.mktemp("checks"), n_patients=30, seed=3)
    run_integration(paths["manifest"], paths["out"])
    (paths["out"] / "study.yaml").write_text(CONFIG)
    return paths


@pytest.fixture()
def folder(study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(study["out"], copy)
    return copy


def _analyze(folder, out_name: str = "out"):
    return CliRunner().invoke(app, ["analyze", "--features", str(folder / "features.csv"),
                                    "--clinical", str(folder / "clinical.csv"), "--out",
                                    str(folder / out_name), "--config",
                                    str(folder / "study.yaml")])


def _integrate(folder):
    return CliRunner().invoke(app, ["integrate", str(folder / "samples.csv"), "--out",
                                    str(folder)])


def _refused(result, *parts: str) -> str:
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    for part in parts:
        assert part in message, message
    return message


def _edit_line(path, line: int, edit) -> None:
    """Apply ``edit`` to one line (1-based) of a text file."""
    lines = path.read_text().splitlines()
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- hccbio analyze
def test_baseline_spelled_otherwise_is_read_as_baseline_with_a_note(folder):
    """Before: every 'Baseline' row vanished, 0 variables tested, exit 0, no note."""
    reference = _analyze(folder, "reference")
    assert reference.exit_code == 0, reference.output
    wide = pd.read_csv(folder / "features.csv", dtype=str, keep_default_na=False)
    wide["timepoint"] = wide["timepoint"].replace({"baseline": "Baseline ",
                                                   "on_treatment": "On treatment"})
    wide.to_csv(folder / "features.csv", index=False)
    result = _analyze(folder)
    assert result.exit_code == 0, result.output
    assert "'Baseline ' as 'baseline'" in result.output and "features.csv" in result.output
    ours = pd.read_csv(folder / "out" / "analysis" / "univariate_cox.csv")
    theirs = pd.read_csv(folder / "reference" / "analysis" / "univariate_cox.csv")
    pd.testing.assert_frame_equal(ours, theirs)  # the same analysis as when spelled right
    assert (ours["timepoint"] == "baseline").sum() > 0
    notes = json.loads((folder / "out" / "analysis" / "analysis.json").read_text())["notes"]
    assert any("column 'timepoint'" in note for note in notes)


def test_unknown_timepoint_is_refused_with_line_and_column(folder):
    _edit_line(folder / "features.csv", 3, lambda line: line.replace(",baseline,", ",week6,")
               .replace(",on_treatment,", ",week6,"))
    _refused(_analyze(folder), "features.csv, line 3, column 'timepoint'", "'week6'",
             "baseline, on_treatment, progression")


def _set_cell(path, row: int, column: str, text: str) -> None:
    """Write ``text`` into one cell (0-based data row: line row + 2) of a CSV table."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[row, column] = text
    table.to_csv(path, index=False)


def test_inf_in_a_feature_is_refused_not_read_as_missing(folder):
    """Before: inf became missing and the patient dropped out of that variable."""
    _set_cell(folder / "features.csv", 4, "he_lym_density", "inf")
    _refused(_analyze(folder), "features.csv, line 6, column 'he_lym_density'",
             "inf is not a finite number")


def test_text_in_a_numeric_column_is_refused_not_turned_categorical(folder):
    _set_cell(folder / "features.csv", 2, "flow_cd8_pct", "pending")
    _refused(_analyze(folder), "features.csv, line 4, column 'flow_cd8_pct'",
             "'pending' is not a number", "unit '%'")


def test_truncated_feature_table_is_refused(folder):
    text = (folder / "features.csv").read_text()
    (folder / "features.csv").write_text(text[:len(text) * 2 // 3])  # a copy cut short
    lines = (folder / "features.csv").read_text().count("\n") + 1
    _refused(_analyze(folder), f"features.csv, line {lines}", "the row is cut short",
             "hccbio integrate")


def test_missing_data_dictionary_is_refused(folder):
    (folder / "data_dictionary.csv").unlink()
    _refused(_analyze(folder), "features.csv: no data_dictionary.csv beside it",
             "hccbio integrate")


def test_categories_are_kept_text_and_not_analysed(folder):
    """The dictionary's 'category' unit keeps he_immune_class text (never a refusal)."""
    result = _analyze(folder)
    assert result.exit_code == 0, result.output
    tested = set(pd.read_csv(folder / "out" / "analysis" / "univariate_cox.csv")["feature"])
    assert "he_lym_density" in tested and "he_immune_class" not in tested


# ---------------------------------------------------------------- hccbio integrate
def test_arm_table_with_a_row_cut_short_is_refused(folder):
    _edit_line(folder / "blood_features.csv", 5, lambda line: line.rsplit(",", 1)[0])
    _refused(_integrate(folder), "blood_features.csv, line 5", "the row is cut short",
             "run its arm again")


def test_arm_table_missing_a_sample_its_batch_report_lists_as_done_is_refused(folder):
    table = pd.read_csv(folder / "blood_features.csv", dtype=str)
    report = pd.DataFrame({"sample_id": table["sample_id"], "status": "done", "reason": "",
                           "seconds": 1.0})
    report.to_csv(folder / "batch_report.csv", index=False)
    assert _integrate(folder).exit_code == 0  # table and report agree
    table.iloc[:-3].to_csv(folder / "blood_features.csv", index=False)  # lines lost
    lost = table["sample_id"].iloc[-3]
    _refused(_integrate(folder), "blood_features.csv has no row for sample", "batch_report.csv",
             "lists as done", "hccbio blood run")
    assert lost in _integrate(folder).output.replace("\n", "")


def test_missing_arm_dictionary_is_refused(folder):
    (folder / "blood_features_dictionary.csv").unlink()
    _refused(_integrate(folder), "blood_features.csv: its dictionary "
             "blood_features_dictionary.csv is missing")


def test_arm_dictionary_without_a_column_is_refused(folder):
    _edit_line(folder / "blood_features_dictionary.csv", 3, lambda line: "")
    _refused(_integrate(folder), "blood_features_dictionary.csv: no row for column(s) "
             "flow_treg_pct")


def test_inf_and_text_in_an_arm_column_are_refused(folder):
    sample = pd.read_csv(folder / "blood_features.csv", dtype=str).loc[1, "sample_id"]
    _set_cell(folder / "blood_features.csv", 1, "flow_cd8_pct", "-inf")
    _refused(_integrate(folder), "blood_features.csv, line 3, column 'flow_cd8_pct'",
             "-inf is not a finite number", f"sample '{sample}'")
    _set_cell(folder / "blood_features.csv", 1, "flow_cd8_pct", "n.d.")
    _refused(_integrate(folder), "blood_features.csv, line 3, column 'flow_cd8_pct'",
             "'n.d.' is not a number, but the column holds numbers")
