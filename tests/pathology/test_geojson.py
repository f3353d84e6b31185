"""QuPath GeoJSON export: round trip with shapely, streaming in batches, real cells."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shapely.geometry import Polygon

from pathology.features import compute_slide_features
from pathology.qc.geojson import (
    GeoJsonError,
    iter_features,
    read_features,
    write_annotations,
    write_detections,
)
from pathology.qc.shapes import mask_polygons
from pathology.run.pipeline import SlideJob, process_slide

N_VERTICES = 32


def _ellipses(n: int, seed: int = 3):
    """``n`` ellipses (um) with known centre, axes and rotation; polygon areas in um^2."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 5000, n), rng.uniform(0, 4000, n)
    a, b = rng.uniform(3, 6, n), rng.uniform(2, 3, n)
    theta = rng.uniform(0, np.pi, n)
    t = np.linspace(0, 2 * np.pi, N_VERTICES, endpoint=False)
    px = x[:, None] + a[:, None] * np.cos(t) * np.cos(theta)[:, None] \
        - b[:, None] * np.sin(t) * np.sin(theta)[:, None]
    py = y[:, None] + a[:, None] * np.cos(t) * np.sin(theta)[:, None] \
        + b[:, None] * np.sin(t) * np.cos(theta)[:, None]
    return x, y, px, py


def _cells_file(folder, n: int, *, with_classes: bool = True, seed: int = 3):
    x, y, px, py = _ellipses(n, seed)
    rng = np.random.default_rng(seed + 1)
    area = 0.5 * np.abs(np.sum(px * np.roll(py, -1, 1) - np.roll(px, -1, 1) * py, axis=1))
    dab = rng.random(n)
    dab[0] = np.nan  # a missing measurement must become JSON null, not NaN
    table = pa.table({
        "cell_id": np.arange(n, dtype=np.int64), "x_um": x, "y_um": y,
        "x_px": x / 0.25, "y_px": y / 0.25, "area_um2": area, "nucleus_dab_od": dab,
        "poly_x_um": pa.FixedSizeListArray.from_arrays(pa.array(px.ravel().astype(np.float32)),
                                                       N_VERTICES),
        "poly_y_um": pa.FixedSizeListArray.from_arrays(pa.array(py.ravel().astype(np.float32)),
                                                       N_VERTICES),
    })
    cells = folder / "cells.parquet"
    pq.write_table(table, cells)
    classes = None
    names = rng.choice(["tumour", "cd8_t", "other"], n)
    if with_classes:
        classes = folder / "cell_classes.parquet"
        pq.write_table(pa.table({"cell_id": np.arange(n, dtype=np.int64), "phenotype": names,
                                 "region": rng.choice(["tumour", "stroma", "margin"], n)}),
                       classes)
    return cells, classes, names, area, px, py


def test_detections_round_trip_with_shapely(tmp_path):
    cells, classes, names, area, px, py = _cells_file(tmp_path, 2500)
    target = tmp_path / "qc" / "detections.geojson"
    mpp = 0.25
    n = write_detections(cells, target, mpp_x=mpp, mpp_y=mpp, classes_path=classes,
                         batch_size=700)
    assert n == 2500
    collection = json.loads(target.read_text())  # valid JSON as a whole, as QuPath reads it
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == n
    geometries, read_classes, props = read_features(target)
    assert len(geometries) == n
    assert read_classes == list(names)
    assert all(p["objectType"] == "detection" for p in props)
    assert [p["name"] for p in props[:3]] == ["cell 0", "cell 1", "cell 2"]
    assert props[0]["measurements"]["nucleus_dab_od"] is None
    for i in (0, 1, 1234, 2499):
        polygon = geometries[i]
        assert isinstance(polygon, Polygon) and polygon.is_valid
        assert polygon.exterior.coords[0] == polygon.exterior.coords[-1]
        assert len(polygon.exterior.coords) == N_VERTICES + 1
        # level-0 pixels: vertices are the um vertices / mpp (to the written 2 decimals)
        coords = np.asarray(polygon.exterior.coords)[:-1]
        np.testing.assert_allclose(coords[:, 0], px[i].astype(np.float32) / mpp, atol=0.006)
        np.testing.assert_allclose(coords[:, 1], py[i].astype(np.float32) / mpp, atol=0.006)
        assert polygon.area * mpp**2 == pytest.approx(area[i], rel=1e-3)
        assert props[i]["measurements"]["area_um2"] == pytest.approx(area[i], rel=1e-5)
        assert props[i]["region"] in ("tumour", "stroma", "margin")


def test_batches_do_not_change_the_file_and_classes_are_optional(tmp_path):
    cells, classes, *_ = _cells_file(tmp_path, 1000)
    small, large = tmp_path / "a.geojson", tmp_path / "b.geojson"
    write_detections(cells, small, mpp_x=0.5, mpp_y=0.5, classes_path=classes, batch_size=64)
    write_detections(cells, large, mpp_x=0.5, mpp_y=0.5, classes_path=classes)
    assert small.read_bytes() == large.read_bytes()
    plain = tmp_path / "plain.geojson"
    write_detections(cells, plain, mpp_x=0.5, mpp_y=0.5, classes_path=None)
    _, read_classes, props = read_features(plain)
    assert set(read_classes) == {"nucleus"} and "region" not in props[0]


