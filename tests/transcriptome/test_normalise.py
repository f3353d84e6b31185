"""Normalisation: library-size scaling and order invariance, TMM composition known answer,
scale detection, QC flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transcriptome.errors import ExpressionError
from transcriptome.normalise import detect_value_type, normalise, tmm_factors
from transcriptome.qc import sample_qc


@pytest.mark.parametrize("method", ["cpm", "median_ratio"])
def test_scaled_library_gives_same_values(breast_cancer_counts, method):
    counts = breast_cancer_counts
    scaled = counts.copy()
    scaled["bc007"] *= 13.0
    first = normalise(counts, value_type="counts", method=method).log2
    second = normalise(scaled, value_type="counts", method=method).log2
    np.testing.assert_allclose(second.to_numpy(), first.to_numpy(), rtol=1e-12, atol=1e-12)


def test_tmm_scaled_library_nearly_same(breast_cancer_counts):
    """TMM's precision weights use absolute counts (as in edgeR): equal to about 1%."""
    scaled = breast_cancer_counts.copy()
    scaled["bc007"] *= 13.0
    first = tmm_factors(breast_cancer_counts)
    second = tmm_factors(scaled)
    np.testing.assert_allclose(second.to_numpy(), first.to_numpy(), rtol=0.02)
    assert not np.allclose(first.to_numpy(), 1.0)


@pytest.mark.parametrize("method", ["tmm", "median_ratio", "cpm"])
def test_normalisation_invariant_to_gene_and_sample_order(breast_cancer_counts, method):
    counts = breast_cancer_counts
    rng = np.random.default_rng(3)
    shuffled = counts.iloc[rng.permutation(counts.shape[0]), rng.permutation(counts.shape[1])]
    first = normalise(counts, value_type="counts", method=method).log2
    second = normalise(shuffled, value_type="counts", method=method).log2
    pd.testing.assert_frame_equal(second.loc[first.index, first.columns], first, rtol=1e-12)


def test_tmm_removes_composition_bias_synthetic():
    """Synthetic known answer: sample b equals a except one gene soaking up reads."""
    base = np.full(200, 100.0)
    other = base.copy()
    other[0] = 20000.0
    counts = pd.DataFrame({"a": base, "b": other}, index=[f"g{i}" for i in range(200)])
    tmm = normalise(counts, value_type="counts", method="tmm").log2
    np.testing.assert_allclose(tmm.loc["g1":, "a"], tmm.loc["g1":, "b"], rtol=1e-12)
    cpm = normalise(counts, value_type="counts", method="cpm").log2
    assert (cpm.loc["g1":, "b"] < cpm.loc["g1":, "a"] - 0.9).all()  # CPM is biased by ~1 log2


def test_detect_value_type(breast_cancer, breast_cancer_counts):
    log2, _ = breast_cancer
    assert detect_value_type(log2, source="bc") == "log2"
    assert detect_value_type(breast_cancer_counts, source="bc") == "counts"
    tpm = breast_cancer_counts / breast_cancer_counts.sum() * 1e6
    assert detect_value_type(tpm, source="bc") == "tpm"
    with pytest.raises(ExpressionError, match="bc: cannot tell the scale"):
        detect_value_type(tpm * 1.7, source="bc")


def test_negative_counts_named(breast_cancer_counts):
    counts = breast_cancer_counts.copy()
    counts.iloc[4, 9] = -250.0
    with pytest.raises(ExpressionError, match=r"m\.csv: negative count -250\.0 for gene "
                                              f"'{counts.index[4]}' in sample 'bc009'"):
        normalise(counts, value_type="counts", source="m.csv")
    with pytest.raises(ExpressionError, match="negative count"):
        detect_value_type(counts, source="m.csv")


def test_qc_flags_low_library(breast_cancer_counts):
    counts = breast_cancer_counts.iloc[:, :20].copy()
    counts["bc003"] = np.floor(counts["bc003"] / 200)
    qc = sample_qc(counts, value_type="counts", min_library_size=0, outlier_mads=3)
    assert qc.loc["bc003", "qc_flag"] == 1
    assert "library size outlier" in qc.loc["bc003", "qc_reasons"]
    assert qc.drop(index="bc003")["qc_flag"].sum() == 0
    assert qc.loc["bc000", "library_size"] == counts["bc000"].sum()
