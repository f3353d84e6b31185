"""Standard curves that do not fit fail the plate (or the analyte), through ``hccbio blood run``.

Every plate here is synthetic, written by the test from a known 4PL (files named
``synthetic_*``): only a plate whose truth is known can be broken in one known way. The real
plate's curves (all accepted) are checked in ``test_elisa_xponent.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from blood.elisa.curve import LogisticCurve

TRUE = LogisticCurve(a=0.05, b=1.1, c=800.0, d=3.0, g=1.0, model="4pl", rss=0.0)
BLANK = 0.04
STANDARDS = 4000.0 / 2 ** np.arange(7)  # 4000 .. 62.5 pg/mL
SAMPLE_CONC = {"good": 600.0, "flat": 600.0, "nonmono": 600.0, "recovery": 600.0}


def _standard_responses(kind: str) -> np.ndarray:
    """Blank-free OD of each standard level (highest first), broken the way ``kind`` says."""
    if kind == "flat":  # a dead assay: every standard at one OD
        return np.full(STANDARDS.size, 0.05)
    if kind == "nonmono":  # standards put in the wrong wells: up and down with concentration
        return np.array([0.3, 2.5, 0.5, 2.2, 0.6, 1.5, 0.1])
    if kind == "recovery":  # every other dilution step skipped: levels in equal pairs
        return np.array([2.5, 2.5, 1.2, 1.2, 0.1, 0.1, 0.1])
    return TRUE.response(STANDARDS)


def write_synthetic_plate(folder, name: str, kind: str, samples: list[str], *,
                          analytes: dict[str, str] | None = None) -> None:
    """A long-table plate export ``name.csv`` (well[,analyte],value) and its layout beside it.

    ``analytes`` (analyte -> kind) writes a multi-analyte (Luminex-style) table instead.
    """
    analytes = analytes or {"": kind}
    layout, values = [], []
    for analyte, broken in analytes.items():
        rng = np.random.default_rng(len(values))
        y = _standard_responses(broken)
        for i in range(STANDARDS.size):
            for j in (1, 2):
                values.append((f"{'ABCDEFG'[i]}{j}", analyte, y[i] * (1 + rng.normal(0, 0.01))))
        for j in (1, 2):
            values.append((f"H{j}", analyte, 0.0))
        for k in range(len(samples)):
            for j in (3, 4):
                values.append((f"{'ABCDEFGH'[k]}{j}", analyte,
                               float(TRUE.response(SAMPLE_CONC[kind] / 2.0))))
    for i, conc in enumerate(STANDARDS):
        layout += [{"well": f"{'ABCDEFG'[i]}{j}", "kind": "standard", "sample_id": "",
                    "concentration": conc, "dilution": 1} for j in (1, 2)]
    layout += [{"well": f"H{j}", "kind": "blank", "sample_id": "", "concentration": np.nan,
                "dilution": 1} for j in (1, 2)]
    for k, sample in enumerate(samples):
        layout += [{"well": f"{'ABCDEFGH'[k]}{j}", "kind": "sample", "sample_id": sample,
                    "concentration": np.nan, "dilution": 2} for j in (3, 4)]
    table = pd.DataFrame(values, columns=["well", "analyte", "value"])
    table["value"] += BLANK
    if list(analytes) == [""]:
        table = table.drop(columns="analyte")
    table.to_csv(folder / f"{name}.csv", index=False)
    pd.DataFrame(layout).to_csv(folder / f"{name}.layout.csv", index=False)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One ``hccbio blood run`` over a good plate, three broken single-analyte plates and a
    two-analyte plate whose IL-8 is flat."""
    from typer.testing import CliRunner

    from integration.cli import app

    folder = tmp_path_factory.mktemp("curve_checks")
    plates = {"good": ["G1", "G2"], "flat": ["F1", "F2"], "nonmono": ["N1"],
              "recovery": ["R1"]}
    rows = []
    for kind, samples in plates.items():
        write_synthetic_plate(folder, f"synthetic_{kind}", kind, samples)
        rows += [(s, f"synthetic_{kind}.csv") for s in samples]
    write_synthetic_plate(folder, "synthetic_duo", "good", ["D1"],
                          analytes={"IL-6": "good", "IL-8": "flat"})
    rows.append(("D1", "synthetic_duo.csv"))
    pd.DataFrame([{"patient_id": f"pt_{s}", "timepoint": "baseline", "sample_id": s,
                   "modality": "elisa", "stain": "IL6", "path": p} for s, p in rows]).to_csv(
        folder / "samples.csv", index=False)
    (folder / "blood.yaml").write_text("elisa:\n  plots: false\n")
    out = folder / "out"
    result = CliRunner().invoke(app, ["blood", "run", str(folder / "samples.csv"), "--out",
                                      str(out), "--config", str(folder / "blood.yaml")])
    report = pd.read_csv(out / "batch_report.csv", keep_default_na=False).set_index(
        "sample_id")
    features = pd.read_csv(out / "blood_features.csv").set_index("sample_id")
    return result, out, report, features


