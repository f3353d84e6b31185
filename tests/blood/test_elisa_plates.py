"""ELISA plate files written here from known curves (synthetic: the known truth is the point).

A seeded plate from a known 4PL with known sample concentrations goes through the plate
reader, the layout, the curve fit and the batch run; concentrations must come back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from blood.batch import BloodJob, run_blood
from blood.config import BloodConfig, ElisaConfig, load_config
from blood.elisa.curve import LogisticCurve
from blood.elisa.pipeline import analyse_plate
from blood.elisa.plate import read_plate
from blood.errors import BloodInputError

TRUE = LogisticCurve(a=0.05, b=1.1, c=800.0, d=3.0, g=1.0, model="4pl", rss=0.0)
BLANK = 0.04
STANDARDS = 4000.0 / 2 ** np.arange(7)  # 4000 .. 62.5 pg/mL
SAMPLES = {"P1": 300.0, "P2": 1500.0, "P3": 2000.0, "P4": 50000.0}  # P4: above the ULOQ
DILUTION = 2.0


def synthetic_plate(rows: str, cols: int, *, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Seeded synthetic plate (2% CV) from TRUE: values grid and its layout."""
    rng = np.random.default_rng(seed)
    grid = np.full((len(rows), cols), BLANK)
    layout = []
    for i, conc in enumerate(STANDARDS):
        for j in (0, 1):
            grid[i, j] = TRUE.response(conc) + BLANK
            layout.append({"well": f"{rows[i]}{j + 1}", "kind": "standard", "sample_id": "",
                           "concentration": conc, "dilution": 1})
    for j in (0, 1):
        layout.append({"well": f"{rows[7]}{j + 1}", "kind": "blank", "sample_id": "",
                       "concentration": np.nan, "dilution": 1})
    for i, (sample, conc) in enumerate(SAMPLES.items()):
        for j in (2, 3):
            grid[i, j] = TRUE.response(conc / DILUTION) + BLANK
            layout.append({"well": f"{rows[i]}{j + 1}", "kind": "sample", "sample_id": sample,
                           "concentration": np.nan, "dilution": DILUTION})
    grid = grid * (1 + rng.normal(0, 0.02, grid.shape))
    return grid, pd.DataFrame(layout)


def write_grid_csv(path, grid: np.ndarray, rows: str, *, label: str = "") -> None:
    """Reader-style CSV: metadata lines, then a labelled grid."""
    lines = ["Plate reader export,,", "Wavelength,450 nm,", ""]
    lines.append(",".join([label, *[str(k + 1) for k in range(grid.shape[1])]]))
    for letter, values in zip(rows, grid, strict=True):
        lines.append(",".join([letter, *[f"{v:.4f}" for v in values]]))
    path.write_text("\n".join(lines) + "\n")


def test_synthetic_96_well_csv_recovers_known_concentrations(tmp_path):
    grid, layout = synthetic_plate("ABCDEFGH", 12, seed=1)
    write_grid_csv(tmp_path / "plate1.csv", grid, "ABCDEFGH", label="IL-6")
    layout.to_csv(tmp_path / "plate1.layout.csv", index=False)
    result = analyse_plate(tmp_path / "plate1.csv", tmp_path / "out", config=ElisaConfig())
    table = result.concentrations.set_index("sample_id")
    for sample in ("P1", "P2", "P3"):
        assert table.loc[sample, "concentration"] == pytest.approx(SAMPLES[sample], rel=0.1)
        assert table.loc[sample, "flag"] == ""
    assert table.loc["P4", "flag"] == ">ULOQ" and np.isnan(table.loc["P4", "concentration"])
    assert (tmp_path / "out" / "curve_il6.png").stat().st_size > 1000
    assert result.standards["recovery_pct"].between(80, 120).all()


def test_synthetic_384_well_excel_grid_reads_every_well(tmp_path):
    rows = "ABCDEFGHIJKLMNOP"
    grid, _ = synthetic_plate(rows, 24, seed=2)
    frame = pd.DataFrame(grid, index=list(rows), columns=range(1, 25))
    frame.to_excel(tmp_path / "plate384.xlsx", sheet_name="VEGF-A")
    plate = read_plate(tmp_path / "plate384.xlsx")
    assert len(plate) == 384 and set(plate["analyte"]) == {"VEGF-A"}
    assert plate.set_index("well").loc["P24", "value"] == pytest.approx(grid[15, 23])


