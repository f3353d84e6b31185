"""scRNA-seq arm: real PBMC data (scanpy's bundled pbmc68k_reduced) and seeded synthetic counts.

pbmc68k_reduced stores scaled values in X and log-normalised values in .raw; its
``bulk_labels`` come from correlation with sorted populations, so they are a noisy truth.
The synthetic counts are the point where known cell-type fractions must be recovered.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from blood.batch import BloodJob, run_blood
from blood.config import BloodConfig, ScrnaConfig
from blood.errors import BloodInputError
from blood.scrna.annotate import annotate
from blood.scrna.read import classify_values, expression, read_scrna

# our types -> pbmc68k bulk-label lineages (CD4 and CD8 subsets pooled: the sorted
# naive/memory/Treg labels are not separable on its 765 genes, which lack FOXP3 and IL2RA)
TO_BULK = {"cd8_t": "CD8 T", "cd4_t": "CD4 T", "treg": "CD4 T", "nk": "CD56+ NK",
           "b": "CD19+ B", "cmono": "CD14+ Monocyte", "ncmono": "CD14+ Monocyte",
           "mdsc": "CD14+ Monocyte", "dc": "Dendritic"}


def _bulk_lineage(label: str) -> str:
    return "CD8 T" if label.startswith("CD8+") else "CD4 T" if label.startswith("CD4+") else label


@pytest.fixture(scope="module")
def pbmc68k() -> ad.AnnData:
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()  # bundled with scanpy: no download


def test_pbmc68k_values_detected_as_log_normalised_from_raw(pbmc68k):
    assert classify_values(pbmc68k.X) == "scaled"
    data = expression(pbmc68k)
    assert (data.kind, data.source) == ("log_normalised", "raw")
    assert data.adata.n_obs == 700 and data.adata.n_vars == 765


def test_pbmc68k_marker_annotation_agrees_with_bulk_labels(pbmc68k):
    data = expression(pbmc68k)
    labels = annotate(data.adata, config=ScrnaConfig()).labels
    truth = pbmc68k.obs["bulk_labels"].astype(str).map(_bulk_lineage)
    agreement = float((labels.map(TO_BULK) == truth).mean())
    chance = float(truth.value_counts(normalize=True).max())  # majority-class rate
    message = f"agreement {agreement:.3f} vs majority-class rate {chance:.3f}"
    print(message)
    assert agreement >= 0.7 and agreement >= 2 * chance, message
    # every lineage is mostly recovered, not just the big ones
    per_lineage = (labels.map(TO_BULK) == truth).groupby(truth).mean()
    assert per_lineage[["CD14+ Monocyte", "CD19+ B", "CD56+ NK", "CD4 T"]].min() >= 0.75, \
        per_lineage.to_dict()


# ------------------------------------------------------------------ synthetic raw counts
PLANTED = {"cd8_t": 0.25, "cd4_t": 0.30, "nk": 0.10, "b": 0.15, "cmono": 0.15, "dc": 0.05}
TYPE_GENES = {"cd8_t": ["CD8A", "CD8B", "CD3D", "CD3E", "GZMA", "GZMB", "PRF1"],
              "cd4_t": ["CD3D", "CD3E", "CD4", "IL7R", "LDHB", "CCR7"],
              "nk": ["NKG7", "GNLY", "KLRD1", "KLRF1", "NCAM1", "PRF1"],
              "b": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "HLA-DRA", "CD74"],
              "cmono": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1", "CSF3R", "HLA-DRA", "CD74"],
              "dc": ["FCER1A", "CST3", "CLEC10A", "CD1C", "HLA-DQA1", "HLA-DRA", "CD74"]}
OTHER_GENES = ["FOXP3", "IL2RA", "CTLA4", "IKZF2", "TIGIT", "FCGR3A", "MS4A7", "LST1", "CDKN1C",
               "RHOC", "LILRA4", "IL3RA", "S100A12", "VCAN", "ARG1", "HLA-DRB1", "HLA-DPA1",
               "IFNG", "CXCL9", "CXCL10", "TBX21", "PDCD1", "HAVCR2", "LAG3", "TOX", "ISG15",
               "IFI6", "IFI44L", "MX1", "IFIT1", "IFIT3", "OAS1", "STAT1", "IRF7"]


def synthetic_counts(n_cells: int, fractions: dict[str, float], *, seed: int,
                     sample: str) -> ad.AnnData:
    """Synthetic PBMC raw counts with planted cell types (seeded; the truth is known)."""
    rng = np.random.default_rng(seed)
    markers = sorted({g for genes in TYPE_GENES.values() for g in genes} | set(OTHER_GENES))
    genes = [*markers, "MT-CO1", "MT-ND1", *[f"GENE{i}" for i in range(500)]]
    types = rng.choice(list(fractions), size=n_cells, p=list(fractions.values()))
    lam = np.tile(rng.gamma(2.0, 0.8, len(genes)), (n_cells, 1))
    lam[:, : len(markers)] = 0.05
    lam[:, len(markers): len(markers) + 2] = 3.0  # MT genes: ~0.5% of counts
    for name, type_genes in TYPE_GENES.items():
        rows = np.flatnonzero(types == name)
        cols = [genes.index(g) for g in type_genes]
        lam[np.ix_(rows, cols)] = 6.0
    counts = rng.poisson(lam).astype(np.float32)
    obs = pd.DataFrame({"sample": sample, "planted": types},
                       index=[f"{sample}_{i}" for i in range(n_cells)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def two_samples_h5ad(tmp_path_factory) -> tuple:
    folder = tmp_path_factory.mktemp("scrna")
    second = dict(PLANTED, cd8_t=0.45, cd4_t=0.10)
    adata = ad.concat([synthetic_counts(400, PLANTED, seed=1, sample="S1"),
                       synthetic_counts(400, second, seed=2, sample="S2")])
    path = folder / "pbmc_two_samples.h5ad"
    adata.write_h5ad(path)
    return path, adata


def test_synthetic_counts_batch_run_recovers_planted_fractions(two_samples_h5ad, tmp_path):
    path, adata = two_samples_h5ad
    jobs = [BloodJob("S1", "scrna", "", path), BloodJob("S2", "scrna", "", path),
            BloodJob("S3", "scrna", "", path),  # not in the file's sample column
            BloodJob("S4", "scrna", "", tmp_path / "missing.h5ad")]
    result = run_blood(jobs, tmp_path, config=BloodConfig())
    assert result.failed == ["S3", "S4"]
    reasons = result.batch.set_index("sample_id")["reason"]
    assert "'S3' not found" in reasons["S3"] and "missing.h5ad" in reasons["S4"]
    features = pd.read_csv(tmp_path / "blood_features.csv").set_index("sample_id")
    for sample in ("S1", "S2"):
        cells = pd.read_csv(tmp_path / "blood" / sample / "scrna_cells.csv")
        kept = cells.loc[cells["qc_pass"], "barcode"]  # fractions are of QC-passing cells
        planted = adata.obs.loc[kept, "planted"].value_counts(normalize=True)
        for cell_type, fraction in planted.items():
            assert features.loc[sample, f"scrna_{cell_type}_frac"] == pytest.approx(
                fraction, abs=0.03), (sample, cell_type)
    assert features.loc["S2", "scrna_cd8_t_frac"] > features.loc["S1", "scrna_cd8_t_frac"]
    # T-effector genes are planted in CD8 T cells: more CD8 T, higher pseudobulk score
    assert features.loc["S2", "scrna_teff_score"] > features.loc["S1", "scrna_teff_score"]
    dictionary = pd.read_csv(tmp_path / "blood_features_dictionary.csv")
    assert dictionary["name"].tolist() == list(features.columns)
    assert dictionary["label"].notna().all() and dictionary["unit"].notna().all()
    assert all(len(c) <= 32 for c in features.columns)
    qc = json.loads((tmp_path / "blood" / "S1" / "scrna_qc.json").read_text())
    assert qc["data_kind"] == "raw_counts" and qc["n_cells_in"] == 400
    cells = pd.read_csv(tmp_path / "blood" / "S1" / "scrna_cells.csv")
    assert cells["doublet_score"].notna().all()  # scrublet ran on raw counts
    assert (tmp_path / "blood" / "S2" / "cell_types.csv").is_file()


def test_10x_matrix_folder_reads_as_raw_counts(tmp_path):
    import gzip

    from scipy.io import mmwrite

    adata = synthetic_counts(60, PLANTED, seed=3, sample="S1")
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        mmwrite(handle, sp.csr_matrix(adata.X.T).astype(np.int64))
    with gzip.open(folder / "features.tsv.gz", "wt") as handle:
        handle.writelines(f"ENSG{i:05d}\t{g}\tGene Expression\n"
                          for i, g in enumerate(adata.var_names))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as handle:
        handle.writelines(f"{b}\n" for b in adata.obs_names)
    read = read_scrna(folder)
    assert read.shape == adata.shape and list(read.var_names) == list(adata.var_names)
    np.testing.assert_array_equal(read.X.toarray(), adata.X.toarray())
    assert expression(read).kind == "raw_counts"


def test_scaled_values_without_raw_fail_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=rng.normal(size=(20, 30)).astype(np.float32))
    with pytest.raises(BloodInputError, match="scaled.h5ad"):
        expression(adata, path=tmp_path / "scaled.h5ad")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BloodInputError, match="unknown single-cell format"):
        read_scrna(tmp_path / "notes.txt")


def test_10x_h5_and_one_file_per_sample_without_sample_column(tmp_path):
    import h5py

    adata = synthetic_counts(300, PLANTED, seed=4, sample="X")
    matrix = sp.csc_matrix(adata.X.T).astype(np.int32)  # genes x cells, as Cell Ranger
    path = tmp_path / "P7_filtered_feature_bc_matrix.h5"
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["barcodes"] = np.array(adata.obs_names, dtype="S")
        group["data"], group["indices"] = matrix.data, matrix.indices
        group["indptr"], group["shape"] = matrix.indptr, np.array(matrix.shape)
        features = group.create_group("features")
        features["id"] = np.array([f"ENSG{i:05d}" for i in range(adata.n_vars)], dtype="S")
        features["name"] = np.array(adata.var_names, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")
        features["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
        features["_all_tag_keys"] = np.array([b"genome"])
    read = read_scrna(path)
    np.testing.assert_array_equal(read.X.toarray(), adata.X.toarray())
    config = BloodConfig(scrna=ScrnaConfig(qc={"doublets": False}))
    result = run_blood([BloodJob("P7", "scrna", "", path)], tmp_path / "run", config=config)
    assert result.failed == []
    features = result.features.set_index("sample_id")
    assert features.loc["P7", "scrna_n_cells"] == 300  # no doublet removal, nothing fails QC
    planted = adata.obs["planted"].value_counts(normalize=True)
    assert features.loc["P7", "scrna_b_frac"] == pytest.approx(planted["b"], abs=0.02)


# ------------------------------------------------------------------ types without markers
def test_gene_filtered_pbmc68k_annotated_with_treg_not_measurable(pbmc68k, tmp_path):
    data = expression(pbmc68k).adata
    treg_genes = ScrnaConfig().markers["treg"].positive
    assert annotate(data, config=ScrnaConfig()).not_measurable == {}  # TIGIT is there
    filtered = data[:, ~data.var_names.isin(treg_genes)].copy()  # drops TIGIT: no treg marker
    assert filtered.n_vars == data.n_vars - 1
    path = tmp_path / "pbmc68k_no_treg_markers.h5ad"
    filtered.write_h5ad(path)
    result = run_blood([BloodJob("P1", "scrna", "", path)], tmp_path / "run",
                       config=BloodConfig())
    assert result.failed == []
    out = tmp_path / "run"
    features = pd.read_csv(out / "blood_features.csv").set_index("sample_id")
    assert np.isnan(features.loc["P1", "scrna_treg_frac"])  # empty cell in the CSV
    fracs = features.loc["P1", [c for c in features.columns if c.endswith("_frac")]].dropna()
    assert len(fracs) == len(ScrnaConfig().markers) - 1 and 0.95 <= fracs.sum() <= 1.0
    cells = pd.read_csv(out / "blood" / "P1" / "scrna_cells.csv").set_index("barcode")
    assert "treg" not in set(cells["cell_type"])
    passed = cells[cells["qc_pass"]]
    truth_b = (pbmc68k.obs.loc[passed.index, "bulk_labels"] == "CD19+ B").mean()
    assert features.loc["P1", "scrna_b_frac"] == pytest.approx(truth_b, abs=0.03)
    types = pd.read_csv(out / "blood" / "P1" / "cell_types.csv", keep_default_na=False)
    treg = types.set_index("cell_type").loc["treg"]
    assert treg["n_cells"] == "" and treg["fraction"] == ""
    assert "FOXP3" in treg["not_measurable"] and "TIGIT" in treg["not_measurable"]
    qc = json.loads((out / "blood" / "P1" / "scrna_qc.json").read_text())
    assert set(qc["not_measurable"]) == {"treg"}
    dictionary = pd.read_csv(out / "blood_features_dictionary.csv").set_index("name")
    row = dictionary.loc["scrna_treg_frac"]
    assert "NOT MEASURABLE" in row["method"] and path.name in row["method"]
    assert row["unit"] == "fraction (0-1)"
    assert "NOT MEASURABLE" not in dictionary.loc["scrna_b_frac", "method"]


def test_no_marker_gene_at_all_fails_that_sample_naming_the_cause(pbmc68k, tmp_path):
    data = expression(pbmc68k).adata
    data.var_names = [f"ENSG{i:011d}" for i in range(data.n_vars)]  # ids, not symbols
    path = tmp_path / "ensembl_ids.h5ad"
    data.write_h5ad(path)
    result = run_blood([BloodJob("P1", "scrna", "", path)], tmp_path / "run",
                       config=BloodConfig())
    reason = result.batch.set_index("sample_id").loc["P1", "reason"]
    assert result.failed == ["P1"] and "ensembl_ids.h5ad" in reason
    assert "no cell type can be measured" in reason and "gene symbols" in reason

