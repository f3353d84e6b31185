"""scRNA-seq arm: real PBMC data (scanpy's bundled pbmc68k_reduced) and seeded synthetic counts.

pbmc68k_reduced stores scaled values in X and log-normalised values in .raw; its
``bulk_labels`` come from correlation with sorted populations, so they are a noisy truth.
The synthetic counts are the point where known cell-type fractions must be recovered. An
interferon response is added synthetically to pbmc68k cells (no labelled stimulated PBMC
data ships with the dependencies) to check that it does not move the lineage fractions.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from blood.batch import BloodJob, run_blood
from blood.config import BloodConfig, ScrnaConfig, load_config
from blood.errors import BloodInputError, ConfigError
from blood.scrna.annotate import CLUSTER_COLUMNS, annotate
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
    annotation = annotate(data.adata, config=ScrnaConfig())
    labels = annotation.labels
    truth = pbmc68k.obs["bulk_labels"].astype(str).map(_bulk_lineage)
    agreement = float((labels.map(TO_BULK) == truth).mean())
    chance = float(truth.value_counts(normalize=True).max())  # majority-class rate
    message = f"agreement {agreement:.3f} vs majority-class rate {chance:.3f}"
    print(message)
    assert agreement >= 0.7 and agreement >= 2 * chance, message
    # every lineage is mostly recovered, not just the big ones; CD4 and CD8 T are pooled
    # here: they share clusters in these 765 genes, whose cells are then split one by one
    # (their fractions are checked in test_pbmc68k_lineage_fractions_*)
    t_cells = {"CD4 T": "T", "CD8 T": "T"}
    pooled = (labels.map(TO_BULK).replace(t_cells) == truth.replace(t_cells))
    per_lineage = pooled.groupby(truth.replace(t_cells)).mean()
    assert per_lineage[["CD14+ Monocyte", "CD19+ B", "CD56+ NK", "T"]].min() >= 0.75, \
        per_lineage.to_dict()
    table = annotation.cluster_table
    clusters = annotation.clusters
    assert list(table.columns) == ["group", *CLUSTER_COLUMNS] and table["group"].eq("").all()
    assert table["n_cells"].sum() == data.adata.n_obs
    assert sorted(table["cluster"]) == sorted(set(clusters)) and len(table) >= 5
    for row in table.itertuples():  # a cluster labelled as a whole holds its label only
        found = set(labels[(clusters == row.cluster).to_numpy()])
        subsets = {k for k, m in ScrnaConfig().markers.items() if m.within == row.label}
        assert row.labelled_by == "cells" or found <= {row.label, *subsets}, row
    assert annotation.umap.shape == (data.adata.n_obs, 2)
    again = annotate(data.adata, config=ScrnaConfig())  # seeded: the same clusters and labels
    pd.testing.assert_series_equal(again.labels, labels)
    pd.testing.assert_frame_equal(again.umap, annotation.umap)


# Interferon-stimulated genes: the classic IFN-response genes (Schoggins et al., Nature 2011),
# up in IFN-beta-stimulated PBMCs (Kang et al., Nat Biotechnol 2018). Only ISGs of this list
# already measured in pbmc68k (IFITM1, IFITM3, OAS1, ISG20, IRF7, LY6E, BST2, SP110) are raised
# in place; the others are added as genes.
ISGS = ["ISG15", "IFI6", "IFI27", "IFI44L", "IFIT1", "IFIT2", "IFIT3", "MX1", "MX2", "OAS1",
        "OAS2", "OAS3", "OASL", "RSAD2", "ISG20", "IRF7", "STAT1", "LY6E", "XAF1", "HERC5",
        "EPSTI1", "BST2", "IFITM1", "IFITM3", "CXCL10", "CCL8", "SAMD9L", "IFI35", "PLSCR1",
        "TNFSF10", "GBP1", "SP110", "PSMB9", "TAP1", "LGALS3BP", "CMPK2", "USP18"]
TARGET = 0.05  # issue 26: every lineage's fraction within 5 points, stimulated samples too
# pbmc68k lineages (bulk labels pooled) and our types pooled the same way: monocytes and
# dendritic cells as one myeloid lineage, because its Dendritic / CD14+ Monocyte boundary is
# not the textbook one (docs/blood.md); Treg counted as CD4 T
TO_LINEAGE = {"cd8_t": "cd8_t", "cd4_t": "cd4_t", "treg": "cd4_t", "nk": "nk", "b": "b",
              "cmono": "myeloid", "ncmono": "myeloid", "mdsc": "myeloid", "dc": "myeloid"}
BULK_TO_LINEAGE = {"CD4 T": "cd4_t", "CD8 T": "cd8_t", "CD56+ NK": "nk", "CD19+ B": "b",
                   "CD14+ Monocyte": "myeloid", "Dendritic": "myeloid", "CD34+": "cd34"}


def test_default_markers_are_lineage_genes_without_interferon_stimulated_genes(tmp_path):
    markers = ScrnaConfig().markers
    genes = {g for m in markers.values() for g in [*m.positive, *m.negative]}
    assert not genes & set(ISGS), genes & set(ISGS)
    assert not genes & {"CST3", "HLA-DQA1", "LDHB", "CCR7", "CD74"}  # shared across lineages
    assert {k: m.within for k, m in markers.items() if m.within} == {"treg": "cd4_t",
                                                                     "mdsc": "cmono"}
    assert load_config().scrna.markers == markers  # configs/blood.yaml shows the defaults
    with pytest.raises(ValueError, match="within"):
        ScrnaConfig(markers={"treg": {"positive": ["FOXP3"], "within": "cd4_t"}})
    path = tmp_path / "blood.yaml"  # a subset of a subset
    path.write_text("scrna:\n  markers:\n    a: {positive: [X], within: b}\n"
                    "    b: {positive: [Y], within: c}\n    c: {positive: [Z]}\n")
    with pytest.raises(ConfigError, match="a.within = 'b'"):
        load_config(path)


def interferon_response(adata: ad.AnnData, stimulated: np.ndarray, lineages: np.ndarray, *,
                        seed: int) -> ad.AnnData:
    """SYNTHETIC interferon response: ISG expression raised in the ``stimulated`` cells.

    Log-normalised ``adata`` gets every gene of :data:`ISGS` (absent ones added, with a low
    baseline in 10% of all cells); in stimulated cells each ISG rises by log1p units drawn
    per cell and gene (80% of ISGs respond), three units in myeloid cells, two in B cells and
    1.5 in lymphocytes on average, as monocytes respond most in IFN-beta-stimulated PBMCs.
    """
    rng = np.random.default_rng(seed)
    new = [g for g in ISGS if g not in adata.var_names]
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, dtype=float)
    baseline = (rng.random((adata.n_obs, len(new))) < 0.1) * rng.uniform(0.3, 1.0, (
        adata.n_obs, len(new)))
    x = np.hstack([x, baseline]).astype(np.float32)
    genes = [*adata.var_names, *new]
    columns = [genes.index(g) for g in ISGS]
    strength = np.array([{"myeloid": 3.0, "b": 2.0}.get(lin, 1.5) for lin in lineages])
    rise = (strength * rng.uniform(0.5, 1.5, adata.n_obs))[:, None] * (
        rng.random((adata.n_obs, len(columns))) < 0.8) * rng.uniform(0.6, 1.4, (
            adata.n_obs, len(columns)))
    x[np.ix_(stimulated, columns)] += rise[stimulated].astype(np.float32)
    return ad.AnnData(X=sp.csr_matrix(x), obs=adata.obs.copy(), var=pd.DataFrame(index=genes))


def _lineage_errors(cells: pd.DataFrame, truth: pd.Series) -> pd.Series:
    """Found minus labelled lineage fraction (any label on one side only is an error)."""
    passed = cells[cells["qc_pass"]]
    found = passed["cell_type"].map(lambda t: TO_LINEAGE.get(t, t)).value_counts(
        normalize=True)
    labelled = truth[passed["barcode"]].value_counts(normalize=True)
    types = found.index.union(labelled.index)
    return found.reindex(types, fill_value=0.0) - labelled.reindex(types, fill_value=0.0)


def test_pbmc68k_lineage_fractions_with_synthetic_interferon_response(pbmc68k, tmp_path):
    """Lineage fractions of labelled PBMC halves, stimulated (SYNTHETIC ISGs) and not.

    pbmc68k is split in two halves by lineage (seeded). Four samples in one file, as
    ``hccbio blood run`` gets them: CTRL_A, CTRL_B (as measured) and STIM_A (every cell of
    half A stimulated), STIM_B (a random half of B's cells stimulated). Every sample's worst
    lineage fraction error against the labels must be within the target, and stimulation
    must not move any reported fraction by more than that.
    """
    cells = expression(pbmc68k).adata
    lineages = cells.obs["bulk_labels"].astype(str).map(_bulk_lineage).map(BULK_TO_LINEAGE)
    rng = np.random.default_rng(0)
    half = np.zeros(cells.n_obs, dtype=bool)
    for name in sorted(set(lineages)):
        members = rng.permutation(np.flatnonzero(lineages == name))
        half[members[: len(members) // 2]] = True
    samples, truth = [], {}
    for name, mask in (("A", half), ("B", ~half)):
        part, lin = cells[mask], lineages[mask].to_numpy()
        stimulated = (np.ones(part.n_obs, dtype=bool) if name == "A"
                      else np.random.default_rng(2).random(part.n_obs) < 0.5)
        for kind, chosen in (("CTRL", np.zeros(part.n_obs, dtype=bool)), ("STIM", stimulated)):
            sample = interferon_response(part, chosen, lin, seed=1)
            sample.obs_names = [f"{kind}_{name}_{c}" for c in part.obs_names]
            sample.obs["sample"] = f"{kind}_{name}"
            truth.update(zip(sample.obs_names, lin, strict=True))
            samples.append(sample)
    joined = ad.concat(samples)
    path = tmp_path / "pbmc68k_ifn.h5ad"
    joined.write_h5ad(path)
    alone = tmp_path / "ctrl_a_alone.h5ad"  # the same cells in a file of their own
    samples[0].obs = samples[0].obs.drop(columns="sample")
    samples[0].write_h5ad(alone)
    names = ["CTRL_A", "STIM_A", "CTRL_B", "STIM_B"]
    config = BloodConfig(scrna=ScrnaConfig(qc={"min_genes": 100}))  # 765 genes
    out = tmp_path / "run"
    result = run_blood([*(BloodJob(n, "scrna", "", path) for n in names),
                        BloodJob("CTRL_A_ALONE", "scrna", "", alone)], out, config=config)
    assert result.failed == []
    truth = pd.Series(truth)
    tables = {n: pd.read_csv(out / "blood" / n / "scrna_cells.csv") for n in names}
    errors = {n: _lineage_errors(tables[n], truth) for n in names}
    worst = {n: round(float(e.abs().max()), 3) for n, e in errors.items()}
    print(worst, {n: e.round(3).to_dict() for n, e in errors.items()})
    assert max(worst.values()) <= TARGET, errors
    fractions = {n: pd.read_csv(out / "blood" / n / "cell_types.csv").set_index("cell_type")[
        "fraction"] for n in names}
    moved = {x: float((fractions[f"STIM_{x}"] - fractions[f"CTRL_{x}"]).abs().max())
             for x in "AB"}
    print("largest move of a reported fraction by stimulation", moved)
    assert max(moved.values()) <= TARGET, moved
    features = result.features.set_index("sample_id")
    assert (features.loc[["STIM_A", "STIM_B"], "scrna_ifn_score"].min()
            > features.loc[["CTRL_A", "CTRL_B"], "scrna_ifn_score"].max() + 1)  # it took
    # a sample's clusters and labels do not depend on the other samples of its file
    alone_cells = pd.read_csv(out / "blood" / "CTRL_A_ALONE" / "scrna_cells.csv")
    pd.testing.assert_frame_equal(alone_cells, tables["CTRL_A"])
    clusters = pd.read_csv(out / "blood" / "CTRL_A" / "scrna_clusters.csv")
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "blood" / "CTRL_A_ALONE" / "scrna_clusters.csv"), clusters)
    # outputs: clusters table, per-cell cluster and UMAP, QC plot, clustering in the QC json
    assert list(clusters.columns) == list(CLUSTER_COLUMNS)
    table = tables["CTRL_A"]
    assert clusters["n_cells"].sum() == table["qc_pass"].sum()
    assert set(table["cluster"].astype(str)) == set(clusters["cluster"].astype(str))
    assert table[["umap_1", "umap_2"]].notna().all(axis=None)
    assert (out / "blood" / "STIM_B" / "scrna_umap.png").stat().st_size > 10_000
    qc = json.loads((out / "blood" / "STIM_A" / "scrna_qc.json").read_text())
    assert qc["clustering"]["per"] == "sample" and qc["clustering"]["n_clusters"] >= 5


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


# ------------------------------------------------------------------ CellTypist, shipped model
@pytest.fixture(scope="module")
def celltypist_training():
    """models/train_celltypist.py as a module, and its recorded facts."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("celltypist")
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "hccbio_train_celltypist", root / "models" / "train_celltypist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    facts = json.loads((module.OUT / module.FACTS_FILE).read_text())
    return module, facts


def test_celltypist_model_retrains_from_its_recorded_training_half(celltypist_training):
    import celltypist

    module, facts = celltypist_training
    adata, labels = module.load_pbmc68k()
    heldout = module.heldout_mask(labels, seed=facts["split_seed"])
    assert list(adata.obs_names[~heldout]) == facts["train_cells"]
    assert list(adata.obs_names[heldout]) == facts["heldout_cells"]
    assert not set(facts["train_cells"]) & set(facts["heldout_cells"])
    alpha = facts["training"]["celltypist.train"]["alpha"]
    cv = pd.DataFrame(facts["training"]["cv"])  # alpha was the CV choice, not a held-out one
    assert alpha == cv.sort_values(["max_abs_fraction_error", "accuracy"],
                                   ascending=[True, False])["alpha"].iloc[0]
    retrained = module.train(adata[~heldout], labels[~heldout], alpha=alpha)
    shipped = celltypist.models.Model.load(str(module.OUT / module.MODEL_FILE))
    assert list(shipped.cell_types) == list(retrained.cell_types) == facts["classes"]
    np.testing.assert_allclose(retrained.classifier.coef_, shipped.classifier.coef_,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(retrained.scaler.mean_, shipped.scaler.mean_, rtol=1e-12)


def test_celltypist_heldout_fractions_through_run_blood(celltypist_training, pbmc68k,
                                                        tmp_path):
    """The shipped model on the held-out cells, run as a user runs samples.

    One file is the held-out half as scanpy ships it (scaled X, log-normalised .raw); the
    other holds three pseudo-samples of the same cells (log-normalised X, a sample column).
    """
    from blood.scrna.annotate import _sha256

    module, facts = celltypist_training
    heldout = pbmc68k[facts["heldout_cells"]].copy()
    whole = tmp_path / "pbmc68k_heldout.h5ad"
    heldout.write_h5ad(whole)
    cells = expression(heldout).adata
    lineages = cells.obs["bulk_labels"].astype(str).map(module.lineage)
    truth = lineages.map(module.LABELS)
    cells.obs["sample"] = "PBMC_" + module.pseudo_samples(lineages).astype(str)
    mixed = tmp_path / "pbmc68k_heldout_pseudo_samples.h5ad"
    cells.write_h5ad(mixed)
    model = module.OUT / module.MODEL_FILE
    config = BloodConfig(scrna=ScrnaConfig(
        celltypist_model=model, celltypist_labels=module.LABELS,
        qc={"min_genes": 100}))  # 765 genes: every cell detects >= 183 of them
    jobs = [BloodJob("PBMC_HELDOUT", "scrna", "", whole),
            *[BloodJob(f"PBMC_{s}", "scrna", "", mixed) for s in module.PSEUDO_SAMPLES]]
    out = tmp_path / "run"
    result = run_blood(jobs, out, config=config)
    assert result.failed == []
    features = pd.read_csv(out / "blood_features.csv").set_index("sample_id")
    recorded = facts["heldout"]["celltypist"]["fraction_error"]
    worst = {}
    for job in jobs:
        table = pd.read_csv(out / "blood" / job.sample_id / "scrna_cells.csv")
        assert table["qc_pass"].all()
        labelled = truth[table["barcode"]].value_counts(normalize=True)
        key = job.sample_id.removeprefix("PBMC_")
        key = "heldout" if key == "HELDOUT" else key
        errors = {t: features.loc[job.sample_id, f"scrna_{t}_frac"] - labelled.get(t, 0.0)
                  for t in module.LABELS.values()}
        for t, error in errors.items():  # the card's figures are what the pipeline gives
            assert error == pytest.approx(recorded[key][t], abs=1e-6), (job.sample_id, t)
        worst[key] = max(abs(e) for e in errors.values())
        qc = json.loads((out / "blood" / job.sample_id / "scrna_qc.json").read_text())
        assert qc["annotation"] == f"celltypist:{module.MODEL_FILE}"
        assert qc["celltypist_model_sha256"] == _sha256(model) == facts["sha256"]
    print({k: round(v, 4) for k, v in worst.items()})
    assert worst["heldout"] <= module.TARGET  # the whole held-out half: every type in 5 points
    # pseudo-samples of 100-150 cells: sample A (half of it 'Dendritic') misses by ~1 point
    # on the Dendritic / CD14+ Monocyte label boundary (MODEL_CARD.md, Limits)
    assert max(worst[s] for s in module.PSEUDO_SAMPLES) <= 0.07
    dictionary = pd.read_csv(out / "blood_features_dictionary.csv").set_index("name")
    assert "CellTypist model pbmc68k_lineages.pkl" in dictionary.loc["scrna_dc_frac", "method"]
    assert "CellTypist label Dendritic" in dictionary.loc["scrna_dc_frac", "label"]


def test_celltypist_model_by_name_from_celltypist_folder_via_cli(celltypist_training,
                                                                  pbmc68k, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from integration.cli import app

    module, facts = celltypist_training
    folder = tmp_path / "celltypist_home"
    (folder / "data" / "models").mkdir(parents=True)
    shutil.copy(module.OUT / module.MODEL_FILE, folder / "data" / "models")
    path = tmp_path / "data" / "pbmc68k_heldout.h5ad"
    path.parent.mkdir()
    pbmc68k[facts["heldout_cells"]].copy().write_h5ad(path)
    (tmp_path / "samples.csv").write_text(
        "patient_id,timepoint,sample_id,modality,stain,path\n"
        f"P1,baseline,P1_PBMC,scrna,,{path}\n")
    mapping = "\n".join(f'    "{k}": {v}' for k, v in module.LABELS.items())
    (tmp_path / "blood.yaml").write_text(
        "scrna:\n  qc: {min_genes: 100}\n"
        f"  celltypist_model: {module.MODEL_FILE}\n  celltypist_labels:\n{mapping}\n")
    args = ["blood", "run", str(tmp_path / "samples.csv"), "--out", str(tmp_path / "out"),
            "--config", str(tmp_path / "blood.yaml")]
    result = CliRunner().invoke(app, args, env={"CELLTYPIST_FOLDER": str(folder)})
    assert result.exit_code == 0, result.output
    features = pd.read_csv(tmp_path / "out" / "blood_features.csv").set_index("sample_id")
    recorded = facts["heldout"]["celltypist"]["fraction_error"]["heldout"]
    labelled = facts["heldout"]["labelled_fraction"]["heldout"]
    for key in module.LABELS.values():
        assert features.loc["P1_PBMC", f"scrna_{key}_frac"] == pytest.approx(
            labelled.get(key, 0.0) + recorded[key], abs=1e-6)
    # without the folder the model name is not found, and the message says where to put it
    result = CliRunner().invoke(app, [*args[:4], str(tmp_path / "out2"), *args[5:]],
                                env={"CELLTYPIST_FOLDER": str(tmp_path / "empty")})
    assert result.exit_code == 1
    report = pd.read_csv(tmp_path / "out2" / "batch_report.csv")
    assert "CELLTYPIST_FOLDER" in report.loc[0, "reason"]