def test_synthetic_luminex_long_table_flags_low_bead_counts(tmp_path):
    grid, layout = synthetic_plate("ABCDEFGH", 12, seed=3)
    rows = []
    for analyte, scale in (("IL-6", 1000.0), ("IL-8", 500.0)):  # MFI scale
        for i, letter in enumerate("ABCDEFGH"):
            for k in range(12):
                rows.append({"Well": f"{letter}{k + 1:02d}", "Analyte": analyte,
                             "MFI": grid[i, k] * scale, "Count": 20 if (i, k) == (0, 2) else 80})
    pd.DataFrame(rows).to_csv(tmp_path / "lx.csv", index=False)
    layout.to_csv(tmp_path / "lx.layout.csv", index=False)
    result = analyse_plate(tmp_path / "lx.csv", tmp_path / "out",
                           config=ElisaConfig(plots=False))
    table = result.concentrations
    assert set(table["analyte"]) == {"IL-6", "IL-8"}
    flagged = table.loc[table["bead_flag"], ["sample_id", "analyte"]].to_numpy().tolist()
    assert flagged == [["P1", "IL-6"], ["P1", "IL-8"]]  # well A3 (P1) had 20 < 35 beads
    p2 = table.loc[table["sample_id"] == "P2", "concentration"]
    np.testing.assert_allclose(p2, SAMPLES["P2"], rtol=0.1)


def test_elisa_rows_in_batch_run_one_bad_plate_never_stops_others(tmp_path):
    grid, layout = synthetic_plate("ABCDEFGH", 12, seed=4)
    write_grid_csv(tmp_path / "plate.csv", grid, "ABCDEFGH")  # unlabelled: stain names it
    layout_path = tmp_path / "common_layout.csv"
    layout.to_csv(layout_path, index=False)
    config = BloodConfig(elisa=ElisaConfig(layout=layout_path))
    jobs = [BloodJob(s, "elisa", "IL6", tmp_path / "plate.csv") for s in ("P1", "P2", "P9")]
    jobs.append(BloodJob("P5", "elisa", "IL6", tmp_path / "missing.csv"))
    result = run_blood(jobs, tmp_path / "run", config=config)
    assert result.failed == ["P9", "P5"]
    reasons = result.batch.set_index("sample_id")["reason"]
    assert "'P9' is not on the plate layout" in reasons["P9"]
    assert "missing.csv" in reasons["P5"]
    features = pd.read_csv(tmp_path / "run" / "blood_features.csv").set_index("sample_id")
    assert features.loc["P1", "elisa_il6_pg_ml"] == pytest.approx(300.0, rel=0.1)
    dictionary = pd.read_csv(tmp_path / "run" / "blood_features_dictionary.csv")
    assert dictionary["name"].tolist() == ["elisa_il6_pg_ml", "elisa_il6_cens"]
    assert features.loc["P1", "elisa_il6_cens"] == 0
    assert (tmp_path / "run" / "blood" / "P1" / "elisa.csv").is_file()
    assert (tmp_path / "run" / "blood" / "elisa_plates" / "plate" / "curve_il6.png").is_file()


def test_plate_errors_name_the_file(tmp_path):
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BloodInputError, match="junk.csv.*no 96/384-well grid"):
        read_plate(tmp_path / "junk.csv")
    grid, _ = synthetic_plate("ABCDEFGH", 12, seed=5)
    write_grid_csv(tmp_path / "nolabel.csv", grid, "ABCDEFGH")
    with pytest.raises(BloodInputError, match="nolabel.csv.*no analyte name"):
        read_plate(tmp_path / "nolabel.csv")
    with pytest.raises(BloodInputError, match="no plate layout"):
        analyse_plate(tmp_path / "nolabel.csv", tmp_path / "o", config=ElisaConfig())


def test_shipped_config_matches_code_defaults_for_new_sections():
    config = load_config()
    assert config.scrna == BloodConfig().scrna
    assert config.elisa == BloodConfig().elisa
