"""Benjamini-Hochberg false discovery rate q values."""

from __future__ import annotations

import numpy as np
from statsmodels.stats.multitest import multipletests


def bh_qvalues(p: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (q values), as R's ``p.adjust(p, "BH")``.

    Missing p values stay missing and do not count towards the number of tests.

    Parameters
    ----------
    p
        p values (NaN for tests not done).

    Returns
    -------
    numpy.ndarray
        q values in the input order.

    Examples
    --------
    >>> bh_qvalues([0.01, 0.04, 0.03, np.nan]).round(3).tolist()
    [0.03, 0.04, 0.04, nan]
    """
    values = np.asarray(p, dtype=float)
    q = np.full(values.shape, np.nan)
    present = ~np.isnan(values)
    if present.any():
        q[present] = multipletests(values[present], method="fdr_bh")[1]
    return q
