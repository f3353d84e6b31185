"""One FCS file end to end: read -> gate (with the gating file's compensation and transforms)
-> populations (+ absolute counts) -> acquisition QC -> plots -> features."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import flowkit as fk
import numpy as np
import pandas as pd
from flowkit.exceptions import QuadrantReferenceError

from blood.config import FlowConfig, FlowFeature, FlowQcConfig
from blood.errors import BloodInputError
from blood.flow.compensate import file_spillover
from blood.flow.gates import Gating, load_gating
from blood.flow.plots import plot_gates
from blood.flow.populations import BeadCounting, add_absolute_counts, population_table
from blood.flow.qc import AcquisitionQc, acquisition_qc
from blood.flow.read import read_fcs
from blood.outputs import write_csv, write_json

POPULATIONS_FILE = "populations.csv"
QC_FILE = "qc.json"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class FlowResult:
    """Result of :func:`analyse_fcs`.

    Attributes
    ----------
    populations
        One row per gate: population, parent, count, pct_parent, pct_total[, cells_per_ul].
    qc
        Acquisition QC.
    quirks
        File irregularities worked around while reading.
    files
        Files written.
    """

    populations: pd.DataFrame
    qc: AcquisitionQc
    quirks: tuple[str, ...]
    files: tuple[Path, ...] = field(default=())


def analyse_fcs(fcs_path: str | Path, gates_path: str | Path, out_dir: str | Path, *,
                beads: BeadCounting | None = None, qc: FlowQcConfig | None = None,
                plots: bool = True, wsp_sample: str | None = None) -> FlowResult:
    """Gate one FCS file and write ``populations.csv``, ``qc.json`` and gating plots.

    Parameters
    ----------
    fcs_path
        FCS 2.0 / 3.0 / 3.1 file.
    gates_path
        Gating-ML 2.0 (.xml), FlowJo workspace (.wsp) or YAML gates; compensation and
        transforms are taken from it.
    out_dir
        Folder for the outputs (created).
    beads
        Counting beads: adds ``cells_per_ul``.
    qc
        QC thresholds (defaults when None).
    plots
        Write one PNG per gate under ``out_dir/plots``.
    wsp_sample
        FlowJo workspace: the workspace sample whose gates apply to this file (default: the
        sample named like the file, else the workspace's only sample).

    Returns
    -------
    FlowResult

    Raises
    ------
    BloodInputError
        Unreadable FCS or gates, channels named by the gates that the file lacks, bad beads,
        or a failed acquisition QC check (too few events: ``qc.json`` is written first).
    """
    fcs_path, out_dir = Path(fcs_path), Path(out_dir)
    fcs = read_fcs(fcs_path)
    gating = load_gating(gates_path, fcs_path=fcs_path, wsp_sample=wsp_sample)
    check_gate_channels(gating, fcs.channels, fcs_path)
    if uses_file_spillover(gating):  # a malformed $SPILLOVER is named, not a reshape error
        file_spillover(fcs.sample, source=fcs_path)
    quality = acquisition_qc(fcs.sample, **(qc or FlowQcConfig()).model_dump())
    record = {"file": str(fcs_path), "gates": str(gating.path), "gates_format": gating.source,
              "gates_sample": gating.sample, "fcs_version": fcs.version,
              "channels": fcs.channels, "quirks": list(fcs.quirks), **quality.as_dict()}
    if quality.failures:
        # qc.json says why; no populations.csv (an earlier run's goes), so no percentage
        # of nothing is ever read
        write_json(record, out_dir / QC_FILE)
        (out_dir / POPULATIONS_FILE).unlink(missing_ok=True)
        raise BloodInputError(f"{fcs_path}: acquisition QC failed: "
                              f"{'; '.join(quality.failures)} (see {out_dir / QC_FILE})")
    try:
        results = gating.strategy.gate_sample(fcs.sample)
    except (LookupError, ValueError) as error:
        raise BloodInputError(f"{fcs_path}: gates of {gating.path} do not fit this file "
                              f"({type(error).__name__}: {error}); channels: "
                              f"{fcs.channels}") from error
    table = population_table(results, total_events=fcs.event_count)
    if beads is not None:
        table = add_absolute_counts(table, beads, source=str(fcs_path))
    files = [write_csv(table, out_dir / POPULATIONS_FILE)]
    files.append(write_json(record, out_dir / QC_FILE))
    if plots:
        files.extend(plot_gates(fcs.sample, gating.strategy, results, out_dir / PLOTS_DIR))
    return FlowResult(table, quality, fcs.quirks, tuple(files))


# compensation references under which a dimension names a channel of the file ($PnN)
FILE_CHANNEL_REFS = (None, "uncompensated", "FCS")


def check_gate_channels(gating: Gating, channels: list[str], fcs_path: Path) -> None:
    """Check that every gate dimension can be computed from the file's channels.

    FlowKit's own error for a missing channel is a bare ``KeyError`` naming neither the gate
    nor the channel. A dimension is checked against what it is computed from:

    - uncompensated, or compensated by the file's own spillover (``FCS``): a channel of the
      file ($PnN);
    - compensated by a matrix of the gates file (a Gating-ML ``spectrumMatrix``, a FlowJo
      matrix): a channel of the file or one of the matrix's fluorochromes, which are computed
      from the matrix's detectors, so those must all be channels of the file;
    - a ratio dimension: its ratio transform, whose two channels must be channels of the
      file (FlowKit takes them uncompensated, by $PnN).

    Parameters
    ----------
    gating
        The gates, as loaded by :func:`blood.flow.gates.load_gating`.
    channels
        The file's channel names ($PnN).
    fcs_path
        The FCS file, for error messages.

    Raises
    ------
    BloodInputError
        Naming the file, the gates file and the gate (or matrix): a channel the file lacks
        (with the file's channels), matrix detectors the file lacks, a compensation matrix or
        ratio transform the gates file does not define.
    """
    strategy = gating.strategy
    prefix = f"{fcs_path}: gates of {gating.path} do not fit this file"
    for gate_id, dim in _dimensions(strategy):
        via, fluorochromes = "", ()
        if isinstance(dim, fk.RatioDimension):
            names = _ratio_channels(strategy, dim.ratio_ref, gate_id, prefix)
            via = f" (in ratio transform '{dim.ratio_ref}')"
        else:
            names = [dim.dimension_ref if isinstance(dim, fk.QuadrantDivider) else dim.id]
            fluorochromes = _matrix_fluorochromes(strategy, dim.compensation_ref,
                                                  channels, gate_id, prefix)
        for name in names:
            if name in channels or name in fluorochromes:
                continue
            alternatives = (f"; or a fluorochrome of compensation matrix "
                            f"'{dim.compensation_ref}': {', '.join(fluorochromes)}"
                            if fluorochromes else "")
            raise BloodInputError(
                f"{prefix}: gate '{gate_id}' uses channel '{name}'{via}, which the file "
                f"does not have; use one of its channels ($PnN): {', '.join(channels)}"
                f"{alternatives}")


def _dimensions(strategy: fk.GatingStrategy):
    """Every gate's dimensions (quadrant gates: their dividers), as ``(gate id, dim)``."""
    for gate_id, gate_path in strategy.get_gate_ids():
        try:
            gate = strategy.get_gate(gate_id, gate_path=gate_path)
        except QuadrantReferenceError:  # a quadrant: its gate's dividers are checked
            continue
        for dim in getattr(gate, "dimensions", None) or ():
            yield gate_id, dim


def uses_file_spillover(gating: Gating) -> bool:
    """Whether a gate dimension is compensated by the FCS file's own spillover (``FCS``)."""
    return any(getattr(dim, "compensation_ref", None) == "FCS"
               for _, dim in _dimensions(gating.strategy))


def _matrix_fluorochromes(strategy: fk.GatingStrategy, comp_ref: str | None,
                          channels: list[str], gate_id: str, prefix: str) -> tuple[str, ...]:
    """The names a dimension compensated by ``comp_ref`` may use besides the file's channels:
    the fluorochromes of the gates file's matrix, once its detectors are found in the file."""
    if comp_ref in FILE_CHANNEL_REFS:
        return ()
    matrix = strategy.comp_matrices.get(comp_ref)
    if matrix is None:
        raise BloodInputError(f"{prefix}: gate '{gate_id}' is compensated by matrix "
                              f"'{comp_ref}', which the gates file does not define (it "
                              f"defines: {', '.join(strategy.comp_matrices) or 'none'})")
    missing = [d for d in matrix.detectors if d not in channels]
    if missing:
        raise BloodInputError(
            f"{prefix}: compensation matrix '{comp_ref}' is computed from detectors the file "
            f"does not have: {', '.join(missing)}; its channels ($PnN): {', '.join(channels)}")
    # FlowJo and FlowKit leave fluorochromes blank when a matrix has none of its own
    return tuple(f for f in matrix.fluorochromes if f)


def _ratio_channels(strategy: fk.GatingStrategy, ratio_ref: str, gate_id: str,
                    prefix: str) -> list[str]:
    """The two channels of the ratio transform a ratio dimension is computed from."""
    transform = strategy.transformations.get(ratio_ref)
    if not isinstance(transform, fk.transforms.RatioTransform):
        raise BloodInputError(f"{prefix}: gate '{gate_id}' uses ratio transform "
                              f"'{ratio_ref}', which the gates file does not define as a "
                              "ratio (fratio)")
    return list(transform.dimensions)


def flow_features(populations: pd.DataFrame, features: list[FlowFeature], *,
                  source: str) -> dict[str, float]:
    """Compute configured features from a populations table.

    Parameters
    ----------
    populations
        Output of :func:`analyse_fcs`.
    features
        Feature definitions of the flow config.
    source
        The FCS file, for error messages.

    Returns
    -------
    dict
        Feature name -> value (NaN when the denominator is empty).

    Raises
    ------
    BloodInputError
        A feature names a population the gates do not define, or asks for absolute counts
        without beads.
    """
    counts = dict(zip(populations["population"], populations["count"], strict=True))
    values: dict[str, float] = {}
    for feature in features:
        for pop in (feature.population, feature.of):
            if pop is not None and pop not in counts:
                raise BloodInputError(f"{source}: feature {feature.name} needs population "
                                      f"{pop!r}, not in the gates ({sorted(counts)})")
        if feature.measure == "per_ul":
            if "cells_per_ul" not in populations:
                raise BloodInputError(f"{source}: feature {feature.name} needs counting "
                                      "beads (flow.beads) for cells per uL")
            row = populations.loc[populations["population"] == feature.population]
            values[feature.name] = float(row["cells_per_ul"].iloc[0])
            continue
        if feature.of is None:
            raise BloodInputError(f"{source}: feature {feature.name} (pct) needs 'of'")
        denominator = counts[feature.of]
        values[feature.name] = (100.0 * counts[feature.population] / denominator
                                if denominator else np.nan)
    return values


def beads_from_config(config: FlowConfig) -> BeadCounting | None:
    """The bead settings of a flow config as a :class:`BeadCounting` (None without beads)."""
    if config.beads is None:
        return None
    return BeadCounting(config.beads.gate, config.beads.beads_per_test,
                        config.beads.sample_volume_ul)
