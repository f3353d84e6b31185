"""``cells.stain_matrix: auto`` (per-slide hematoxylin and DAB vectors, recorded) and per-slide
automatic positivity thresholds recorded beside the configured ones, on real IHC."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from integration.demo import write_pyramidal_tiff
from pathology.config import CellsSection
from pathology.features import compute_slide_features
from pathology.run.pipeline import SlideJob, process_slide
from pathology.segmentation.stains import DEFAULT_MATRIX, angle_degrees


@pytest.fixture(scope="module")
def ihc_tiff(tmp_path_factory):
    """scikit-image's real IHC image (hematoxylin + DAB), 512 x 512, as a 0.5 um/px TIFF."""
    from skimage.data import immunohistochemistry

    path = tmp_path_factory.mktemp("ihc") / "ihc.tiff"
    write_pyramidal_tiff(path, np.ascontiguousarray(immunohistochemistry()), mpp=0.5)
    return path


def test_auto_stain_matrix_is_estimated_recorded_and_used(ihc_tiff, tmp_path, small_tile_config,
                                                         models):
    auto = small_tile_config.model_copy(update={"cells": CellsSection(stain_matrix="auto")})
    process_slide(SlideJob("fixed", ihc_tiff, "ihc", "CD8"), tmp_path, small_tile_config,
                  models)
    process_slide(SlideJob("auto", ihc_tiff, "ihc", "CD8"), tmp_path, auto, models)
    fixed = json.loads((tmp_path / "slides" / "fixed" / "features.json").read_text())
    record = json.loads((tmp_path / "slides" / "auto" / "features.json").read_text())
    assert fixed["stain_matrix"]["method"] == "skimage_hed"
    stains = record["stain_matrix"]
    assert stains["method"] == "auto" and "Macenko" in stains["note"]
    matrix = np.asarray(stains["matrix"])
    assert angle_degrees(matrix[2], DEFAULT_MATRIX[2]) < 20  # still DAB, tuned to the slide
    assert angle_degrees(matrix[2], DEFAULT_MATRIX[2]) > 0.1
    a = pd.read_parquet(tmp_path / "slides" / "auto" / "cells.parquet")
    b = pd.read_parquet(tmp_path / "slides" / "fixed" / "cells.parquet")
    assert len(a) == len(b)  # segmentation does not depend on the deconvolution
    assert not np.allclose(a["nucleus_dab_od"], b["nucleus_dab_od"])
    assert np.corrcoef(a["nucleus_dab_od"], b["nucleus_dab_od"])[0, 1] > 0.9

    row = compute_slide_features(tmp_path / "slides" / "auto", modality="ihc", stain="CD8",
                                 config=auto)
    call = json.loads((tmp_path / "slides" / "auto" / "features.json").read_text())[
        "phenotyping"]["markers"]["CD8"]
    assert call["threshold"] == 0.2 and call["method"] == "fixed"  # the configured one is used
    assert call["auto"]["method"] == "otsu" and call["auto"]["configured"]["threshold"] == 0.2
    assert 0 < call["auto"]["threshold"] < 2
    assert 0 <= row["ihc_cd8_pct_auto"] <= 100
    assert row["ihc_cd8_pct"] == pytest.approx(call["percent_positive"], abs=5)


def test_rescale_stains_scales_each_stain_and_only_it(shared_data):
    """A real CRCHistoPhenotypes H&E image with its hematoxylin doubled and eosin halved: the
    deconvolved densities follow, pixel for pixel; factors of 1 give the image back."""
    from pathology.evaluation.annotations import load_crchistophenotypes
    from pathology.segmentation.stains import rescale_stains, stain_densities

    image = load_crchistophenotypes(shared_data / "nuclei" / "crchistophenotypes")[0].image
    assert np.abs(rescale_stains(image).astype(int) - image).max() <= 1
    before = stain_densities(image)
    after = stain_densities(rescale_stains(image, hematoxylin=2.0, eosin=0.5))
    # pixels far from saturation (uint8 rounding and clipping at 0 and 255 aside)
    ok = (image.min(axis=-1) > 20) & (image.max(axis=-1) < 235) & (before[..., 0] > 0.1)
    ratio_h = after[..., 0][ok] / before[..., 0][ok]
    assert np.median(ratio_h) == pytest.approx(2.0, rel=0.03)
    strong_e = ok & (before[..., 1] > 0.1)
    assert np.median(after[..., 1][strong_e] / before[..., 1][strong_e]) == pytest.approx(
        0.5, rel=0.05)
    assert np.abs(after[..., 2][ok] - before[..., 2][ok]).mean() < 0.02  # DAB untouched
    with pytest.raises(ValueError, match="stain factors"):
        rescale_stains(image, hematoxylin=-1.0)


def test_restained_points_keep_their_annotations(shared_data):
    """The CRC image re-rendered darker, as the lymphocyte training and the stain-shift check
    use it: same points and pixel size, a name of its own, the same pixels as rescale_stains."""
    from pathology.evaluation.annotations import load_crchistophenotypes, stain_shift_key
    from pathology.segmentation.stains import rescale_stains

    item = load_crchistophenotypes(shared_data / "nuclei" / "crchistophenotypes")[0]
    darker = item.restained(2.0, 1.0)
    assert darker.name == f"{item.name}_h2_e1" and stain_shift_key(2.0, 1.0) == "2,1"
    assert darker.points is item.points and darker.mpp == item.mpp
    np.testing.assert_array_equal(darker.image, rescale_stains(item.image, hematoxylin=2.0))

