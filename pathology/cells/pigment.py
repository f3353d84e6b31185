"""Liver pigments (bile, hemosiderin, lipofuscin) that look like DAB: a colour and compartment
rule on per-cell optical densities, so that pigmented cells are never counted IHC-positive.

DAB's optical density lies along the DAB stain vector. The colour deconvolution of
:func:`pathology.segmentation.stains.stain_densities` splits any brown into hematoxylin, eosin and
DAB components; an IHC slide has no eosin, so the eosin component is a residual that measures how
far the brown is from DAB's hue. Three signs of pigment:

Colour cannot tell every pigment from DAB: dark hemosiderin and bile lying over a nucleus
have hue ratios within the range of real DAB, so for nuclear markers they are caught only when
they sit in the cytoplasm. The rule reports how many positive cells it excluded.

- **yellow-brown** (hemosiderin, lipofuscin): less blue absorption than hematoxylin would add,
  so the hematoxylin component turns negative relative to DAB
  (``hematoxylin_od / dab_od < pigment_min_hue_ratio``);
- **green-brown** (bile): a strongly negative eosin residual
  (``eosin_od / dab_od < pigment_min_eosin_ratio``);
- **cytoplasmic brown in a nuclear stain** (Ki67, FOXP3): pigment granules lie in the
  cytoplasm, so ring DAB far above nuclear DAB (``ring / nucleus > pigment_nuclear_ring_ratio``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pathology.cells.panels import Marker
from pathology.config import PhenotypesSection

BROWN_MIN_OD = 0.15  # DAB OD above which the hue ratio is read
STRONG_BROWN_MIN_OD = 0.3  # DAB OD above which the eosin-residual ratio is read


def _column(cells: pd.DataFrame, name: str) -> np.ndarray:
    if name not in cells:
        raise KeyError(f"cells table has no column {name!r} (needed by the pigment rule)")
    return cells[name].to_numpy(dtype=np.float64)


def pigment_mask(cells: pd.DataFrame, *, marker: Marker, config: PhenotypesSection) -> np.ndarray:
    """Cells whose brown colour is pigment rather than DAB.

    Parameters
    ----------
    cells
        Brightfield cells with ``nucleus_*_od`` (and ``ring_*_od`` for ring markers) columns.
    marker
        The IHC marker (its compartment decides where colour is read).
    config
        Pigment thresholds.

    Returns
    -------
    numpy.ndarray
        Boolean, one per cell; all False when ``pigment_exclusion`` is off.

    Examples
    --------
    >>> from pathology.config import PhenotypesSection
    >>> from pathology.cells.panels import Marker

BROWN_MIN_OD = 0.15  # DAB OD above which the hue ratio is read
STRONG_BROWN_MIN_OD = 0.3  # DAB OD above which the eosin-residual ratio is read
    >>> cells = pd.DataFrame({"nucleus_hematoxylin_od": [0.2, -0.17],
    ...                       "nucleus_eosin_od": [-0.1, -0.2], "nucleus_dab_od": [0.8, 1.1]})
    >>> pigment_mask(cells, marker=Marker(name="Ki67"), config=PhenotypesSection()).tolist()
    [False, True]
    """
    n = len(cells)
    if not config.pigment_exclusion or n == 0:
        return np.zeros(n, dtype=bool)
    if marker.compartment == "nucleus":
        prefixes = ["nucleus"]
    elif marker.compartment == "ring":
        prefixes = ["ring"]
    else:
        prefixes = ["nucleus", "ring"]
    flagged = np.zeros(n, dtype=bool)
    for prefix in prefixes:
        h = _column(cells, f"{prefix}_hematoxylin_od")
        e = _column(cells, f"{prefix}_eosin_od")
        d = _column(cells, f"{prefix}_dab_od")
        with np.errstate(invalid="ignore", divide="ignore"):
            brown = d > BROWN_MIN_OD  # ratios of faint colour are noise
            hue = np.where(brown, h / d, 0.0)
            eosin = np.where(d > STRONG_BROWN_MIN_OD, e / d, 0.0)
        flagged |= brown & ((hue < config.pigment_min_hue_ratio)
                            | (eosin < config.pigment_min_eosin_ratio))
    if marker.compartment == "nucleus" and "ring_dab_od" in cells:
        ring = _column(cells, "ring_dab_od")
        nucleus = _column(cells, "nucleus_dab_od")
        with np.errstate(invalid="ignore"):
            flagged |= (ring > 0.05) & (ring > config.pigment_nuclear_ring_ratio
                                        * np.maximum(nucleus, 0.0) + 0.05)
    return flagged
