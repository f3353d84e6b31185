"""Classical nucleus segmentation (colour deconvolution / intensity, Otsu, distance-transform
watershed): the baseline that every shipped StarDist model must beat on the same images."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import disk, opening, remove_small_objects
from skimage.segmentation import watershed


def segment_nuclei_watershed(
    image: np.ndarray, *, min_area_px: int = 12, min_distance_px: int = 4
) -> np.ndarray:
    """Segment nuclei with Otsu thresholding and a distance-transform watershed.

    Parameters
    ----------
    image
        RGB brightfield image (``(H, W, 3)``, nuclei dark, hematoxylin channel used) or a
        single-channel fluorescence image (``(H, W)``, nuclei bright).
    min_area_px
        Objects smaller than this are removed.
    min_distance_px
        Minimum distance between two seeds (roughly a nucleus radius).

    Returns
    -------
    numpy.ndarray
        ``int32`` instance labels, 0 = background.

    Examples
    --------
    >>> img = np.zeros((40, 40)); img[5:15, 5:15] = 1; img[25:35, 25:35] = 1
    >>> int(segment_nuclei_watershed(img).max())
    2
    """
    if image.ndim == 3:
        signal = rgb2hed(image[..., :3])[..., 0]
    elif image.ndim == 2:
        signal = image.astype(np.float64)
    else:
        raise ValueError(f"expected (H, W) or (H, W, 3) image, got shape {image.shape}")
    signal = gaussian(signal, sigma=1.0)
    if np.ptp(signal) == 0:
        return np.zeros(signal.shape, dtype=np.int32)
    foreground = signal > threshold_otsu(signal)
    foreground = opening(foreground, disk(1))
    foreground = remove_small_objects(foreground, max_size=min_area_px - 1)
    distance = ndi.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=min_distance_px, labels=ndi.label(foreground)[0],
                           exclude_border=False)
    markers = np.zeros(signal.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground).astype(np.int32)
