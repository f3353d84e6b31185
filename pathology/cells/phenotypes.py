"""Marker positivity and phenotypes per cell, from cells.parquet columns and a stain panel.

Per marker: the compartment value (nucleus, ring or the larger), optional background
subtraction, a fixed or per-slide automatic threshold (Otsu, Gaussian mixture) whose value is
returned for the slide's outputs, IHC intensity bins (0/1+/2+/3+) and the H-score, with
DAB-like pigment never counted positive. Phenotypes are rules over marker states and
morphology; a cell may satisfy several (a CD8+PD-1+ cell is also a CD8+ T cell); its ``label``
is the first phenotype it satisfies, in panel order, else ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from skimage.filters import threshold_otsu

from pathology.cells.panels import Marker, Panel, PanelError, Threshold
from pathology.cells.pigment import pigment_mask
from pathology.config import PhenotypesSection
from pathology.io.metadata import safe_channel_name

OTHER = "other"
GMM_MAX_CELLS = 200_000


@dataclass(frozen=True)
class MarkerCall:
    """How one marker was called on one slide (recorded in features.json)."""

    marker: str
    column: str
    method: str
    threshold: float
    background: float
    n_cells: int
    n_positive: int
    n_pigment_excluded: int = 0
    bin_counts: tuple[int, int, int, int] | None = None  # 0, 1+, 2+, 3+
    transform: str = "none"  # the fitting scale of automatic thresholds
    cofactor: float | None = None  # transform asinh
    zero_fraction: float = 0.0  # cells whose value is 0 (count channels)

    @property
    def percent_positive(self) -> float:
        """Positive cells in percent of all cells (NaN without cells)."""
        return 100.0 * self.n_positive / self.n_cells if self.n_cells else float("nan")

    @property
    def h_score(self) -> float | None:
        """IHC H-score ``1 x %1+ + 2 x %2+ + 3 x %3+`` (0-300); None without bins."""
        if self.bin_counts is None or not self.n_cells:
            return None
        return float(sum(k * c for k, c in enumerate(self.bin_counts)) * 100.0 / self.n_cells)

    def to_json(self) -> dict:
        """JSON record."""
        return {"marker": self.marker, "column": self.column, "method": self.method,
                "threshold": self.threshold, "background": self.background,
                "n_cells": self.n_cells, "n_positive": self.n_positive,
                "n_pigment_excluded": self.n_pigment_excluded,
                "bin_counts": list(self.bin_counts) if self.bin_counts else None,
                "percent_positive": self.percent_positive, "h_score": self.h_score,
                "transform": self.transform, "cofactor": self.cofactor,
                "zero_fraction": self.zero_fraction}


@dataclass
class Phenotyping:
    """Per-cell results of :func:`classify_cells`."""

    positive: dict[str, np.ndarray]
    phenotypes: dict[str, np.ndarray]
    label: np.ndarray
    calls: dict[str, MarkerCall]
    intensity_bin: dict[str, np.ndarray] = field(default_factory=dict)
    pigment: dict[str, np.ndarray] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per cell: ``phenotype``, ``<marker>_pos``, ``<marker>_bin``, ``pigment``."""
        data: dict[str, np.ndarray] = {"phenotype": self.label}
        for name, values in self.positive.items():
            data[f"{safe_channel_name(name)}_pos"] = values
        for name, values in self.intensity_bin.items():
            data[f"{safe_channel_name(name)}_bin"] = values
        for name, values in self.pigment.items():
            data[f"{safe_channel_name(name)}_pigment"] = values
        for name, values in self.phenotypes.items():
            data[f"is_{name}"] = values
        return pd.DataFrame(data)


def marker_column(marker: Marker, *, kind: str, compartment: str | None = None) -> str:
    """The cells.parquet column of a marker in one compartment (``nucleus``, ``ring`` or
    ``cell``)."""
    compartment = compartment or marker.compartment
    if kind == "brightfield":
        return f"{compartment}_dab_od"
    return f"{compartment}_{safe_channel_name(marker.channel)}_mean"


