"""Gene-set scores on real expression (scikit-survival breast cancer), checked against direct
computations, order invariance, missing-gene handling and the shipped gene sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from transcriptome.config import DEFAULT_GENE_MAP, DEFAULT_GENE_SETS, TranscriptomeConfig
from transcriptome.errors import ExpressionError
from transcriptome.genes import load_gene_map
from transcriptome.signatures import GeneSet, load_gene_sets, score_gene_sets


def _probe_set(log2: pd.DataFrame) -> GeneSet:
    return GeneSet("probes", "eight probe sets", tuple(log2.index[[0, 5, 11, 17, 30, 41, 52, 66]]),
                   "test")


def _ssgsea_direct(x: pd.Series, genes: set[str], alpha: float) -> float:
    """Barbie et al. (2009) ssGSEA ES on 10000 * rank / N weights, written out."""
    rank = rankdata(x.to_numpy(), method="average") * 10000 / x.size
    order = np.argsort(-rank, kind="stable")
    weight = rank[order] ** alpha
    hit = np.isin(x.index.to_numpy()[order], list(genes))
    p_hit = np.cumsum(np.where(hit, weight, 0.0)) / weight[hit].sum()
    p_miss = np.cumsum(~hit) / (~hit).sum()
    return float(np.sum(p_hit - p_miss))


def test_scores_equal_direct_computation(breast_cancer):
    log2, _ = breast_cancer
    gene_set = _probe_set(log2)
    result = score_gene_sets(log2, [gene_set], min_genes=3, weight=0.25)[0]
    block = log2.loc[list(gene_set.genes)].to_numpy()
    z = (block - block.mean(axis=1, keepdims=True)) / block.std(axis=1, ddof=1, keepdims=True)
    np.testing.assert_allclose(result.zscore.to_numpy(), z.mean(axis=0), rtol=1e-12)
    direct = [_ssgsea_direct(log2[s], set(gene_set.genes), 0.25) for s in log2.columns[:40]]
    np.testing.assert_allclose(result.ssgsea.to_numpy()[:40], direct, rtol=1e-10)
    assert result.status == "ok" and result.found == gene_set.genes == result.used


def test_scores_flow_into_cox_model(breast_cancer, tmp_path):
    lifelines = pytest.importorskip("lifelines")
    from transcriptome.pipeline import score_expression

    log2, survival = breast_cancer
    gene_set = _probe_set(log2)
    gmt = tmp_path / "probes.gmt"
    gmt.write_text("probes\teight probe sets\t" + "\t".join(gene_set.genes) + "\n")
    config = TranscriptomeConfig.model_validate(
        {"signatures": {"gene_sets": [str(gmt)], "single_genes": [log2.index[3]]}})
    scored = score_expression(log2, config=config)  # scale detected: log2
    assert scored.normalised.value_type == "log2"
    features = scored.tables.features.set_index("sample_id")
    assert list(features.index) == list(log2.columns)
    table = survival.join(features[["rna_probes_score", "rna_probes_ssgsea"]])
    cox = lifelines.CoxPHFitter().fit(table[["time", "event", "rna_probes_score"]],
                                      "time", "event")
    block = log2.loc[list(gene_set.genes)]
    direct = block.sub(block.mean(axis=1), axis=0).div(block.std(axis=1), axis=0).mean()
    reference = lifelines.CoxPHFitter().fit(survival.assign(direct=direct), "time", "event")
    np.testing.assert_allclose(cox.params_["rna_probes_score"], reference.params_["direct"],
                               rtol=1e-8)
    np.testing.assert_allclose(cox.concordance_index_, reference.concordance_index_)
    assert (features["rna_probes_n_genes"] == 8).all()
    single = f"rna_{log2.index[3].lower()}_log2"
    np.testing.assert_array_equal(features[single].to_numpy(), log2.iloc[3].to_numpy())


def test_invariant_to_gene_and_sample_order(breast_cancer):
    log2, _ = breast_cancer
    gene_set = _probe_set(log2)
    rng = np.random.default_rng(8)
    shuffled = log2.iloc[rng.permutation(log2.shape[0]), rng.permutation(log2.shape[1])]
    first = score_gene_sets(log2, [gene_set])[0]
    second = score_gene_sets(shuffled, [gene_set])[0]
    pd.testing.assert_series_equal(first.zscore, second.zscore.loc[first.zscore.index],
                                   rtol=1e-12)
    pd.testing.assert_series_equal(first.ssgsea, second.ssgsea.loc[first.ssgsea.index],
                                   rtol=1e-12)


def test_too_few_genes_is_missing_with_reason(breast_cancer):
    log2, _ = breast_cancer
    genes = tuple(log2.index[:2]) + ("NOT_A_GENE1", "NOT_A_GENE2", "NOT_A_GENE3")
    result = score_gene_sets(log2, [GeneSet("few", "few", genes, "test")], min_genes=3,
                             min_fraction=0.5)[0]
    assert result.zscore.isna().all() and result.ssgsea.isna().all()
    assert result.status == "too few genes: 2 of 5 found, need 3"
    assert result.found == genes[:2]


def test_shipped_gene_sets_and_gene_map():
    sets = {s.key: s for s in load_gene_sets(DEFAULT_GENE_SETS)}
    assert sets["abrs"].genes == ("CXCR2P1", "ICOS", "TIMD4", "CTLA4", "PAX5", "KLRC3", "FCRL3",
                                  "AIM2", "GBP5", "CCL4")
    assert sets["teff"].genes == ("CD8A", "EOMES", "PRF1", "IFNG", "CD274")
    assert sets["myeloid_inflam"].genes == ("IL6", "CXCL1", "CXCL2", "CXCL3", "CXCL8", "PTGS2")
    assert "10.1038/s41591-022-01868-2" in sets["abrs"].source
    assert sets["ifng"].genes == ("IFNG", "STAT1", "IDO1", "CXCL10", "CXCL9", "HLA-DRA")
    symbols = set(load_gene_map(DEFAULT_GENE_MAP).values())
    wanted = {g for s in sets.values() for g in s.genes} | set(
        TranscriptomeConfig().signatures.single_genes)
    assert wanted <= symbols


def test_gmt_and_bad_gene_set_files(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("ifng\tIFN-gamma core\tIFNG\tSTAT1\tCXCL9\n")
    (only,) = load_gene_sets([gmt])
    assert (only.key, only.label, only.genes) == ("ifng", "IFN-gamma core",
                                                  ("IFNG", "STAT1", "CXCL9"))
    bad = tmp_path / "bad.gmt"
    bad.write_text("Bad-Key\tx\tIFNG\n")
    with pytest.raises(ExpressionError, match="bad.gmt: gene-set key 'Bad-Key'"):
        load_gene_sets([bad])
    twice = tmp_path / "twice.yaml"
    twice.write_text("sets:\n  - {key: a, label: a, source: s, genes: [X, X]}\n")
    with pytest.raises(ExpressionError, match="lists a gene twice"):
        load_gene_sets([twice])
