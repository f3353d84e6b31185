"""Tissue masks on real slides and the tile grid's invariants."""

from __future__ import annotations

import numpy as np
import pytest

from pathology.config import TissueSection
from pathology.io.slide import Slide
from pathology.segmentation.tiles import tile_grid
from pathology.tissue.detect import brightfield_od_and_saturation, detect_tissue


def test_brightfield_tissue_mask_on_real_svs(shared_data):
    with Slide(shared_data / "slides" / "pathml-testdata" / "small_HE.svs") as slide:
        overview = slide.read_overview(8.0)
    mask = detect_tissue(overview, kind="brightfield", mpp=8.0, config=TissueSection())
    fraction = mask.mean()
    assert 0.2 < fraction < 0.8, fraction  # CMU-1-Small-Region: tissue with glass around it
    glass = overview.mean(axis=2) > 225
    # Bright glass is almost never called tissue; dark stained pixels almost always are.
    assert mask[glass].mean() < 0.15
    assert mask[overview.mean(axis=2) < 170].mean() > 0.95


def test_lookup_table_density_and_saturation_equal_the_direct_formulas(shared_data):
    from skimage.color import rgb2hsv

    with Slide(shared_data / "slides" / "pathml-testdata" / "small_HE.svs") as slide:
        overview = slide.read_overview(2.0)  # real H&E, 400k pixels of glass and tissue
    rgb = overview[..., :3].astype(np.float32)
    od, saturation = brightfield_od_and_saturation(overview)
    np.testing.assert_array_equal(od, -np.log10(np.clip(rgb, 1, 255) / 255).mean(axis=2))
    np.testing.assert_array_equal(saturation, rgb2hsv(np.clip(rgb / 255.0, 0, 1))[..., 1])
    # Non-8-bit input takes the direct path.
    od16, _ = brightfield_od_and_saturation(overview.astype(np.uint16))
    np.testing.assert_allclose(od16, od, rtol=1e-6)


def test_all_tissue_image_is_not_split_in_half():
    """Otsu on a slide that is all tissue would cut it in two; the clipped threshold does not."""
    from stardist.data import test_image_he_2d

    image = test_image_he_2d()[::8, ::8]  # real H&E, no glass, at about 4 um/px
    mask = detect_tissue(image, kind="brightfield", mpp=4.0,
                         config=TissueSection(min_tissue_area_um2=0, opening_radius_um=0))
    assert mask.mean() > 0.9


def test_fluorescence_tissue_mask_on_real_ndpi(shared_data):
    with Slide(shared_data / "slides" / "ndpi-fluorescence" / "test3-DAPI-2-(387).ndpi") as s:
        overview = s.read_overview(8.0)
    mask = detect_tissue(overview.max(axis=2, keepdims=True), kind="fluorescence", mpp=8.0,
                         config=TissueSection())
    assert 0.05 < mask.mean() < 0.95
    signal = overview.max(axis=2)
    assert signal[mask].mean() > 2 * signal[~mask].mean()


def test_synthetic_empty_glass_has_no_tissue():
    glass = np.full((100, 100, 3), 242, np.uint8)  # synthetic: blank slide
    assert not detect_tissue(glass, kind="brightfield", mpp=8.0, config=TissueSection()).any()


@pytest.mark.parametrize("shape,tile,halo", [((1000, 700), 256, 32), ((513, 512), 128, 16),
                                             ((64, 2000), 512, 64)])
def test_tile_cores_partition_the_image(shape, tile, halo):
    tiles = tile_grid(shape, tile_size=tile, halo=halo)
    cover = np.zeros(shape, np.int32)
    for t in tiles:
        cover[t.y:t.y + t.height, t.x:t.x + t.width] += 1
        assert t.read_x >= 0 and t.read_y >= 0
        assert t.read_x + t.read_width <= shape[1] and t.read_y + t.read_height <= shape[0]
        assert t.read_x <= t.x and t.x + t.width <= t.read_x + t.read_width
    assert (cover == 1).all()
    assert len({t.index for t in tiles}) == len(tiles)


def test_tiles_without_tissue_are_dropped():
    mask = np.zeros((10, 10), bool)  # synthetic: tissue only in the top-left tenth
    mask[0, 0] = True
    tiles = tile_grid((1000, 1000), tile_size=250, halo=16, tissue_mask=mask)
    assert [t.index for t in tiles] == [0]