def marker_values(cells: pd.DataFrame, marker: Marker, *, kind: str) -> tuple[np.ndarray, str]:
    """Per-cell value of a marker in its compartment, and the column(s) it came from.

    Raises
    ------
    PanelError
        The slide has no such channel / compartment column.
    """
    parts = ["nucleus", "ring"] if marker.compartment == "max" else [marker.compartment]
    columns = [marker_column(marker, kind=kind, compartment=p) for p in parts]
    missing = [c for c in columns if c not in cells]
    if missing:
        available = sorted({c.split("_", 1)[1].rsplit("_", 1)[0] for c in cells.columns
                            if c.startswith("nucleus_")})
        raise PanelError(f"marker {marker.name!r}: the slide has no channel {marker.channel!r} "
                         f"in compartment {marker.compartment} (missing column(s) "
                         f"{', '.join(missing)}; channels measured: {', '.join(available)})")
    values = np.column_stack([cells[c].to_numpy(dtype=np.float64) for c in columns])
    return np.nanmax(values, axis=1) if values.shape[1] > 1 else values[:, 0], "|".join(columns)


def auto_threshold(values: np.ndarray, spec: Threshold, *, seed: int = 0) -> float:
    """The positivity threshold for one slide.

    Parameters
    ----------
    values
        Per-cell values (background already subtracted); NaN are ignored.
    spec
        Method and limits.

    Returns
    -------
    float
        The threshold on the original scale (``log1p`` / ``asinh`` undone), clipped to
        floor/ceiling. On count data (``transform: asinh``, ``zeros: exclude``) the fit sees
        only the cells with counts, so a channel where most cells have none does not give a
        cut between zero and the first count.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v = np.r_[rng.normal(1, 0.2, 500), rng.normal(5, 0.5, 100)]
    >>> 1.5 < auto_threshold(v, Threshold(method="otsu")) < 4.5
    True
    >>> counts = np.r_[np.zeros(900), rng.poisson(0.3, 80) / 20, 2 + rng.random(20)]
    >>> spec = Threshold(method="otsu", transform="asinh", cofactor=1.0, zeros="exclude")
    >>> 0.1 < auto_threshold(counts, spec) < 2
    True
    """
    if spec.method == "fixed":
        return float(spec.value)  # type: ignore[arg-type]
    x = values[np.isfinite(values)]
    if spec.zeros == "exclude":
        x = x[x > 0]
    x = spec.forward(x)
    if x.size < 2 or np.ptp(x) == 0:
        cut = float(x.max()) if x.size else 0.0
    elif spec.method == "otsu":
        cut = float(threshold_otsu(x))
    else:
        cut = _gmm_threshold(x, seed=seed)
    cut = spec.inverse(cut)
    if spec.floor is not None:
        cut = max(cut, spec.floor)
    if spec.ceiling is not None:
        cut = min(cut, spec.ceiling)
    return cut


def _gmm_threshold(x: np.ndarray, *, seed: int) -> float:
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    if x.size > GMM_MAX_CELLS:
        x = rng.choice(x, GMM_MAX_CELLS, replace=False)
    gmm = GaussianMixture(2, random_state=seed).fit(x[:, None])
    high = int(np.argmax(gmm.means_[:, 0]))
    lo, hi = float(gmm.means_.min()), float(gmm.means_.max())
    grid = np.linspace(lo, hi, 512)
    posterior = gmm.predict_proba(grid[:, None])[:, high]
    crossing = np.flatnonzero(posterior >= 0.5)
    return float(grid[crossing[0]]) if crossing.size else hi


def _background(values: np.ndarray, marker: Marker) -> float:
    spec = marker.background
    if spec.method == "fixed":
        return spec.value
    if spec.method == "percentile":
        finite = values[np.isfinite(values)]
        return float(np.percentile(finite, spec.value)) if finite.size else 0.0
    return 0.0


def call_marker(cells: pd.DataFrame, marker: Marker, *, kind: str,
                config: PhenotypesSection) -> tuple[np.ndarray, MarkerCall, np.ndarray | None,
                                                    np.ndarray]:
    """Positivity of one intensity marker.

    Returns
    -------
    positive, call, intensity_bin, pigment
        Boolean per cell; the recorded call; IHC bins 0-3 per cell (None without bins or for
        fluorescence); pigment flags (all False for fluorescence).
    """
    values, column = marker_values(cells, marker, kind=kind)
    background = _background(values, marker)
    values = np.maximum(values - background, 0.0) if background else values
    threshold = auto_threshold(values, marker.threshold)
    with np.errstate(invalid="ignore"):
        positive = values >= threshold
    pigment = np.zeros(len(cells), dtype=bool)
    if kind == "brightfield":
        pigment = pigment_mask(cells, marker=marker, config=config)
    excluded = positive & pigment
    positive &= ~pigment
    bins = None
    bin_counts = None
    if kind == "brightfield":
        upper = marker.bins or (np.inf, np.inf)
        bins = np.where(positive, 1 + (values >= upper[0]) + (values >= upper[1]), 0)
        bins = bins.astype(np.int8)
        bin_counts = tuple(int(c) for c in np.bincount(bins, minlength=4)[:4])
        if marker.bins is None:
            bins, bin_counts = None, None
    spec = marker.threshold
    finite = values[np.isfinite(values)]
    call = MarkerCall(marker.name, column, spec.method, float(threshold),
                      float(background), len(cells), int(positive.sum()),
                      int(excluded.sum()), bin_counts,  # type: ignore[arg-type]
                      spec.scale, spec.cofactor if spec.scale == "asinh" else None,
                      float((finite == 0).mean()) if finite.size else 0.0)
    return positive, call, bins, pigment


