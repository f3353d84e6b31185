"""Per-cell measurements equal scikit-image's regionprops on real nuclei."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops_table

from pathology.cells.measure import label_measurements
from pathology.segmentation.stains import stain_densities


def test_label_measurements_equal_regionprops_on_real_nuclei():
    from stardist.data import test_image_nuclei_2d

    image, labels = test_image_nuclei_2d(return_mask=True)  # real fluorescence + labels
    intensity = np.stack([image, image[::-1]], axis=-1).astype(np.float32)
    ours = label_measurements(labels, intensity)
    reference = regionprops_table(labels.astype(np.int32), intensity_image=intensity,
                                  properties=("label", "area", "centroid", "perimeter",
                                              "eccentricity", "solidity", "axis_major_length",
                                              "axis_minor_length", "intensity_mean"))
    assert len(ours["label"]) > 50
    for key, values in reference.items():
        np.testing.assert_allclose(ours[key], values, rtol=1e-6, atol=1e-6, err_msg=key)


def test_stain_densities_separate_hematoxylin_from_dab():
    from skimage.data import immunohistochemistry

    ihc = immunohistochemistry()  # real IHC: hematoxylin nuclei, DAB membranes
    hed = stain_densities(ihc)
    blue = (ihc[..., 2] > ihc[..., 0] + 20)  # bluish (hematoxylin) pixels
    brown = (ihc[..., 0] > ihc[..., 2] + 40)  # brownish (DAB) pixels
    assert hed[blue, 0].mean() > hed[brown, 0].mean() - 0.05
    assert hed[brown, 2].mean() > 2 * hed[blue, 2].mean()
    assert hed.dtype == np.float32


@pytest.mark.parametrize("value", [255, 128, 1])
def test_optical_density_of_grey(value):
    od = stain_densities(np.full((1, 1, 3), value, np.uint8))
    assert np.isfinite(od).all()
