"""Zeiss CZI through pathology.io.slide.Slide (pylibCZIrw): real pixels written by Zeiss's own
library, read back exactly, with the file's pixel size and channel names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pathology.io.slide import Slide, SlideError

czi = pytest.importorskip("pylibCZIrw.czi")


@pytest.fixture(scope="module")
def he_region(shared_data) -> np.ndarray:
    """The whole real H&E of small_HE.svs (2220 x 2967 px at 0.499 um/px) as RGB."""
    with Slide(shared_data / "slides" / "pathml-testdata" / "small_HE.svs") as slide:
        width, height = slide.info.dimensions
        return slide.read_level(0, 0, 0, width, height)


@pytest.fixture(scope="module")
def he_czi(he_region, tmp_path_factory) -> Path:
    """The H&E as a brightfield (Bgr24) CZI of two scenes side by side at a stage offset,
    as an Axioscan writes tiles, with the pixel size in the file's Scaling."""
    path = tmp_path_factory.mktemp("czi") / "he.czi"
    bgr = he_region[..., ::-1]
    with czi.create_czi(str(path), exist_ok=True) as writer:
        writer.write(np.ascontiguousarray(bgr[:, :1500]), plane={"C": 0}, location=(5000, 3000))
        writer.write(np.ascontiguousarray(bgr[:, 1500:]), plane={"C": 0},
                     location=(6500, 3000))
        writer.write_metadata(scale_x=0.499e-6, scale_y=0.499e-6)
    return path


def test_brightfield_czi_reads_the_written_pixels(he_czi, he_region):
    with Slide(he_czi) as slide:
        info = slide.info
        assert info.backend == "pylibczirw" and info.channels == ("R", "G", "B")
        assert info.dimensions == (he_region.shape[1], he_region.shape[0])
        assert info.pixel_size.mpp == pytest.approx(0.499)
        assert info.pixel_size.source == "czi:Scaling/Distance"
        # level 0 is the written image, across the seam between the two tiles
        np.testing.assert_array_equal(slide.read_level(0, 1400, 500, 200, 300),
                                      he_region[500:800, 1400:1600])
        # a coarser level exists and looks like the image (libCZI's own subsampling)
        assert info.level_downsamples[:2] == (1.0, 4.0)
        overview = slide.read_region_at(0, 0, 270, 200, mpp=0.499 * 8).astype(float)
        reference = he_region[:1600:8, :2160:8].astype(float)
        assert np.corrcoef(overview[..., 1].ravel(), reference[..., 1].ravel())[0, 1] > 0.85
        # outside the scanned scenes is white glass
        beyond = slide.read_level(0, info.dimensions[0] - 10, 0, 40, 10)
        assert (beyond[:, 10:] == 255).all()


def test_a_broken_czi_is_an_error_naming_the_file(he_czi, tmp_path):
    broken = tmp_path / "broken.czi"
    broken.write_bytes(he_czi.read_bytes()[:4096])
    with pytest.raises(SlideError, match="broken.czi"):
        Slide(broken)
    text = tmp_path / "not_a_scan.czi"
    text.write_text("hello")
    with pytest.raises(SlideError, match="not_a_scan.czi"):
        Slide(text)
