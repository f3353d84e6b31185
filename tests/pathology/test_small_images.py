"""Small images (ROI exports, TMA cores): the error names the setting and a value that would
pass, and ``tissue.mode: whole_image`` processes them."""

from __future__ import annotations

import numpy as np
import pytest

from integration.demo import write_pyramidal_tiff
from pathology.config import TissueSection
from pathology.io.slide import SlideError
from pathology.run.pipeline import SlideJob, process_slide


@pytest.fixture(scope="module")
def roi_tiff(tmp_path_factory):
    """A 128 um x 128 um crop of stardist's real H&E image (256 px at 0.5 um/px)."""
    from stardist.data import test_image_he_2d

    path = tmp_path_factory.mktemp("roi") / "roi.tiff"
    write_pyramidal_tiff(path, np.ascontiguousarray(test_image_he_2d()[:256, :256]), mpp=0.5)
    return path


def test_a_small_roi_fails_with_the_setting_and_a_value_that_passes(roi_tiff, tmp_path,
                                                                     small_tile_config, models):
    with pytest.raises(SlideError) as error:
        process_slide(SlideJob("roi", roi_tiff, "he"), tmp_path, small_tile_config, models)
    message = str(error.value)
    assert "tissue.min_tissue_area_um2 is 20000 um^2" in message
    assert "tissue.mode: whole_image" in message
    largest = float(message.split("set tissue.min_tissue_area_um2 to at most ")[1].split()[0])
    assert 0 < largest <= 128 * 128
    # the suggested value does pass
    config = small_tile_config.model_copy(update={"tissue": TissueSection(
        min_tissue_area_um2=largest)})
    result = process_slide(SlideJob("roi", roi_tiff, "he"), tmp_path / "fixed", config, models)
    assert result.n_cells > 20


def test_whole_image_mode_processes_a_tma_core(roi_tiff, tmp_path, small_tile_config, models):
    config = small_tile_config.model_copy(update={"tissue": TissueSection(mode="whole_image")})
    result = process_slide(SlideJob("core", roi_tiff, "he"), tmp_path, config, models)
    assert result.tissue_area_mm2 == pytest.approx(128 * 128 / 1e6, rel=0.07)
    assert result.n_cells > 20
