"""Pathologists' scores from per-cell classes: PD-L1 TPS and CPS, and the H-score.

Pure functions on boolean (or bin) arrays, one entry per cell; the caller decides which cells
are tumour cells and immune cells (:mod:`pathology.features` and docs/phenotypes.md say how).
"""

from __future__ import annotations

import numpy as np


def pdl1_tps(positive: np.ndarray, tumour: np.ndarray) -> float | None:
    """Tumour proportion score: PD-L1+ viable tumour cells / all viable tumour cells x 100.

    Parameters
    ----------
    positive
        PD-L1 positivity per cell.
    tumour
        Viable tumour cells (cells on artefacts already left out).

    Returns
    -------
    float or None
        0-100; None without tumour cells.

    Examples
    --------
    >>> pdl1_tps(np.array([1, 0, 1, 1], bool), np.array([1, 1, 1, 0], bool))
    66.66666666666667
    """
    n_tumour = int(np.count_nonzero(tumour))
    if not n_tumour:
        return None
    return float(100.0 * np.count_nonzero(positive & tumour) / n_tumour)


def pdl1_cps(positive: np.ndarray, tumour: np.ndarray, immune: np.ndarray) -> float | None:
    """Combined positive score: PD-L1+ tumour cells, lymphocytes and macrophages / viable tumour
    cells x 100, capped at 100.

    PD-L1+ cells of any other class (fibroblasts, endothelium, hepatocytes outside the
    tumour) do not count.

    Parameters
    ----------
    positive
        PD-L1 positivity per cell.
    tumour
        Viable tumour cells.
    immune
        Lymphocytes and macrophages.

    Returns
    -------
    float or None
        0-100; None without tumour cells.

    Examples
    --------
    >>> pos = np.array([1, 0, 1, 1, 1], bool)   # tumour+, tumour-, lymphocyte+, macrophage+,
    >>> tum = np.array([1, 1, 0, 0, 0], bool)   # fibroblast+ (not counted)
    >>> imm = np.array([0, 0, 1, 1, 0], bool)
    >>> pdl1_cps(pos, tum, imm)
    100.0
    >>> pdl1_cps(pos, np.array([1, 1, 0, 0, 1], bool) | tum, imm)  # 4 / 3 tumour -> capped
    100.0
    >>> pdl1_cps(pos & ~imm, np.array([1, 1, 1, 1, 0], bool), imm)
    25.0
    """
    n_tumour = int(np.count_nonzero(tumour))
    if not n_tumour:
        return None
    counted = positive & (tumour | immune)
    return float(min(100.0, 100.0 * np.count_nonzero(counted) / n_tumour))


def hscore(bins: np.ndarray, cells: np.ndarray) -> float | None:
    """H-score of the chosen cells: 1 x %1+ + 2 x %2+ + 3 x %3+ (0-300).

    Parameters
    ----------
    bins
        Intensity bin per cell: 0 negative, 1-3 for 1+ to 3+.
    cells
        The cells scored (e.g. every cell on clean tissue).

    Examples
    --------
    >>> hscore(np.array([0, 1, 2, 3]), np.array([1, 1, 1, 1], bool))
    150.0
    """
    n = int(np.count_nonzero(cells))
    if not n:
        return None
    counts = np.bincount(np.asarray(bins)[cells], minlength=4)[:4]
    return float((counts * np.arange(4)).sum() * 100.0 / n)