def _failure(run, sample: str, plate: str) -> str:
    """The failed row's reason, after checking that it names the plate and the analyte and
    that the sample has no concentration and no censoring value."""
    _, _, report, features = run
    assert report.loc[sample, "status"] == "failed"
    reason = report.loc[sample, "reason"]
    assert f"{plate}: analyte 'IL6'" in reason and "no concentrations reported" in reason
    # before: every sample '<LLOQ' (censored at LLOQ/2), status done
    for column in ("elisa_il6_pg_ml", "elisa_il6_cens"):
        assert sample not in features.index or column not in features.columns or \
            pd.isna(features.loc[sample, column])
    return reason


def test_good_plate_is_done_beside_the_broken_ones(cli_run):
    result, _, report, features = cli_run
    assert result.exit_code == 1, result.output  # broken plates failed, the rest went on
    assert (report.loc[["G1", "G2", "D1"], "status"] == "done").all()
    assert features.loc["G1", "elisa_il6_pg_ml"] == pytest.approx(SAMPLE_CONC["good"], rel=0.1)
    assert features.loc["G1", "elisa_il6_cens"] == 0


def test_flat_curve_fails_its_plate_with_no_concentration_or_censoring(cli_run):
    for sample in ("F1", "F2"):
        reason = _failure(cli_run, sample, "synthetic_flat.csv")
        assert "flat standard curve" in reason and "elisa.min_curve_span" in reason
    out = cli_run[1]
    assert not (out / "blood" / "elisa_plates" / "synthetic_flat" / "concentrations.csv").exists()


def test_non_monotonic_curve_fails_its_plate(cli_run):
    reason = _failure(cli_run, "N1", "synthetic_nonmono.csv")
    assert "non-monotonic standard curve" in reason and "Kendall tau" in reason
    assert "elisa.min_curve_tau" in reason


def test_curve_with_bad_recoveries_fails_its_plate_naming_them(cli_run):
    reason = _failure(cli_run, "R1", "synthetic_recovery.csv")
    assert "does not fit its standards" in reason and "70-130%" in reason
    assert "elisa.min_recovering_standards" in reason


def test_flat_analyte_of_a_multiplex_plate_fails_alone(cli_run):
    _, out, report, features = cli_run
    assert report.loc["D1", "status"] == "done"
    assert features.loc["D1", "elisa_il6_pg_ml"] == pytest.approx(SAMPLE_CONC["good"], rel=0.1)
    # IL-8's curve is flat: its columns exist but carry no value and no censoring
    assert np.isnan(features.loc["D1", "elisa_il8_pg_ml"])
    assert np.isnan(features.loc["D1", "elisa_il8_cens"])
    curves = pd.read_csv(out / "blood" / "elisa_plates" / "synthetic_duo" / "curves.csv",
                         keep_default_na=False).set_index("analyte")
    assert curves.loc["IL-6", "status"] == "fitted"
    assert curves.loc["IL-8", "status"] == "failed"
    assert "flat standard curve" in curves.loc["IL-8", "reason"]
    per_sample = pd.read_csv(out / "blood" / "D1" / "elisa.csv", keep_default_na=False)
    il8 = per_sample.loc[per_sample["analyte"] == "IL-8"]
    assert il8["flag"].tolist() == ["no curve"] and "synthetic_duo.csv" in il8["note"].iloc[0]
    concentrations = pd.read_csv(out / "blood" / "elisa_plates" / "synthetic_duo"
                                 / "concentrations.csv")
    assert set(concentrations["analyte"]) == {"IL-6"}
