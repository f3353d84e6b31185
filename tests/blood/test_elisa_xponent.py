"""The Luminex xPONENT reader on a real 30-plex export, against the instrument's own fits.

Data: ../shared/data/elisa/drlumi/plate1.csv (drLumi's xPONENT 3.1 export, see SOURCE.txt).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from blood.elisa.curve import fit_logistic
from blood.elisa.xponent import is_xponent, read_xponent

DATA = Path(os.environ.get("HCCBIO_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
PLATE = DATA / "elisa" / "drlumi" / "plate1.csv"
pytestmark = pytest.mark.skipif(not PLATE.exists() and os.environ.get("CI") != "true",
                                reason=f"shared data not found at {PLATE}")


@pytest.fixture(scope="module")
def export():
    return read_xponent(PLATE)


def test_reads_every_block_well_and_analyte(export):
    assert is_xponent(PLATE)
    assert export.header["Program"] == "xPONENT" and len(export.analytes) == 30
    wells = export.wells
    assert len(wells) == 96 * 30
    assert (wells.groupby("analyte")["kind"].apply(lambda k: (k == "standard").sum()) == 17).all()
    assert set(export.instrument["type"]) == {"Logistic 5P"}
    assert wells.loc[wells["kind"] == "sample", "dilution"].eq(2).all()
    # out-of-range results stay text with a flag, never numbers
    assert (wells["result_flag"] == "<").sum() > 0
    assert wells.loc[wells["result_flag"] != "", "result"].isna().all()


def test_lost_decimal_points_are_repaired_and_recorded(export):
    assert any("FGF Standard5: 215625 read as 215.625" in r for r in export.repairs)
    std = export.wells[export.wells["kind"] == "standard"].drop_duplicates(["analyte", "sample"])
    std = std.assign(level=std["sample"].str[8:].astype(int)).sort_values(["analyte", "level"])
    for analyte, group in std.groupby("analyte"):
        ratios = group["expected"].to_numpy()[:-1] / group["expected"].to_numpy()[1:]
        np.testing.assert_allclose(ratios, 2.0, rtol=1e-6, err_msg=analyte)  # 2-fold series


def test_instrument_curve_reproduces_its_own_results(export):
    wells = export.wells
    for analyte in export.analytes:
        sub = wells[(wells["analyte"] == analyte) & (wells["result_flag"] == "")]
        back = export.instrument_curve(analyte).concentration(sub["net_mfi"].to_numpy())
        np.testing.assert_allclose(back * sub["dilution"].to_numpy(), sub["result"],
                                   rtol=1e-9, err_msg=analyte)


def test_bead_counts_are_read_for_low_bead_flags(export):
    counts = export.wells["count"]
    assert counts.notna().all() and (counts >= 0).all()
    assert export.well_table("IL6")["count"].equals(
        export.wells.loc[export.wells["analyte"] == "IL6", "count"].reset_index(drop=True))


@pytest.mark.parametrize("analyte", ["IL6", "IL10", "VEGF"])
def test_our_5pl_agrees_with_the_instrument_within_the_working_range(export, analyte):
    table = export.well_table(analyte)
    std = table[table["kind"] == "standard"]
    fit = fit_logistic(std["concentration"], std["value"], model="5pl", weight_power=2)
    wells = export.wells[(export.wells["analyte"] == analyte) & (export.wells["result_flag"] == "")]
    in_well = wells["result"].to_numpy() / wells["dilution"].to_numpy()
    inside = (in_well >= std["concentration"].min()) & (in_well <= std["concentration"].max())
    ours = fit.concentration(wells["net_mfi"].to_numpy())[inside]
    relative = np.abs(ours / in_well[inside] - 1)
    assert inside.sum() > 30
    # measured: median 0.25 % (IL6), 0.0 % (IL10), 0.6 % (VEGF); 91 %, 100 %, 100 % within 5 %
    assert np.median(relative) < 0.05
    assert np.mean(relative < 0.10) > 0.8
