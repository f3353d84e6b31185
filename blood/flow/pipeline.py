"""One FCS file end to end: read -> gate (with the gating file's compensation and transforms)
-> populations (+ absolute counts) -> acquisition QC -> plots -> features."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from blood.config import FlowConfig, FlowFeature, FlowQcConfig
from blood.errors import BloodInputError
from blood.flow.gates import load_gating
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
        Unreadable FCS or gates, channels named by the gates that the file lacks, bad beads.
    """
    fcs_path, out_dir = Path(fcs_path), Path(out_dir)
    fcs = read_fcs(fcs_path)
    gating = load_gating(gates_path, fcs_path=fcs_path, wsp_sample=wsp_sample)
    _check_gate_channels(gating, fcs.channels, fcs_path)
    try:
        results = gating.strategy.gate_sample(fcs.sample)
    except (LookupError, ValueError) as error:
        raise BloodInputError(f"{fcs_path}: gates of {gating.path} do not fit this file "
                              f"({type(error).__name__}: {error}); channels: "
                              f"{fcs.channels}") from error
    table = population_table(results, total_events=fcs.event_count)
    if beads is not None:
        table = add_absolute_counts(table, beads, source=str(fcs_path))
    quality = acquisition_qc(fcs.sample, **(qc or FlowQcConfig()).model_dump())
    files = [write_csv(table, out_dir / POPULATIONS_FILE)]
    files.append(write_json({"file": str(fcs_path), "gates": str(gating.path),
                             "gates_format": gating.source, "gates_sample": gating.sample,
                             "fcs_version": fcs.version,
                             "channels": fcs.channels, "quirks": list(fcs.quirks),
                             **quality.as_dict()}, out_dir / QC_FILE))
    if plots:
        files.extend(plot_gates(fcs.sample, gating.strategy, results, out_dir / PLOTS_DIR))
    return FlowResult(table, quality, fcs.quirks, tuple(files))


def _check_gate_channels(gating, channels: list[str], fcs_path: Path) -> None:
    """Every channel a gate names must be a channel of the file (FlowKit's own error is a bare
    ``KeyError`` naming neither the gate nor the channel)."""
    import flowkit as fk
    from flowkit.exceptions import QuadrantReferenceError

    strategy = gating.strategy
    for gate_id, gate_path in strategy.get_gate_ids():
        try:
            gate = strategy.get_gate(gate_id, gate_path=gate_path)
        except QuadrantReferenceError:  # a quadrant: its gate's dividers are checked
            continue
        for dim in getattr(gate, "dimensions", None) or ():
            if isinstance(dim, fk.QuadrantDivider):
                channel = dim.dimension_ref
            elif isinstance(dim, fk.Dimension):
                channel = dim.id
            else:  # ratio dimensions name a transform, not a channel
                continue
            if channel not in channels:
                raise BloodInputError(
                    f"{fcs_path}: gates of {gating.path} do not fit this file: gate "
                    f"'{gate_id}' uses channel '{channel}', which the file does not have; use "
                    f"one of its channels ($PnN): {', '.join(channels)}")


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
