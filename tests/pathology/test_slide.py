"""Opening real slides: sizes, levels, pixel sizes and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from pathology.io.slide import PixelSizeError, Slide, SlideError

# file: (backend, level-0 (width, height), level count, mpp, mpp source prefix)
OPENS = {
    "pathml-testdata/small_HE.svs": ("openslide", (2220, 2967), 1, 0.499, "openslide"),
    "ndpi-fluorescence/test3-DAPI-2-(387).ndpi": ("openslide", (3968, 4864), 7, 0.22818,
                                                  "openslide"),
    "pathml-testdata/small_vectra.qptiff": ("tiffslide", (1920, 1440), 1, 0.49653, "tiffslide"),
    "openslide-fixtures/small.svs": ("openslide", (16, 16), 1, 0.499, "openslide"),
    "openslide-fixtures/boxes_0.dcm": ("openslide", (16, 16), 1, 0.499, "openslide"),
    "openslide-fixtures/boxes_1.dcm": ("openslide", (16, 16), 1, 0.499, "openslide"),
}
# file: (exception type, words the message must contain)
FAILS = {
    "openslide-fixtures/unopenable.tiff": (SlideError, "Unsupported TIFF compression"),
    "pathml-testdata/small_dicom.dcm": (SlideError, "OpenSlide recognised the file"),
    "openslide-fixtures/boxes.tiff": (PixelSizeError, "72 dpi"),
    "pathml-testdata/small_HE_levels.tiff": (PixelSizeError, "manifest's mpp"),
    "pathml-testdata/smalltif.tif": (PixelSizeError, "96 dpi"),
}


@pytest.mark.parametrize("name", sorted(OPENS))
def test_real_slides_open_with_size_levels_and_pixel_size(shared_data, name):
    backend, dims, n_levels, mpp, source = OPENS[name]
    with Slide(shared_data / "slides" / name) as slide:
        info = slide.info
        assert info.backend == backend
        assert info.dimensions == dims
        assert len(info.level_dimensions) == n_levels
        assert info.pixel_size.mpp == pytest.approx(mpp, rel=1e-3)
        assert info.pixel_size.source.startswith(source)


@pytest.mark.parametrize("name", sorted(FAILS))
def test_bad_slides_fail_with_specific_error_naming_the_file(shared_data, name):
    error_type, words = FAILS[name]
    path = shared_data / "slides" / name
    with pytest.raises(error_type) as caught:
        Slide(path)
    assert str(path) in str(caught.value)
    assert words in str(caught.value)


def test_every_shared_slide_is_covered(shared_data):
    files = {str(p.relative_to(shared_data / "slides")) for p in (shared_data / "slides").rglob("*")
             if p.is_file() and p.suffix.lower() in {".svs", ".ndpi", ".tiff", ".tif", ".qptiff",
                                                     ".dcm"}}
    covered = set(OPENS) | set(FAILS) | {"openslide-fixtures/unreadable.svs",
}
    assert files <= covered, f"slides without a test expectation: {sorted(files - covered)}"


def test_corrupt_svs_opens_but_reading_fails_clearly(shared_data):
    path = shared_data / "slides" / "openslide-fixtures" / "unreadable.svs"
    with Slide(path) as slide, pytest.raises(SlideError) as caught:
        slide.read_level(0, 0, 0, 16, 16)
    assert str(path) in str(caught.value) and "cannot read level 0" in str(caught.value)


def test_manifest_mpp_rescues_placeholder_resolution(shared_data):
    path = shared_data / "slides" / "openslide-fixtures" / "boxes.tiff"
    with Slide(path, manifest_mpp=0.25) as slide:
        assert slide.info.pixel_size.mpp == 0.25
        assert slide.info.pixel_size.source == "manifest:mpp"
        assert any("72 dpi" in note for note in slide.info.pixel_size.notes)


def test_manifest_mpp_that_disagrees_with_the_scanner_is_an_error(shared_data):
    path = shared_data / "slides" / "pathml-testdata" / "small_HE.svs"
    with pytest.raises(PixelSizeError, match="disagree"):
        Slide(path, manifest_mpp=0.25)
    with Slide(path, manifest_mpp=0.5) as slide:  # within 2 %: the scanner's value is used
        assert slide.info.pixel_size.mpp == pytest.approx(0.499)


def test_implausible_pixel_size_is_an_error(shared_data):
    path = shared_data / "slides" / "openslide-fixtures" / "boxes.tiff"
    with pytest.raises(PixelSizeError, match="implausible"):
        Slide(path, manifest_mpp=5.0)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SlideError, match="not found"):
        Slide(tmp_path / "nope.svs")


def test_openslide_and_tiffslide_read_identical_pixels(shared_data):
    path = shared_data / "slides" / "pathml-testdata" / "small_HE.svs"
    with Slide(path, backend="openslide") as a, Slide(path, backend="tiffslide") as b:
        assert a.info.pixel_size.mpp == pytest.approx(b.info.pixel_size.mpp)
        np.testing.assert_array_equal(a.read_level(0, 700, 900, 300, 200),
                                      b.read_level(0, 700, 900, 300, 200))


def test_resampled_reads_depend_only_on_position(shared_data):
    """Overlapping boxes at the working resolution agree pixel for pixel (tiling invariance)."""
    path = shared_data / "slides" / "ndpi-fluorescence" / "test3-DAPI-2-(387).ndpi"
    with Slide(path) as slide:
        level = slide.best_level(0.5)
        assert slide.info.level_mpp(level) <= 0.5  # never upsample from a coarser level
        big = slide.read_region_at(100, 200, 300, 300, mpp=0.5)
        small = slide.read_region_at(180, 260, 100, 120, mpp=0.5)
        np.testing.assert_array_equal(big[60:180, 80:180], small)
        assert slide.working_shape(0.5) == (int(4864 * 0.22817505 / 0.5),
                                            int(3968 * 0.22817505 / 0.5))


def test_multichannel_qptiff_keeps_channel_names_and_values(shared_data):
    path = shared_data / "slides" / "pathml-testdata" / "small_vectra.qptiff"
    with Slide(path) as slide:
        assert slide.info.channels == ("DAPI", "FITC", "Cy3")
        region = slide.read_level(0, 0, 0, 64, 32)
        assert region.shape == (32, 64, 3)


def test_no_associated_images_are_exposed(shared_data):
    """Label and macro images (patient identifiers) are never read or offered."""
    path = shared_data / "slides" / "pathml-testdata" / "small_HE.svs"
    with Slide(path) as slide:
        assert not any("label" in name or "macro" in name for name in dir(slide))
        assert "associated" not in str(slide.info.to_json())
