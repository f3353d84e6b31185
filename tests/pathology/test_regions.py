"""Tumour / margin / stroma regions and the ring (cytoplasm / membrane) measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathology.cells.measure import measure_labels, measure_tile, ring_means
from pathology.config import RegionsSection
from pathology.segmentation.nuclei import TileNuclei
from pathology.segmentation.tiles import Tile
from pathology.tissue.regions import (
    CODES,
    RegionError,
    automatic_tumour,
    read_annotation_tumour,
    regions_from_tumour,
)


def test_margin_is_a_band_of_the_configured_width_centred_on_the_border():
    mpp = 10.0
    tissue = np.ones((200, 200), bool)
    yy, xx = np.mgrid[:200, :200]
    tumour = (yy - 100) ** 2 + (xx - 100) ** 2 < 50**2  # a disk of radius 500 um
    regions = regions_from_tumour(tumour, tissue, mpp=mpp, margin_width_um=400.0,
                                  source="test")
    radius = np.hypot(yy + 0.5 - 100, xx + 0.5 - 100) * mpp  # pixel centres, um
    codes = regions.codes
    assert (codes[radius < 280] == CODES["tumour"]).all()
    assert (codes[(radius > 320) & (radius < 680)] == CODES["margin"]).all()
    assert (codes[radius > 720] == CODES["stroma"]).all()
    areas = regions.areas_mm2()
    assert areas["margin"] == pytest.approx(np.pi * (0.7**2 - 0.3**2), rel=0.03)
    assert sum(areas[r] for r in ("tumour", "margin", "stroma")) == pytest.approx(4.0)


def test_regions_stay_inside_tissue_and_cells_get_their_region():
    tissue = np.zeros((50, 50), bool)
    tissue[:, :40] = True
    tumour = np.zeros_like(tissue)
    tumour[:, :20] = True
    regions = regions_from_tumour(tumour, tissue, mpp=8.0, margin_width_um=32.0, source="t")
    assert (regions.codes[:, 40:] == 0).all()
    codes = regions.code_at(np.array([8.0, 150.0, 200.0, 390.0, -5.0]), np.full(5, 100.0))
    assert codes.tolist() == [CODES["tumour"], CODES["margin"], CODES["stroma"], 0, 0]


def test_annotation_geojson_in_level0_pixels_with_a_hole(tmp_path):
    path = tmp_path / "slide.geojson"
    outer = [[0, 0], [800, 0], [800, 800], [0, 800], [0, 0]]  # px at 0.25 um/px = 200 um
    hole = [[200, 200], [600, 200], [600, 600], [200, 600], [200, 200]]
    path.write_text(json.dumps([
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [outer, hole]}},
        {"type": "Feature", "properties": {"classification": {"name": "Stroma"}},
         "geometry": {"type": "Polygon", "coordinates": [outer]}}]))
    mask = read_annotation_tumour(path, (50, 50), mpp=8.0, coordinate_um=0.25)
    assert mask.sum() == 25 * 25 - 13 * 13  # 200 um square minus its 100 um hole (8 um px)
    assert not mask[12, 12] and mask[2, 2] and not mask[30, 30]
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(RegionError, match="empty.geojson.*Tumor"):
        read_annotation_tumour(empty, (50, 50), mpp=8.0, coordinate_um=0.25)


def test_automatic_tumour_follows_the_tumour_cells():
    rng = np.random.default_rng(0)
    tissue = np.ones((100, 100), bool)  # 800 um square
    xy = rng.uniform(0, 800, (6000, 2))
    is_tumour = (xy[:, 0] < 400) & (rng.random(6000) < 0.9)  # left half: 90 % tumour cells
    tumour = automatic_tumour(xy[:, 0], xy[:, 1], is_tumour, tissue, mpp=8.0,
                              config=RegionsSection(tumour_smooth_um=30.0))
    assert tumour[:, :45].mean() > 0.95 and tumour[:, 55:].mean() < 0.02


def test_ring_columns_measure_the_membrane_around_each_nucleus():
    labels = np.zeros((60, 60), np.int32)
    yy, xx = np.mgrid[:60, :60]
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 < 25] = 1
    labels[(yy - 40) ** 2 + (xx - 40) ** 2 < 25] = 2
    image = np.zeros((60, 60, 2), np.float32)
    image[..., 0] = labels > 0  # nuclear stain
    ring = (((yy - 20) ** 2 + (xx - 20) ** 2 >= 25) & ((yy - 20) ** 2 + (xx - 20) ** 2 < 64))
    image[ring, 1] = 10.0  # membrane marker on cell 1 only
    cells = measure_labels(labels, image, kind="fluorescence", mpp=0.5,
                           channels=("DAPI", "CD8"), ring_width_um=1.5).to_pandas()
    assert cells["ring_cd8_mean"].tolist() == pytest.approx([10.0, 0.0])
    assert cells["nucleus_cd8_mean"].tolist() == [0.0, 0.0]
    assert cells["ring_dapi_mean"].tolist() == [0.0, 0.0]  # rings never cover a nucleus
    assert np.isnan(ring_means(labels, image, np.array([1]), ring_px=0)).all()


def test_measure_tile_adds_ring_columns_and_keeps_the_others():
    labels = np.zeros((64, 64), np.int32)
    yy, xx = np.mgrid[:64, :64]
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 < 30] = 1
    labels[(yy - 44) ** 2 + (xx - 44) ** 2 < 30] = 2
    rgb = np.full((64, 64, 3), 230, np.uint8)
    rgb[labels > 0] = (90, 90, 160)
    rgb[((yy - 20) ** 2 + (xx - 20) ** 2 >= 30) & ((yy - 20) ** 2 + (xx - 20) ** 2 < 70)] = (
        140, 100, 70)  # DAB membrane on nucleus 1
    theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    centres = np.array([[20.0, 20.0], [44.0, 44.0]])
    coord = np.stack([np.stack([c[0] + 5 * np.sin(theta), c[1] + 5 * np.cos(theta)])
                      for c in centres]).astype(np.float32)
    nuclei = TileNuclei(labels, centres, np.array([0.9, 0.8], np.float32), coord)
    tile = Tile(0, 0, 0, 0, 0, 64, 64, 0, 0, 64, 64)
    kwargs = dict(kind="brightfield", working_mpp=0.5, level0_mpp=0.25, channels=("R", "G", "B"))
    with_ring = measure_tile(tile, nuclei, rgb, ring_width_um=2.0, **kwargs).to_pandas()
    without = measure_tile(tile, nuclei, rgb, ring_width_um=0.0, **kwargs).to_pandas()
    assert set(with_ring.columns) - set(without.columns) == {
        "ring_hematoxylin_od", "ring_eosin_od", "ring_dab_od"}
    assert with_ring[list(without.columns)].drop(columns=["poly_x_um", "poly_y_um"]).equals(
        without.drop(columns=["poly_x_um", "poly_y_um"]))
    assert with_ring["ring_dab_od"][0] > 0.3 > with_ring["ring_dab_od"][1]