def test_mismatched_classes_and_missing_outlines_are_errors(tmp_path):
    cells, _, *_ = _cells_file(tmp_path, 100)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"cell_id": np.arange(99), "phenotype": ["x"] * 99}), wrong)
    with pytest.raises(GeoJsonError, match="99 rows"):
        write_detections(cells, tmp_path / "x.geojson", mpp_x=0.5, mpp_y=0.5,
                         classes_path=wrong)
    assert not (tmp_path / "x.geojson").exists()  # nothing half-written is left
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.table({"x_um": [1.0]}), bare)
    with pytest.raises(GeoJsonError, match="poly_x_um"):
        write_detections(bare, tmp_path / "y.geojson", mpp_x=0.5, mpp_y=0.5)
    with pytest.raises(GeoJsonError, match="not found"):
        list(iter_features(tmp_path / "none.geojson"))


def test_annotations_keep_holes_and_scale_to_pixels(tmp_path):
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:35, 5:45] = True
    mask[15:25, 15:30] = False  # a hole
    shape_um = mask_polygons(mask, mpp=8.0, simplify_px=0)
    assert shape_um.area == pytest.approx((30 * 40 - 10 * 15) * 64, rel=0.05)
    target = tmp_path / "regions.geojson"
    n = write_annotations([("Tumor", shape_um, {"area_mm2": 0.07}),
                           ("Stroma", Polygon(), {})], target, mpp_x=0.5, mpp_y=0.5)
    assert n == 1  # empty geometries are skipped
    geometries, classes, props = read_features(target)
    assert classes == ["Tumor"] and props[0]["objectType"] == "annotation"
    assert geometries[0].area == pytest.approx(shape_um.area / 0.25, rel=1e-3)
    assert len(geometries[0].interiors) == 1
    # another tool's GeoJSON (a plain FeatureCollection) reads too
    plain = tmp_path / "plain.geojson"
    plain.write_text(json.dumps(json.loads(target.read_text())))
    assert read_features(plain)[1] == ["Tumor"]


def test_real_cells_export_matches_their_centroids(he_tiff, small_tile_config, models,
                                                   tmp_path):
    out = tmp_path / "run"
    process_slide(SlideJob("he_1", he_tiff, "he"), out, small_tile_config, models)
    compute_slide_features(out / "slides" / "he_1", modality="he", stain="",
                           config=small_tile_config)
    folder = out / "slides" / "he_1"
    target = folder / "qc" / "detections.geojson"
    n = write_detections(folder / "cells.parquet", target, mpp_x=0.5, mpp_y=0.5,
                         classes_path=folder / "cell_classes.parquet")
    cells = pq.read_table(folder / "cells.parquet").to_pandas()
    classes = pq.read_table(folder / "cell_classes.parquet").to_pandas()
    assert n == len(cells) > 100
    geometries, names, _ = read_features(target)
    assert names == classes["phenotype"].tolist()
    centroids = np.array([(g.centroid.x, g.centroid.y) for g in geometries])
    # a star-convex polygon's centroid is within a pixel of the nucleus centroid
    distance = np.hypot(centroids[:, 0] - cells["x_px"], centroids[:, 1] - cells["y_px"])
    assert np.median(distance) < 1.0 and distance.max() < 4.0
    areas = np.array([g.area for g in geometries]) * 0.25
    assert np.median(np.abs(areas - cells["area_um2"]) / cells["area_um2"]) < 0.2


def test_cells_and_classes_stay_aligned_across_row_groups(tmp_path):
    n = 1000
    cells, classes = tmp_path / "cells.parquet", tmp_path / "classes.parquet"
    pq.write_table(pa.table({"cell_id": np.arange(n), "x_um": np.arange(n) * 1.0}), cells,
                   row_group_size=77)
    pq.write_table(pa.table({"cell_id": np.arange(n), "phenotype": [f"p{i}" for i in range(n)]}),
                   classes, row_group_size=130)
    from pathology.qc.geojson import iter_cell_batches

    batches = list(iter_cell_batches(cells, classes_path=classes, batch_size=100))
    table = pa.Table.from_batches(batches)
    assert [b.num_rows for b in batches] == [100] * 10
    assert table.column("phenotype").to_pylist() == [f"p{i}" for i in range(n)]
    shuffled = tmp_path / "shuffled.parquet"
    pq.write_table(pa.table({"cell_id": np.arange(n)[::-1], "phenotype": ["x"] * n}), shuffled)
    with pytest.raises(GeoJsonError, match="cell ids do not match"):
        list(iter_cell_batches(cells, classes_path=shuffled))
