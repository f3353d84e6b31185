"""A Luminex xPONENT export through the ELISA arm: curves, every well, agreement, QC.

Every analyte's standard curve is fitted on Net MFI from all its standards, as xPONENT's
"fit of all standards" does (model ``elisa.xponent_model``, weights 1/max(|y|,
``elisa.xponent_weight_floor``)^``elisa.weight_power``); its working range is the longest run
of consecutive standard levels whose back-calculated recovery lies within
``elisa.recovery_window``. Every well is back-calculated; wells outside the working range are
flagged '<LLOQ' / '>ULOQ' and get no number. Wells with fewer than ``elisa.min_beads`` beads
are flagged (and left out with ``elisa.exclude_low_beads``). Plate sample names become
manifest sample_ids through ``<plate name>.samples.csv`` beside the export or
``elisa.sample_map``.

Outputs in ``OUT/blood/elisa_plates/<plate name>/``: ``wells.csv`` (every well and analyte:
Net MFI, beads, our concentration and flag, the instrument's result), ``standards.csv``,
``curves.csv`` (our and the instrument's coefficients, LLOQ, ULOQ), ``concentrations.csv``
(per sample), ``agreement.csv`` (ours against the instrument, per analyte and overall),
``xponent.json`` (header, repaired expected concentrations, low-bead wells, failed analytes),
``plate_qc.png`` and ``curve_<analyte>.png``.
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
from blood.elisa.quantify import Quantified, range_flags
from blood.elisa.xponent import XponentExport, read_xponent
from blood.errors import BloodInputError
from blood.outputs import write_csv, write_json

LOG = logging.getLogger(__name__)
SAMPLE_MAP_SUFFIX = ".samples.csv"
SAMPLE_MAP_COLUMNS = ("plate_sample", "sample_id")
AGREEMENT_FILE = "agreement.csv"
WELLS_FILE = "wells.csv"
ALL_ANALYTES = "all"


def sample_map_beside(plate: str | Path) -> Path:
    """The sample map beside a plate export: ``<name>.samples.csv`` for ``<name>.csv``."""
    plate = Path(plate)
    return plate.with_name(plate.stem + SAMPLE_MAP_SUFFIX)


def read_sample_map(path: str | Path, *, plate: str | Path) -> dict[str, str]:
    """Plate sample name -> manifest sample_id for one plate.

    The CSV has columns ``plate_sample, sample_id`` and optionally ``plate`` (the export's
    file name or stem; rows naming another plate are skipped, empty = every plate).

    Parameters
    ----------
    path
        The sample map CSV.
    plate
        The plate export the map is applied to.

    Returns
    -------
    dict
        Plate sample name -> sample_id.

    Raises
    ------
    BloodInputError
        Missing file or column, or one plate sample mapped to two sample_ids.
    """
    path, plate = Path(path), Path(plate)
    if not path.is_file():
        raise BloodInputError(f"{path}: sample map not found (elisa.sample_map)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in SAMPLE_MAP_COLUMNS if c not in table.columns]
    if missing:
        raise BloodInputError(f"{path}: sample map lacks column(s) {missing} (expected "
                              "plate_sample,sample_id[,plate])")
    if "plate" in table.columns:
        plates = table["plate"].str.strip()
        table = table.loc[plates.isin(("", plate.name, plate.stem))]
    mapping: dict[str, str] = {}
    for name, sample_id in zip(table["plate_sample"].str.strip(),
                               table["sample_id"].str.strip(), strict=True):
        if not name or not sample_id:
            continue
        if mapping.get(name, sample_id) != sample_id:
            raise BloodInputError(f"{path}: plate sample {name!r} is mapped to both "
                                  f"{mapping[name]!r} and {sample_id!r}")
        mapping[name] = sample_id
    return mapping


def _sample_map(path: Path, config: ElisaConfig) -> tuple[dict[str, str], Path | None]:
    beside = sample_map_beside(path)
    source = beside if beside.is_file() else config.sample_map
    if source is None:
        return {}, None
    return read_sample_map(source, plate=path), source


def _check_units(export: XponentExport, config: ElisaConfig) -> None:
    def norm(unit: str) -> str:
        return unit.replace(" ", "").lower()

    for analyte, unit in export.instrument["units"].dropna().items():
        if unit and norm(str(unit)) != norm(config.unit):
            raise BloodInputError(f"{export.path}: analyte {analyte!r} is in {unit}, the "
                                  f"config's elisa.unit is {config.unit}; set elisa.unit to "
                                  "the export's unit")


def _well_results(wells: pd.DataFrame, result: Quantified | None) -> pd.DataFrame:
    """Our in-sample concentration and range flag for every well of one analyte."""
    wells = wells.copy()
    if result is None:
        wells["flag"], wells["concentration"] = NO_CURVE, np.nan
        return wells
    response = wells["net_mfi"].to_numpy(dtype=float)
    flags = range_flags(result.curve, result.lloq, result.uloq, response)
    flags[~np.isfinite(response)] = ""
    in_well = np.where(flags == "", result.curve.concentration(response), np.nan)
    factor = np.where(wells["kind"] == "standard", 1.0, wells["dilution"].to_numpy())
    wells["flag"] = flags
    wells["concentration"] = in_well * factor
    return wells


def agreement_table(wells: pd.DataFrame) -> pd.DataFrame:
    """Our concentrations against the instrument's, per analyte and over all analytes.

    Compared: sample and control wells that the instrument reports as a number and that lie
    within our working range (flag ''), excluding low-bead wells when they were left out.

    Parameters
    ----------
    wells
        The ``wells.csv`` table: ``analyte, kind, flag, concentration, instrument_result,
        instrument_flag``.

    Returns
    -------
    pandas.DataFrame
        One row per analyte and a last row ``all``: ``n_compared``, ``median_abs_rel_diff``,
        ``p90_abs_rel_diff``, ``max_abs_rel_diff``, ``within_1pct``, ``within_5pct``,
        ``within_10pct`` (fractions), ``n_below_lloq``, ``n_above_uloq`` (our flags) and
        ``n_instrument_flagged`` (the instrument's '<' / '>' / NaN results).
    """
    measured = wells["kind"].isin(("sample", "control"))

    def summary(group: pd.DataFrame) -> dict[str, float]:
        both = (group["flag"] == "") & (group["instrument_flag"] == "") & \
            group["concentration"].notna() & group["instrument_result"].notna()
        rel = (group.loc[both, "concentration"] / group.loc[both, "instrument_result"]
               - 1).abs().to_numpy()
        stats = {"n_compared": int(both.sum())}
        if rel.size:
            stats.update(median_abs_rel_diff=float(np.median(rel)),
                         p90_abs_rel_diff=float(np.quantile(rel, 0.9)),
                         max_abs_rel_diff=float(rel.max()),
                         within_1pct=float(np.mean(rel <= 0.01)),
                         within_5pct=float(np.mean(rel <= 0.05)),
                         within_10pct=float(np.mean(rel <= 0.10)))
        stats.update(n_below_lloq=int((group["flag"] == "<LLOQ").sum()),
                     n_above_uloq=int((group["flag"] == ">ULOQ").sum()),
                     n_instrument_flagged=int((group["instrument_flag"] != "").sum()))
        return stats

    rows = [{"analyte": analyte, **summary(group)}
            for analyte, group in wells.loc[measured].groupby("analyte", sort=False)]
    rows.append({"analyte": ALL_ANALYTES, **summary(wells.loc[measured])})
    columns = ["analyte", "n_compared", "median_abs_rel_diff", "p90_abs_rel_diff",
               "max_abs_rel_diff", "within_1pct", "within_5pct", "within_10pct",
               "n_below_lloq", "n_above_uloq", "n_instrument_flagged"]
    return pd.DataFrame(rows, columns=columns)


def analyse_xponent(path: str | Path, out_dir: str | Path, *,
                    config: ElisaConfig) -> PlateResult:
    """Fit, back-calculate, flag and compare every analyte of an xPONENT export.

    Parameters
    ----------
    path
        The xPONENT CSV batch export.
    out_dir
        Plate output folder (created).
    config
        ELISA config (``xponent_model``, ``weight_power``, ``xponent_weight_floor``,
        ``recovery_window``, ``below_rule``, ``min_beads``, ``exclude_low_beads``,
        ``sample_map``, ``unit``, ``analytes``, ``plots``).

    Returns
    -------
    PlateResult
        Concentrations carry manifest sample_ids (mapped plate sample names).

    Raises
    ------
    BloodInputError
        Unreadable export, a sample map that does not fit, an analyte key that is not a
        valid name, a unit other than ``elisa.unit``, or no analyte whose curve could be
        fitted. A single analyte whose curve fails is recorded in ``curves.csv`` and
        ``xponent.json`` and the others go on.
    """
    path, out_dir = Path(path), Path(out_dir)
    try:
        export = read_xponent(path)
    except ValueError as error:
        raise BloodInputError(str(error)) from error
    _check_units(export, config)
    mapping, map_path = _sample_map(path, config)
    names = export.wells.loc[export.wells["kind"] == "sample", "sample"]
    keys = {analyte: analyte_key(analyte, config, path=path) for analyte in export.analytes}
    all_wells = export.wells.assign(
        sample_id=np.where(export.wells["kind"] == "sample",
                           export.wells["sample"].map(lambda n: mapping.get(n, n)), ""),
        low_beads=export.wells["count"].notna() & (export.wells["count"] < config.min_beads))
    concentrations, standards, curves, per_well, failed = [], [], [], [], {}
    for analyte in export.analytes:
        wells = all_wells.loc[all_wells["analyte"] == analyte]
        table = export.well_table(analyte).assign(
            sample_id=wells["sample_id"].to_numpy(), low_beads=wells["low_beads"].to_numpy())
        fit_wells = table.loc[~table["low_beads"]] if config.exclude_low_beads else table
        result, reason = quantify_analyte(fit_wells, config, path=path, analyte=analyte,
                                          model=config.xponent_model,
                                          weight_power=config.weight_power,
                                          weight_floor=config.xponent_weight_floor,
                                          exclusion="none")
        if result is None:
            failed[analyte] = reason
            LOG.warning("%s", reason)
        per_well.append(_well_results(wells, result).assign(
            excluded=wells["low_beads"].to_numpy() & config.exclude_low_beads))
        curves.append(_curve_row(export, analyte, keys[analyte], result, failed.get(analyte)))
        if result is None:
            continue
        low = set(table.loc[table["low_beads"] & (table["kind"] == "sample"), "sample_id"])
        concentrations.append(result.samples.assign(
            analyte=analyte, lloq=result.lloq, uloq=result.uloq,
            bead_flag=lambda t, low=low: t["sample_id"].isin(low)))
        standards.append(result.standards.assign(analyte=analyte))
        if config.plots:
            from blood.elisa.plots import plot_curve

            plot_curve(result, out_dir / f"curve_{keys[analyte]}.png",
                       title=f"{path.name}: {analyte}", unit=config.unit,
                       reference=export.instrument_curve(analyte),
                       reference_label="xPONENT's own 5PL", ylabel="Net MFI",
                       low_bead_samples=low)
    if not concentrations:
        raise BloodInputError(f"{path}: no analyte's standard curve fits "
                              f"({'; '.join(failed.values())})")
    wells_out = _wells_table(pd.concat(per_well, ignore_index=True))
    table = pd.concat(concentrations, ignore_index=True).loc[:, list(CONCENTRATION_COLUMNS)]
    agreement = agreement_table(wells_out.loc[~wells_out["excluded"]])
    write_csv(wells_out, out_dir / WELLS_FILE)
    write_csv(pd.concat(standards, ignore_index=True), out_dir / "standards.csv")
    write_csv(pd.DataFrame(curves), out_dir / CURVES_FILE)
    write_csv(table, out_dir / "concentrations.csv")
    write_csv(agreement, out_dir / AGREEMENT_FILE)
    overall = agreement.iloc[-1].to_dict()
    low_wells = sorted(set(wells_out.loc[wells_out["low_beads"], "well"]))
    write_json({"file": str(path), "format": "Luminex xPONENT CSV export",
                "header": {k: export.header.get(k, "") for k in
                           ("Program", "Build", "SN", "Batch", "Date", "ProtocolName")},
                "analytes": export.analytes, "wells": int(wells_out["well"].nunique()),
                "sample_map": str(map_path) if map_path else None,
                "expected_concentration_repairs": export.repairs,
                "min_beads": config.min_beads, "low_bead_wells": low_wells,
                "failed_analytes": failed,
                "agreement_with_instrument": {k: overall[k] for k in overall if k != "analyte"}},
               out_dir / "xponent.json")
    if config.plots:
        from blood.elisa.plots import plot_plate

        plot_plate(wells_out, out_dir / "plate_qc.png", title=f"{path.name}: plate QC",
                   min_beads=config.min_beads)
    plate_names = sorted(set(names))
    hint = (f"{path.name} (plate samples: {', '.join(plate_names[:6])}"
            f"{' ...' if len(plate_names) > 6 else ''}); name plate samples' sample_ids in "
            f"{sample_map_beside(path).name} beside it or elisa.sample_map "
            "(plate_sample,sample_id)")
    method = (f"Luminex xPONENT export: {config.xponent_model.upper()} on Net MFI, all "
              f"standards, weights 1/max(|y|,{config.xponent_weight_floor:g})"
              f"^{config.weight_power:g}; working range = longest run of standard levels "
              f"recovering within {config.recovery_window[0]:g}-"
              f"{config.recovery_window[1]:g}%; dilution applied; low-bead wells "
              f"(< {config.min_beads}) {'left out' if config.exclude_low_beads else 'flagged'}")
    return PlateResult(path, path, table, pd.concat(standards, ignore_index=True),
                       method=method, samples_hint=hint, failed=failed)


def _wells_table(wells: pd.DataFrame) -> pd.DataFrame:
    instrument = wells["result"]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = wells["concentration"] / instrument - 1
    return pd.DataFrame({
        "well": wells["well"], "location": wells["location"], "plate_sample": wells["sample"],
        "sample_id": wells["sample_id"], "kind": wells["kind"], "analyte": wells["analyte"],
        "median_mfi": wells["median"], "net_mfi": wells["net_mfi"], "count": wells["count"],
        "low_beads": wells["low_beads"], "excluded": wells["excluded"],
        "dilution": np.where(wells["kind"] == "standard", 1.0, wells["dilution"]),
        "expected": wells["expected"], "concentration": wells["concentration"],
        "flag": wells["flag"], "instrument_result": instrument,
        "instrument_text": wells["result_text"], "instrument_flag": wells["result_flag"],
        "rel_diff": rel.where(wells["flag"] == "")})


def _curve_row(export: XponentExport, analyte: str, key: str, result: Quantified | None,
               error: str | None) -> dict[str, object]:
    row = curve_row(analyte, key, result, error or "")
    inst = export.instrument.loc[analyte]
    row.update({f"instrument_{k}": inst.get(k, np.nan) for k in ("A", "B", "C", "D", "F")})
    row.update(instrument_type=inst.get("type", ""), instrument_r2=inst.get("r2", np.nan),
               units=inst.get("units", ""))
    return row