def classify_cells(cells: pd.DataFrame, panel: Panel, *, kind: str,
                   config: PhenotypesSection) -> Phenotyping:
    """Marker positivity and phenotypes for every cell of a slide.

    Parameters
    ----------
    cells
        cells.parquet as a DataFrame (intensity, shape columns).
    panel
        From :func:`pathology.cells.panels.resolve_panel`.
    kind
        ``"brightfield"`` or ``"fluorescence"``.
    config
        Pigment settings and the lymphocyte model.

    Returns
    -------
    Phenotyping

    Raises
    ------
    PanelError
        A marker's channel or a rule's column is missing from the slide.
    """
    positive: dict[str, np.ndarray] = {}
    calls: dict[str, MarkerCall] = {}
    bins: dict[str, np.ndarray] = {}
    pigments: dict[str, np.ndarray] = {}
    for marker in panel.markers:
        if marker.source == "lymphocyte_classifier":
            pos, threshold = lymphocyte_calls(cells, config.lymphocyte_model)
            positive[marker.name] = pos
            calls[marker.name] = MarkerCall(marker.name, "lymphocyte_classifier", "classifier",
                                            threshold, 0.0, len(cells), int(pos.sum()))
            continue
        pos, call, bin_values, pigment = call_marker(cells, marker, kind=kind, config=config)
        positive[marker.name], calls[marker.name] = pos, call
        if bin_values is not None:
            bins[marker.name] = bin_values
        if kind == "brightfield":
            pigments[marker.name] = pigment
    phenotypes = {p.name: _rule(cells, p, positive) for p in panel.phenotypes}
    label = np.full(len(cells), OTHER, dtype=object)
    for name in reversed(list(phenotypes)):
        label[phenotypes[name]] = name
    return Phenotyping(positive, phenotypes, label, calls, bins, pigments)


def lymphocyte_calls(cells: pd.DataFrame, model_spec: str) -> tuple[np.ndarray, float]:
    """The lymphocyte call of every H&E nucleus and the threshold it used.

    A patch network (:mod:`pathology.cells.nucleus_classes`) left its probabilities in cells.parquet
    while the tile was in memory; the logistic model (:mod:`pathology.cells.lymphocytes`) computes
    them from the shape and stain columns.

    Raises
    ------
    PanelError
        The cells were measured without the configured patch network (no probability column).
    """
    from pathology.cells.nucleus_classes import (
        is_patch_model,
        load_patch_classifier,
        probability_column,
    )

    if is_patch_model(model_spec):
        model = load_patch_classifier(model_spec)
        column = probability_column(model.positive_class)
        if len(cells) and column not in cells:
            raise PanelError(f"cells have no {column!r} column: they were measured without the "
                             f"nucleus-class network {model_spec}; run 'hccbio slides run' "
                             "again (with --force) to classify them")
        probability = (cells[column].to_numpy(dtype=np.float64) if len(cells)
                       else np.zeros(0))
        return probability >= model.threshold, model.threshold
    from pathology.cells.lymphocytes import load_lymphocyte_model

    model = load_lymphocyte_model(model_spec)
    return (model.predict(cells) if len(cells) else np.zeros(0, dtype=bool)), model.threshold


def _rule(cells: pd.DataFrame, phenotype, positive: dict[str, np.ndarray]) -> np.ndarray:
    mask = np.ones(len(cells), dtype=bool)
    for marker, state in phenotype.markers.items():
        mask &= positive[marker] if state else ~positive[marker]
    for bounds, above in ((phenotype.min, True), (phenotype.max, False)):
        for column, limit in bounds.items():
            if column not in cells:
                raise PanelError(f"phenotype {phenotype.name!r}: cells have no column "
                                 f"{column!r}")
            values = cells[column].to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                mask &= values >= limit if above else values <= limit
    return mask
