"""Real expression data for the transcriptome tests: scikit-survival's breast cancer set.

198 tumours, log2 Affymetrix expression of 76 genes (probe sets), with distant-metastasis-free
survival (Desmedt et al., Clin Cancer Res 2007; GEO GSE7390), bundled with scikit-survival.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (log2 expression genes x samples, survival table indexed by sample)."""
    sksurv_datasets = pytest.importorskip("sksurv.datasets")
    features, outcome = sksurv_datasets.load_breast_cancer()
    genes = [c for c in features.columns if c.startswith("X")]
    samples = [f"bc{i:03d}" for i in range(features.shape[0])]
    log2 = features[genes].astype(float).T
    log2.columns = samples
    log2.index.name = "gene"
    survival = pd.DataFrame({"time": outcome["t.tdm"].astype(float),
                             "event": outcome["e.tdm"].astype(int)}, index=samples)
    return log2, survival


@pytest.fixture(scope="session")
def breast_cancer_counts(breast_cancer: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    """Count-like integers derived from the real log2 values: round(2 ** log2)."""
    log2, _ = breast_cancer
    return np.round(2.0 ** log2)


ABRS = ["CXCR2P1", "ICOS", "TIMD4", "CTLA4", "PAX5", "KLRC3", "FCRL3", "AIM2", "GBP5", "CCL4"]


@pytest.fixture()
def hcc_like_counts(breast_cancer_counts: pd.DataFrame) -> pd.DataFrame:
    """Real count-like rows (breast cancer, round(2**log2)) relabelled with signature genes.

    Only the labels are borrowed, so scores test the plumbing, not biology: ABRS, T-effector
    and four single genes present; the myeloid set absent.
    """
    counts = breast_cancer_counts.iloc[:, :12].copy()
    names = ABRS + ["CD8A", "EOMES", "PRF1", "IFNG", "CD274", "GPC3", "AFP", "VEGFA"]
    index = list(counts.index)
    index[:len(names)] = names
    counts.index = pd.Index(index, name="gene")
    return counts * 40  # libraries of a few million reads
