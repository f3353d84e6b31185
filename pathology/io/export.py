"""Hand-off for spatial analysts: a slide's cells as AnnData (squidpy, scimap, scanpy).

One ``OUT/slides/<id>/cells.h5ad`` per slide: one observation per cell (in ``cells.parquet``
order), ``X`` the per-cell measurements (intensities, optical densities, shape), ``obs`` the
classes (phenotype, region, artefact, marker calls), ``obsm["spatial"]`` the centroids in
micrometres (x, y), and ``uns["hccbio"]`` the slide's provenance. squidpy reads
``obsm["spatial"]`` directly (``squidpy.gr.spatial_neighbors(adata, coord_type="generic")``);
scimap takes ``x_coordinate="x_um", y_coordinate="y_um"`` (also in ``obs``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hcccore.atomic import write_bytes
from pathology.io.folder import ANNDATA, SlideFolder

ANNDATA_FILE = ANNDATA
SPATIAL_KEY = "spatial"
# cells.parquet columns that are ids, positions or outlines, not measurements
NOT_MEASURED = {"cell_id", "tile_index", "x_um", "y_um", "x_px", "y_px", "poly_x_um",
                "poly_y_um", "label"}


class ExportError(ValueError):
    """A slide cannot be exported; the message names the file and the cause."""


def slide_anndata(folder: Path):
    """The cells of one slide folder as an :class:`anndata.AnnData`.

    Parameters
    ----------
    folder
        ``OUT/slides/<sample_id>`` with ``cells.parquet`` (and, after the features step,
        ``cell_classes.parquet`` and ``features.json``).

    Returns
    -------
    anndata.AnnData
        ``X`` float32 measurements (``var_names`` = cells.parquet columns), ``obs`` (index
        ``cell_id`` as text; ``x_um``, ``y_um``, then every column of cell_classes.parquet,
        text columns as categories), ``obsm["spatial"]`` (n x 2, um), ``uns["hccbio"]``.

    Raises
    ------
    ExportError
        No ``cells.parquet``, or classes that do not match the cells.
    """
    import anndata

    folder = Path(folder)
    cells_path = SlideFolder(folder).cells
    if not cells_path.is_file():
        raise ExportError(f"{cells_path}: not found; run 'hccbio slides run' first")
    names = pq.read_schema(cells_path).names
    measured = [c for c in names if c not in NOT_MEASURED]
    cells = pq.read_table(cells_path, columns=[c for c in ("cell_id", "x_um", "y_um")
                                               if c in names] + measured).to_pandas()
    cell_id = (cells["cell_id"].to_numpy() if "cell_id" in cells
               else np.arange(len(cells)))
    obs = pd.DataFrame({"x_um": cells["x_um"].to_numpy(np.float64),
                        "y_um": cells["y_um"].to_numpy(np.float64)},
                       index=pd.Index(cell_id.astype(str), name="cell_id"))
    classes_path = SlideFolder(folder).classes
    if classes_path.is_file():
        classes = pd.read_parquet(classes_path)
        if len(classes) != len(cells) or ("cell_id" in classes and not np.array_equal(
                classes["cell_id"].to_numpy(), cell_id)):
            raise ExportError(f"{classes_path}: its cells do not match cells.parquet; run "
                              "'hccbio slides features' again")
        for column in classes.columns.drop("cell_id", errors="ignore"):
            values = classes[column]
            obs[column] = (values.astype("category").to_numpy() if values.dtype == object
                           else values.to_numpy())
        for column in obs.columns:
            if obs[column].dtype == object:
                obs[column] = obs[column].astype("category")
    x = cells[measured].to_numpy(dtype=np.float32) if measured else np.zeros((len(cells), 0),
                                                                             np.float32)
    record = {}
    features_path = SlideFolder(folder).features
    if features_path.is_file():
        record = json.loads(features_path.read_text())
    regions = record.get("regions", {})
    uns = {"hccbio": {"sample_id": record.get("sample_id", folder.name),
                      "modality": record.get("modality", ""), "stain": record.get("stain", ""),
                      "coordinates": "um from the slide's top-left corner (x, y)",
                      "regions_source": regions.get("source", ""),
                      "tumour_cells": regions.get("tumour_cells", ""),
                      "config_sha256": record.get("config_sha256", ""),
                      "features_config_sha256": record.get("features_config_sha256", "")}}
    adata = anndata.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(measured)),
                            uns=uns)
    adata.obsm[SPATIAL_KEY] = np.column_stack([obs["x_um"].to_numpy(), obs["y_um"].to_numpy()])
    return adata


def export_anndata(folder: Path) -> Path:
    """Write a slide folder's ``cells.h5ad`` atomically and return its path.

    See :func:`slide_anndata`. The whole slide's cells are held in memory while writing
    (about 150 bytes per cell for a typical set of columns).
    """
    slide = SlideFolder(Path(folder))
    adata = slide_anndata(slide.root)
    target = slide.anndata
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        adata.write_h5ad(tmp)
        write_bytes(target, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return target
