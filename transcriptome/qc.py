"""Per-sample quality control: library size, detected genes, outlier flags."""

from __future__ import annotations

import numpy as np
import pandas as pd

MAD_SCALE = 1.4826  # scaled MAD estimates the standard deviation under normality
QC_COLUMNS = ("library_size", "detected_genes", "qc_flag", "qc_reasons")


def sample_qc(values: pd.DataFrame, *, value_type: str, min_library_size: float = 1e6,
              detection_threshold: float = 1.0, outlier_mads: float = 3.0) -> pd.DataFrame:
    """Library size, detected genes and outlier flags per sample.

    Flags: library size below ``min_library_size`` (counts only); log10 library size or
    detected-gene count more than ``outlier_mads`` scaled MADs below the cohort median (needs 3
    or more samples and a non-zero MAD). Flags never drop a sample.

    Parameters
    ----------
    values
        Genes by samples, on the input scale (all genes of the file).
    value_type
        'counts', 'tpm' or 'log2'. Library size is reported for counts only; detected genes for
        counts and TPM (a log2 table's zero level is unknown).
    min_library_size, detection_threshold, outlier_mads
        See :class:`transcriptome.config.QcConfig`.

    Returns
    -------
    pandas.DataFrame
        Index = samples; columns ``library_size``, ``detected_genes``, ``qc_flag`` (0/1),
        ``qc_reasons`` ('' when none).

    Examples
    --------
    >>> frame = pd.DataFrame({"a": [5.0, 0, 3], "b": [1.0, 1, 0]})
    >>> sample_qc(frame, value_type="counts", min_library_size=4)["qc_flag"].tolist()
    [0, 1]
    """
    samples = values.columns
    if value_type == "counts":
        library = values.sum(axis=0).astype(float)
    else:
        library = pd.Series(np.nan, index=samples)
    if value_type in ("counts", "tpm"):
        detected = (values >= detection_threshold).sum(axis=0).astype(float)
    else:
        detected = pd.Series(np.nan, index=samples)
    reasons: dict[str, list[str]] = {s: [] for s in samples}
    if value_type == "counts":
        for sample in samples[library < min_library_size]:
            reasons[sample].append(f"low library size ({library[sample]:.0f} < "
                                   f"{min_library_size:.0f})")
        with np.errstate(divide="ignore"):
            log_library = np.log10(library.clip(lower=1.0))
        for sample in _low_outliers(log_library, outlier_mads):
            reasons[sample].append("library size outlier")
    if value_type in ("counts", "tpm"):
        for sample in _low_outliers(detected, outlier_mads):
            reasons[sample].append("detected genes outlier")
    return pd.DataFrame({
        "library_size": library,
        "detected_genes": detected,
        "qc_flag": [int(bool(reasons[s])) for s in samples],
        "qc_reasons": ["; ".join(reasons[s]) for s in samples],
    }, index=samples)


def _low_outliers(series: pd.Series, mads: float) -> list[str]:
    if series.size < 3:
        return []
    median = float(series.median())
    mad = float((series - median).abs().median()) * MAD_SCALE
    if mad == 0:
        return []
    return list(series.index[series < median - mads * mad])
