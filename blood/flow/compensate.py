"""Spillover matrices: from the FCS file's own keyword or a supplied CSV; FlowKit applies them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from flowkit import Matrix, Sample

from blood.errors import BloodInputError

SPILL_KEYWORDS = ("spillover", "spill", "comp")  # FCS 3.1 name first, then 3.0 / BD variants


def file_spillover(sample: Sample, *, source: str | Path | None = None) -> Matrix | None:
    """The spillover matrix stored in the FCS file, if any.

    Parameters
    ----------
    sample
        FlowKit sample.
    source
        The FCS file, for error messages (default: the sample's id).

    Returns
    -------
    flowkit.Matrix or None
        None when the file holds no $SPILLOVER / SPILL keyword.

    Raises
    ------
    BloodInputError
        The keyword is there but holds no matrix FlowKit can read (e.g. a detector count
        and names without their coefficients, as some Miltenyi files write).
    """
    meta = sample.get_metadata()
    for key in SPILL_KEYWORDS:
        if key in meta and str(meta[key]).strip():
            detectors = [sample.pnn_labels[i] for i in sample.fluoro_indices]
            try:
                return Matrix(meta[key], detectors, null_channels=sample.null_channels)
            except (ValueError, IndexError) as error:
                text = str(meta[key])
                raise BloodInputError(
                    f"{source or sample.id}: its ${key.upper()} keyword holds no readable "
                    f"spillover matrix ({text[:80]}{'...' if len(text) > 80 else ''}: "
                    f"{error}); compensate with a spillover CSV (the gates' compensation) or "
                    "gate it uncompensated") from error
    return None


def read_matrix(path: str | Path) -> Matrix:
    """Read a spillover matrix from CSV: a header of detector names, one row per detector.

    The header may start with ``#`` (FlowJo / FlowKit exports).

    Raises
    ------
    BloodInputError
        Missing file, non-square or non-numeric matrix, or a diagonal that is not 1.
    """
    path = Path(path)
    if not path.is_file():
        raise BloodInputError(f"{path}: spillover matrix file not found")
    table = pd.read_csv(path, header=0)
    detectors = [str(c).lstrip("#").strip() for c in table.columns]
    try:
        values = table.to_numpy(dtype=float)
    except ValueError as error:
        raise BloodInputError(f"{path}: spillover matrix has non-numeric cells ({error})") \
            from error
    if values.shape != (len(detectors), len(detectors)):
        raise BloodInputError(f"{path}: spillover matrix is {values.shape[0]}x{values.shape[1]} "
                              f"but names {len(detectors)} detectors; it must be square")
    if not np.allclose(np.diag(values), 1.0, atol=1e-6):
        raise BloodInputError(f"{path}: spillover diagonal must be 1 (got "
                              f"{np.round(np.diag(values), 4).tolist()})")
    return Matrix(values, detectors)


def check_matrix(matrix: Matrix, sample: Sample, *, source: str) -> None:
    """Raise when the matrix names detectors the sample lacks.

    Raises
    ------
    BloodInputError
        Names the missing detectors and the channels the file has.
    """
    missing = [d for d in matrix.detectors if d not in sample.pnn_labels]
    if missing:
        raise BloodInputError(f"{source}: spillover detectors {missing} are not channels of "
                              f"{sample.id} (channels: {list(sample.pnn_labels)})")


def compensate(sample: Sample, matrix: Matrix) -> np.ndarray:
    """Compensated events (all channels, raw scale), computed by FlowKit.

    Parameters
    ----------
    sample
        FlowKit sample.
    matrix
        Spillover matrix whose detectors are channels of the sample.

    Returns
    -------
    numpy.ndarray
        events x channels, scatter and time columns unchanged.
    """
    check_matrix(matrix, sample, source=str(sample.id))
    return np.asarray(matrix.apply(sample))
