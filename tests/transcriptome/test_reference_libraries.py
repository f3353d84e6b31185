"""Normalisation factors against their reference libraries on real counts.

GTEx lung, chromosome 21, first 30 samples (818 genes, 56% zeros), as shipped with rnanorm
(``rnanorm.datasets.load_gtex``): raw read counts from the GTEx project (V8).
- TMM: ``rnanorm.TMM`` (a port of ``edgeR::calcNormFactors``); hccbio keeps its own code
  because it is 3.6x faster (comment in ``tmm_factors``): the factors must be equal.
- Median of ratios: computed by ``pydeseq2.preprocessing.deseq2_norm`` inside
  ``median_ratio_factors``; checked here against DESeq2's size factors and the definition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transcriptome.normalise import median_ratio_factors, normalise, tmm_factors

rnanorm_datasets = pytest.importorskip("rnanorm.datasets")


@pytest.fixture(scope="module")
def gtex_counts() -> pd.DataFrame:
    """Genes x samples raw counts (GTEx lung, chr21, 30 samples)."""
    counts = rnanorm_datasets.load_gtex().exp.T
    assert counts.shape == (818, 30) and np.issubdtype(counts.to_numpy().dtype, np.integer)
    return counts


def _geometric_unit(values: np.ndarray) -> np.ndarray:
    return values / np.exp(np.mean(np.log(values)))


def test_tmm_equals_rnanorm(gtex_counts, breast_cancer_counts):
    from rnanorm import TMM

    for counts in (gtex_counts, breast_cancer_counts):
        ours = tmm_factors(counts)
        reference = TMM().fit(counts.T).get_norm_factors(counts.T)
        np.testing.assert_allclose(ours.to_numpy(), np.asarray(reference), rtol=1e-12)
    assert not np.allclose(tmm_factors(gtex_counts).to_numpy(), 1.0, atol=0.05)


def test_median_ratio_equals_deseq2_size_factors(gtex_counts):
    from pydeseq2.preprocessing import deseq2_norm

    factors = median_ratio_factors(gtex_counts)
    _, size = deseq2_norm(gtex_counts.T.to_numpy())
    library = gtex_counts.sum(axis=0).to_numpy()
    np.testing.assert_allclose(_geometric_unit(factors.to_numpy() * library),
                               _geometric_unit(np.asarray(size)), rtol=1e-12)
    # the definition (Anders & Huber 2010): median over genes expressed everywhere of the
    # ratio to the gene's geometric mean
    x = gtex_counts.to_numpy(dtype=float)
    logs = np.log(x[(x > 0).all(axis=1)])
    direct = np.exp(np.median(logs - logs.mean(axis=1, keepdims=True), axis=0))
    np.testing.assert_allclose(_geometric_unit(factors.to_numpy() * library),
                               _geometric_unit(direct), rtol=1e-12)
    np.testing.assert_allclose(np.exp(np.mean(np.log(factors))), 1.0, rtol=1e-12)


def test_normalised_values_use_the_reference_factors(gtex_counts):
    from rnanorm import TMM

    result = normalise(gtex_counts, value_type="counts", method="tmm", pseudocount=1.0)
    library = gtex_counts.sum(axis=0)
    reference = np.asarray(TMM().fit(gtex_counts.T).get_norm_factors(gtex_counts.T))
    expected = np.log2(gtex_counts / (library * reference) * 1e6 + 1.0)
    np.testing.assert_allclose(result.log2.to_numpy(), expected.to_numpy(), rtol=1e-12)
