"""Gating plots for review: one PNG per gate, the parent's events on the gate's own axes."""

from __future__ import annotations

import logging
from pathlib import Path

import flowkit as fk
import matplotlib

matplotlib.use("Agg")  # files only: batch runs have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flowkit import Sample  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from blood.flow.compensate import file_spillover  # noqa: E402
from blood.outputs import write_png  # noqa: E402

LOG = logging.getLogger(__name__)


def channel_values(sample: Sample, strategy: fk.GatingStrategy,
                   dim: fk.Dimension | fk.QuadrantDivider) -> np.ndarray:
    """Values of one gate dimension, compensated and transformed as the gate defines them.

    Parameters
    ----------
    sample
        FlowKit sample.
    strategy
        Gating strategy holding the gate's matrices and transforms.
    dim
        Gate dimension or quadrant divider; it names a channel ($PnN) or, under a
        compensation matrix of the gates file, one of the matrix's fluorochromes.

    Returns
    -------
    numpy.ndarray
        One value per event.
    """
    channel = dim.dimension_ref if isinstance(dim, fk.QuadrantDivider) else dim.id
    events = sample.get_events(source="raw")
    comp = dim.compensation_ref
    if comp == "FCS":
        matrix = file_spillover(sample)
        if matrix is not None:
            events = matrix.apply(sample)
    elif comp not in (None, "uncompensated"):
        matrix = strategy.get_comp_matrix(comp)
        events = matrix.apply(sample)
        if channel not in sample.pnn_labels and channel in matrix.fluorochromes:
            # a Gating-ML spectrum matrix's fluorochrome: computed into its detector's column
            channel = matrix.detectors[matrix.fluorochromes.index(channel)]
    values = np.asarray(events[:, sample.get_channel_index(channel)], dtype=float)
    if dim.transformation_ref:
        xform = strategy.get_transform(dim.transformation_ref)
        values = np.asarray(xform.apply(values.reshape(-1, 1))).ravel()
    return values


def plot_gates(sample: Sample, strategy: fk.GatingStrategy, results: fk.GatingResults,
               out_dir: str | Path) -> list[Path]:
    """Write one PNG per gate (quadrant gates once) under ``out_dir``.

    A gate that cannot be drawn (boolean gates; unsupported shapes) is skipped with a log
    line: plots are for review and never fail an analysis.

    Returns
    -------
    list of pathlib.Path
        Files written.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for row in results.report.itertuples():
        name = row.quadrant_parent or row.gate_name
        key = (name, tuple(row.gate_path))
        if key in seen or row.gate_type == "BooleanGate":
            continue
        seen.add(key)
        try:
            gate = strategy.get_gate(name, gate_path=tuple(row.gate_path))
            figure = _draw(sample, strategy, results, gate, row)
        except Exception as error:  # noqa: BLE001 - review plots never stop the analysis
            LOG.warning("%s: no plot for gate %s (%s)", sample.id, name, error)
            continue
        written.append(write_png(figure, out_dir / f"gate_{_safe(name)}.png"))
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _draw(sample: Sample, strategy: fk.GatingStrategy, results: fk.GatingResults,
          gate: fk.gates.Gate, row: object) -> plt.Figure:
    parent = row.parent  # type: ignore[attr-defined]
    if parent in (None, "root"):
        mask = np.ones(sample.event_count, dtype=bool)
    else:
        mask = np.asarray(results.get_gate_membership(parent, gate_path=tuple(
            row.gate_path[:-1])))  # type: ignore[attr-defined]
    dims = gate.dimensions
    values = [channel_values(sample, strategy, d)[mask] for d in dims]
    labels = [_axis_label(d) for d in dims]
    figure, axis = plt.subplots(figsize=(4.5, 4))
    title = f"{sample.id}: {row.quadrant_parent or row.gate_name} in {parent}"  # type: ignore
    if len(dims) == 1:
        axis.hist(values[0], bins=200, color="0.3")
        axis.axvspan(dims[0].min if dims[0].min is not None else values[0].min(),
                     dims[0].max if dims[0].max is not None else values[0].max(),
                     color="tab:red", alpha=0.2)
        axis.set_xlabel(labels[0])
    else:
        if values[0].size:
            axis.hist2d(values[0], values[1], bins=200, norm=LogNorm(), cmap="viridis")
        _outline(axis, gate, values)
        axis.set_xlabel(labels[0])
        axis.set_ylabel(labels[1])
    axis.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


def _axis_label(dim: fk.Dimension | fk.QuadrantDivider) -> str:
    channel = dim.dimension_ref if isinstance(dim, fk.QuadrantDivider) else dim.id
    comp = "" if dim.compensation_ref in (None, "uncompensated") else " comp"
    xform = f" {dim.transformation_ref}" if dim.transformation_ref else ""
    return f"{channel}{comp}{xform}"


def _outline(axis: plt.Axes, gate: fk.gates.Gate, values: list[np.ndarray]) -> None:
    if isinstance(gate, fk.gates.PolygonGate):
        vertices = np.asarray(gate.vertices, dtype=float)
        closed = np.vstack([vertices, vertices[:1]])
        axis.plot(closed[:, 0], closed[:, 1], color="tab:red")
    elif isinstance(gate, fk.gates.RectangleGate):
        lo = [d.min if d.min is not None else v.min() for d, v in zip(gate.dimensions, values,
                                                                       strict=True)]
        hi = [d.max if d.max is not None else v.max() for d, v in zip(gate.dimensions, values,
                                                                       strict=True)]
        axis.add_patch(plt.Rectangle((lo[0], lo[1]), hi[0] - lo[0], hi[1] - lo[1],
                                     fill=False, color="tab:red"))
    elif isinstance(gate, fk.gates.QuadrantGate):
        x_div, y_div = gate.dimensions
        for v in x_div.values:
            axis.axvline(v, color="tab:red")
        for v in y_div.values:
            axis.axhline(v, color="tab:red")
