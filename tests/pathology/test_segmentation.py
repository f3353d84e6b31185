"""Nuclei segmentation: tiled equals one-shot, resume equals uninterrupted, batch isolation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.spatial import cKDTree
from shapely.geometry import Polygon

from hcccore.batch_report import read_report
from integration.demo import write_pyramidal_tiff
from pathology.config import PathologyConfig, TilingSection
from pathology.io.slide import Slide
from pathology.run.batch import run_slides
from pathology.run.pipeline import ModelCache, SlideJob, process_slide, read_cells


def _polygons(cells: pd.DataFrame) -> list[Polygon]:
    return [Polygon(np.c_[x, y]).buffer(0) for x, y in zip(cells.poly_x_um, cells.poly_y_um,
                                                            strict=True)]


def _match(reference: pd.DataFrame, other: pd.DataFrame, *, iou: float = 0.5):
    """Greedy one-to-one matching by centroid proximity and polygon IoU >= ``iou``."""
    ref_poly, other_poly = _polygons(reference), _polygons(other)
    tree = cKDTree(other[["x_um", "y_um"]].to_numpy())
    used = np.zeros(len(other), bool)
    matched = 0
    for i, point in enumerate(reference[["x_um", "y_um"]].to_numpy()):
        for j in tree.query_ball_point(point, r=8.0):
            if used[j]:
                continue
            a, b = ref_poly[i], other_poly[j]
            inter = a.intersection(b).area
            if inter / (a.area + b.area - inter) >= iou:
                used[j] = True
                matched += 1
                break
    return matched


@pytest.fixture(scope="module")
def region_2048(shared_data, tmp_path_factory):
    """A real 2048 x 2048 region of CMU-1-Small-Region at 0.5 um/px, written as a slide."""
    with Slide(shared_data / "slides" / "pathml-testdata" / "small_HE.svs") as slide:
        image = slide.read_region_at(100, 600, 2048, 2048, mpp=0.5)
    path = tmp_path_factory.mktemp("region") / "region.tiff"
    write_pyramidal_tiff(path, image, mpp=0.5)
    return path


def test_tiled_segmentation_equals_one_shot(region_2048, tmp_path):
    results = {}
    for tile_size in (2048, 512):
        config = PathologyConfig(tiling=TilingSection(tile_size=tile_size, halo=64))
        job = SlideJob("region", region_2048, "he")
        process_slide(job, tmp_path / str(tile_size), config, ModelCache(config))
        results[tile_size] = read_cells(tmp_path / str(tile_size) / "slides" / "region"
                                        ).to_pandas()
    one_shot, tiled = results[2048], results[512]
    assert len(one_shot) > 1000  # dense real tissue
    matched = _match(one_shot, tiled)
    assert matched / len(one_shot) >= 0.98
    assert matched / len(tiled) >= 0.98
    # None twice: no two tiled nuclei share a centre.
    pairs = cKDTree(tiled[["x_um", "y_um"]].to_numpy()).query_pairs(r=1.0)
    assert not pairs


def test_interrupted_and_resumed_run_equals_uninterrupted(he_tiff, small_tile_config, models,
                                                          tmp_path):
    job = SlideJob("he", he_tiff, "he")
    whole = process_slide(job, tmp_path / "whole", small_tile_config, models)
    partial = process_slide(job, tmp_path / "resumed", small_tile_config, models, max_tiles=3)
    assert partial.tiles_computed == 3 and partial.n_cells == -1
    assert not (tmp_path / "resumed" / "slides" / "he" / "cells.parquet").exists()
    resumed = process_slide(job, tmp_path / "resumed", small_tile_config, models)
    assert resumed.tiles_computed == whole.n_tiles - 3
    a = pq.read_table(tmp_path / "whole" / "slides" / "he" / "cells.parquet")
    b = pq.read_table(tmp_path / "resumed" / "slides" / "he" / "cells.parquet")
    assert whole.n_cells > 50
    assert a.equals(b)


def test_cells_table_contract(he_tiff, small_tile_config, models, tmp_path):
    process_slide(SlideJob("he", he_tiff, "he"), tmp_path, small_tile_config, models)
    cells = read_cells(tmp_path / "slides" / "he").to_pandas()
    for column in ("cell_id", "x_um", "y_um", "x_px", "y_px", "area_um2", "perimeter_um",
                   "eccentricity", "solidity", "nucleus_hematoxylin_od", "nucleus_dab_od",
                   "poly_x_um", "poly_y_um"):
        assert column in cells
    assert cells.cell_id.tolist() == list(range(len(cells)))
    assert (cells.area_um2 >= small_tile_config.segmentation.min_area_um2).all()
    # Nuclei are hematoxylin-dense: more hematoxylin than DAB on an H&E slide.
    assert cells.nucleus_hematoxylin_od.median() > cells.nucleus_dab_od.median()
    # Level-0 pixels and micrometres agree (mpp 0.5).
    np.testing.assert_allclose(cells.x_px * 0.5, cells.x_um, rtol=1e-9)
    # Polygons surround their centroid.
    first = cells.iloc[0]
    assert min(first.poly_x_um) < first.x_um < max(first.poly_x_um)


def test_batch_with_bad_slides_completes_and_names_them(shared_data, he_tiff,
                                                        small_tile_config, tmp_path):
    corrupt = shared_data / "slides" / "openslide-fixtures" / "unreadable.svs"
    dicom = shared_data / "slides" / "pathml-testdata" / "small_dicom.dcm"
    jobs = [SlideJob("bad_svs", corrupt, "he"), SlideJob("good", he_tiff, "he"),
            SlideJob("bad_dicom", dicom, "he"), SlideJob("missing", tmp_path / "x.svs", "he")]
    rows = run_slides(jobs, tmp_path / "out", small_tile_config)
    status = {r.sample_id: r for r in rows}
    assert status["good"].status == "done"
    assert {k for k, r in status.items() if r.status == "failed"} == {"bad_svs", "bad_dicom",
                                                                      "missing"}
    assert str(dicom) in status["bad_dicom"].reason
    assert "not found" in status["missing"].reason
    report = read_report(tmp_path / "out")
    assert set(report) == {"bad_svs", "good", "bad_dicom", "missing"}
    # Rerun: the finished slide is skipped, nothing recomputed.
    again = {r.sample_id: r for r in run_slides(jobs, tmp_path / "out", small_tile_config)}
    assert again["good"].status == "skipped"
    assert (tmp_path / "out" / "run.json").is_file()
