"""One plate export + layout -> per-analyte curves, concentrations, QC flags and plots.

Plate outputs go to ``OUT/blood/elisa_plates/<plate name>/``: ``wells.csv`` (values, layout,
bead flags), ``standards.csv`` (recovery, used), ``curves.csv`` (per analyte: fitted or
failed and why), ``concentrations.csv`` (every sample and analyte) and
``curve_<analyte>.png``. Several manifest rows may point at one plate. An analyte whose
standard curve does not fit (:class:`blood.elisa.quantify.CurveRejected`) reports no
concentration: a single-analyte plate fails, on a multi-analyte plate that analyte fails and
the others go on.
A Luminex xPONENT export (recognised by its content) carries its own layout and is handled
by :mod:`blood.elisa.multiplex`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from blood.config import ElisaConfig
from blood.elisa.curves import (
    CONCENTRATION_COLUMNS,
    CURVES_FILE,
    NO_CURVE,
    PlateResult,
    analyte_key,
    curve_row,
    quantify_analyte,
)
from blood.elisa.layout import layout_beside, read_layout, wells_for
from blood.elisa.plate import read_plate
from blood.errors import BloodInputError
from blood.features import FeatureInfo
from blood.outputs import write_csv

LOG = logging.getLogger(__name__)
PLATES_DIR = "elisa_plates"
SAMPLE_FILE = "elisa.csv"
def find_layout(plate: str | Path, config: ElisaConfig) -> Path:
    """``<name>.layout.csv`` beside the plate if present, else ``elisa.layout``.

    Raises
    ------
    BloodInputError
        Neither exists.
    """
    beside = layout_beside(plate)
    if beside.is_file():
        return beside
    if config.layout is not None:
        return config.layout
    raise BloodInputError(f"{plate}: no plate layout: put {beside.name} beside it or set "
                          "elisa.layout in the blood config")


def analyse_plate(path: str | Path, out_dir: str | Path, *, config: ElisaConfig,
                  default_analyte: str = "") -> PlateResult:
    """Read, blank-correct, fit and quantify every analyte of one plate; write its outputs.

    Parameters
    ----------
    path
        Plate export (CSV / Excel grid or long / Luminex table, or a Luminex xPONENT CSV
        export, recognised by its content: see :func:`blood.elisa.multiplex.analyse_xponent`).
    out_dir
        Plate output folder (created).
    config
        ELISA config.
    default_analyte
        Analyte of unlabelled grids (the manifest ``stain``).

    Returns
    -------
    PlateResult

    Raises
    ------
    BloodInputError
        Unreadable plate or layout, or no analyte whose curve fits (a flat or
        non-monotonic curve, too few standards recovering), naming the file, the analyte and
        what was wrong. One failed analyte of several is recorded in ``curves.csv`` and
        :attr:`PlateResult.failed`, and the others go on.
    """
    path, out_dir = Path(path), Path(out_dir)
    if not path.is_file():
        raise BloodInputError(f"{path}: plate export not found")
    from blood.elisa.xponent import is_xponent

    if is_xponent(path):
        from blood.elisa.multiplex import analyse_xponent

        return analyse_xponent(path, out_dir, config=config)
    layout_path = find_layout(path, config)
    layout = read_layout(layout_path)
    plate = read_plate(path, default_analyte=default_analyte)
    concentrations, standards, wells_out, curves = [], [], [], []
    failed: dict[str, str] = {}
    for analyte in pd.unique(plate["analyte"]):
        wells = wells_for(layout, plate, analyte, path=path)
        wells["low_beads"] = wells["beads"].notna() & (wells["beads"] < config.min_beads)
        wells_out.append(wells.assign(analyte=analyte))
        fit_wells = wells.loc[~wells["low_beads"]] if config.exclude_low_beads else wells
        key = analyte_key(analyte, config, path=path)
        result, reason = quantify_analyte(fit_wells, config, path=path, analyte=analyte,
                                          model=config.model,
                                          weight_power=config.weight_power)
        curves.append(curve_row(analyte, key, result, reason))
        if result is None:
            failed[analyte] = reason
            LOG.warning("%s", reason)
            continue
        low = wells.loc[wells["low_beads"] & (wells["kind"] == "sample"), "sample_id"]
        samples = result.samples.assign(analyte=analyte, lloq=result.lloq, uloq=result.uloq,
                                        bead_flag=lambda t, low=set(low): t["sample_id"].isin(low))
        concentrations.append(samples)
        standards.append(result.standards.assign(analyte=analyte))
        if config.plots:
            from blood.elisa.plots import plot_curve

            plot_curve(result, out_dir / f"curve_{key}.png",
                       title=f"{path.name}: {analyte}", unit=config.unit)
    if not concentrations:
        # every curve failed: the plate has nothing to report, each of its rows fails
        raise BloodInputError("; ".join(failed.values()))
    table = pd.concat(concentrations, ignore_index=True).loc[:, list(CONCENTRATION_COLUMNS)]
    std = pd.concat(standards, ignore_index=True)
    write_csv(pd.concat(wells_out, ignore_index=True), out_dir / "wells.csv")
    write_csv(std, out_dir / "standards.csv")
    write_csv(pd.DataFrame(curves), out_dir / CURVES_FILE)
    write_csv(table, out_dir / "concentrations.csv")
    method = (f"{config.model.upper()} standard curve (weights 1/y^{config.weight_power:g}), "
              "blank-corrected, standards outside elisa.recovery_window left out, dilution "
              "applied")
    return PlateResult(path, layout_path, table, std, method=method,
                       samples_hint=f"layout {layout_path}", failed=failed)


def sample_features(result: PlateResult, sample_id: str, out_dir: str | Path, *,
                    config: ElisaConfig) -> tuple[dict[str, float], dict[str, FeatureInfo]]:
    """One sample's ``elisa_<analyte>_<unit>`` and ``elisa_<analyte>_cens`` features.

    Writes ``out_dir/elisa.csv``. With several dilutions of a sample, in-range results are
    averaged; with none in range, the '<LLOQ' value of the least diluted well is used (by
    ``below_rule``), else NaN ('>ULOQ' is never extrapolated). ``_cens`` says which:
    0 = measured within the working range, -1 = below the LLOQ (left-censored), 1 = above the
    ULOQ (right-censored), empty = no usable well. An analyte whose curve failed on the
    plate gives both empty (no value, no censoring) and an ``elisa.csv`` row flagged
    'no curve' with the reason.

    Raises
    ------
    BloodInputError
        The sample is not on the plate.
    """
    rows = result.concentrations.loc[result.concentrations["sample_id"] == sample_id]
    if rows.empty:
        hint = result.samples_hint or f"layout {result.layout}"
        raise BloodInputError(f"{result.path}: sample {sample_id!r} is not on the plate "
                              f"{hint}")
    if result.failed:
        no_curve = pd.DataFrame({"sample_id": sample_id, "analyte": list(result.failed),
                                 "concentration": np.nan, "flag": NO_CURVE,
                                 "note": list(result.failed.values())})
        rows = pd.concat([rows, no_curve], ignore_index=True)
    write_csv(rows.assign(unit=config.unit, plate=str(result.path)),
              Path(out_dir) / SAMPLE_FILE)
    suffix = config.unit.lower().replace("/", "_")
    method = result.method or "standard curve, dilution applied"
    values: dict[str, float] = {}
    infos: dict[str, FeatureInfo] = {}
    for analyte, group in rows.groupby("analyte", sort=False):
        in_range = group.loc[group["flag"] == ""].dropna(subset=["concentration"])
        below = group.loc[group["flag"] == "<LLOQ"].sort_values("dilution")
        above = group.loc[group["flag"] == ">ULOQ"]
        if len(in_range):
            value, censored = float(in_range["concentration"].mean()), 0.0
        elif len(below):
            value, censored = float(below["concentration"].iloc[0]), -1.0
        else:
            value, censored = np.nan, 1.0 if len(above) else np.nan
        key = analyte_key(str(analyte), config, path=result.path)
        name, cens = f"elisa_{key}_{suffix}", f"elisa_{key}_cens"
        values[name], values[cens] = value, censored
        keys = ("elisa.model; elisa.weight_power; elisa.recovery_window; elisa.below_rule; "
                "elisa.min_curve_span; elisa.min_curve_tau; elisa.min_recovering_standards; "
                "elisa.layout; elisa.analytes; elisa.xponent_model; elisa.sample_map")
        infos[name] = FeatureInfo(
            name, f"{analyte} concentration ({config.unit})", config.unit, "elisa",
            f"{method}; <LLOQ by rule {config.below_rule}, >ULOQ NaN (see {cens}); empty "
            f"where the plate's {analyte} curve failed (flag '{NO_CURVE}'; reason in "
            "OUT/blood/elisa_plates/<plate>/curves.csv); flags in "
            "OUT/blood/<sample_id>/elisa.csv", keys, "blood.elisa")
        infos[cens] = FeatureInfo(
            cens, f"{analyte} censoring: 0 measured, -1 below LLOQ, 1 above ULOQ", "category",
            "elisa", f"position of the sample's response against the working range "
            f"(LLOQ..ULOQ) of the {analyte} standard curve; -1: {name} is the below_rule "
            f"value ({config.below_rule}), 1: {name} is NaN; empty: no usable well or no "
            "standard curve", keys,
            "blood.elisa")
    return values, infos
