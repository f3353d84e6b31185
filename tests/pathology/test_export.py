"""AnnData export of a slide's cells: positions in um, classes, measurements, read back."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from integration.cli import app
from pathology.features import compute_slide_features
from pathology.run.pipeline import SlideJob, process_slide


@pytest.fixture(scope="module")
def run(he_tiff, small_tile_config, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_run")
    process_slide(SlideJob("he_1", he_tiff, "he"), out, small_tile_config, models)
    compute_slide_features(out / "slides" / "he_1", modality="he", stain="",
                           config=small_tile_config)
    return out


def test_cells_export_as_anndata_with_spatial_coordinates_in_um(run):
    result = CliRunner().invoke(app, ["slides", "export", str(run)])
    assert result.exit_code == 0, result.output
    adata = anndata.read_h5ad(run / "slides" / "he_1" / "cells.h5ad")
    cells = pd.read_parquet(run / "slides" / "he_1" / "cells.parquet")
    classes = pd.read_parquet(run / "slides" / "he_1" / "cell_classes.parquet")
    assert adata.n_obs == len(cells) > 100
    np.testing.assert_array_equal(adata.obsm["spatial"],
                                  cells[["x_um", "y_um"]].to_numpy(np.float64))
    assert list(adata.obs_names[:3]) == [str(i) for i in cells["cell_id"][:3]]
    assert adata.obs["phenotype"].tolist() == classes["phenotype"].tolist()
    assert adata.obs["region"].dtype.name == "category"
    assert adata.obs["artefact"].dtype == bool
    assert "area_um2" in adata.var_names and "nucleus_hematoxylin_od" in adata.var_names
    np.testing.assert_allclose(adata[:, "area_um2"].X.ravel(), cells["area_um2"], rtol=1e-6)
    assert adata.uns["hccbio"]["sample_id"] == "he_1"
    assert "um" in adata.uns["hccbio"]["coordinates"]
    result = CliRunner().invoke(app, ["slides", "export", str(run / "nowhere")])
    assert result.exit_code == 2
