"""End to end: files -> run_transcriptome -> feature table, dictionary, batch report; and the
manifest-driven CLI ``hccbio rnaseq run``."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from transcriptome.config import TranscriptomeConfig
from transcriptome.pipeline import RnaseqRecord, run_transcriptome


def _config(**qc) -> TranscriptomeConfig:
    return TranscriptomeConfig.model_validate({"qc": qc})


def test_run_writes_features_dictionary_and_batch(tmp_path, hcc_like_counts):
    counts = hcc_like_counts
    ens = counts.rename(index={"CD274": "ENSG00000120217.14", "GPC3": "ENSG00000147257.16"})
    first, second = ens.iloc[:, :7], ens.iloc[:, 7:]
    first.reset_index().to_csv(tmp_path / "batch1.csv", index=False)
    second.reset_index().to_csv(tmp_path / "batch2.tsv", sep="\t", index=False)
    out = tmp_path / "out"
    out.mkdir()
    pd.DataFrame({"sample_id": ["HE1", "bc001"], "status": ["done", "done"],
                  "reason": ["", "old"], "seconds": [5.0, 1.0]}).to_csv(
        out / "batch_report.csv", index=False)
    records = [RnaseqRecord(s, tmp_path / "batch1.csv") for s in first.columns]
    records += [RnaseqRecord(s, tmp_path / "batch2.tsv") for s in second.columns]
    records.append(RnaseqRecord("ghost", tmp_path / "batch1.csv"))
    result = run_transcriptome(records, out, config=_config(min_library_size=0))

    features = pd.read_csv(out / "transcriptome_features.csv")
    assert features.columns[0] == "sample_id"
    assert list(features["sample_id"]) == list(counts.columns)
    assert all(re.fullmatch(r"[a-z0-9_]{1,32}", c) for c in features.columns)
    for name in ("rna_abrs_score", "rna_abrs_ssgsea", "rna_teff_score", "rna_cd274_log2cpm",
                 "rna_gpc3_log2cpm", "rna_kdr_log2cpm", "rna_myeloid_inflam_score"):
        assert name in features.columns
    assert features["rna_abrs_score"].notna().all()
    assert features["rna_myeloid_inflam_score"].isna().all()
    assert features["rna_kdr_log2cpm"].isna().all()
    assert (features["rna_abrs_n_genes"] == 10).all()
    np.testing.assert_allclose(features["rna_library_size"], counts.sum().to_numpy())

    dictionary = pd.read_csv(out / "transcriptome_features_dictionary.csv")
    assert list(dictionary.columns) == ["name", "label", "unit", "modality", "method",
                                        "config_keys", "source"]
    assert list(dictionary["name"]) == list(features.columns[1:])
    sets = pd.read_csv(out / "transcriptome_gene_sets.csv", keep_default_na=False).set_index("key")
    assert sets.loc["myeloid_inflam", "status"].startswith("too few genes: 0 of 6")
    assert sets.loc["KDR", "status"] == "gene not found"

    batch = pd.read_csv(out / "batch_report.csv", keep_default_na=False)
    assert list(batch["sample_id"]) == ["HE1"] + list(counts.columns) + ["ghost"]
    ghost = batch.set_index("sample_id").loc["ghost"]
    assert ghost["status"] == "failed" and "batch1.csv: sample column 'ghost' not found" in \
        ghost["reason"]
    assert result.failed == ["ghost"]
    assert not list(out.glob(".*.tmp"))


def test_run_matches_in_memory_cohort(tmp_path, hcc_like_counts):
    """Splitting a cohort over two files gives the numbers of one file."""
    counts = hcc_like_counts
    counts.reset_index().to_csv(tmp_path / "all.csv", index=False)
    counts.iloc[:, :5].reset_index().to_csv(tmp_path / "a.csv", index=False)
    counts.iloc[:, 5:].reset_index().to_csv(tmp_path / "b.csv", index=False)
    one = run_transcriptome([RnaseqRecord(s, tmp_path / "all.csv") for s in counts.columns],
                            tmp_path / "one")
    two = run_transcriptome([RnaseqRecord(s, tmp_path / ("a.csv" if i < 5 else "b.csv"))
                             for i, s in enumerate(counts.columns)], tmp_path / "two")
    pd.testing.assert_frame_equal(one.features, two.features)


def test_bad_file_fails_only_its_samples(tmp_path, hcc_like_counts):
    counts = hcc_like_counts
    counts.reset_index().to_csv(tmp_path / "good.csv", index=False)
    bad = counts.iloc[:, :2].copy()
    bad.iloc[3, 1] = -5
    bad.columns = ["n1", "n2"]
    bad.reset_index().to_csv(tmp_path / "neg.csv", index=False)
    records = [RnaseqRecord(s, tmp_path / "good.csv") for s in counts.columns]
    records += [RnaseqRecord(s, tmp_path / "neg.csv") for s in ("n1", "n2")]
    result = run_transcriptome(records, tmp_path / "out")
    assert result.failed == ["n1", "n2"]
    reason = result.batch.set_index("sample_id").loc["n1", "reason"]
    assert "neg.csv: negative count -5.0" in reason
    assert len(result.features) == counts.shape[1]


def test_cli_run_from_manifest(tmp_path, hcc_like_counts):
    testing = pytest.importorskip("typer.testing")
    from integration.cli import app

    counts = hcc_like_counts.iloc[:, :6]
    counts.reset_index().to_csv(tmp_path / "counts.csv", index=False)
    rows = [f"P{i},baseline,{s},rnaseq,,counts.csv" for i, s in enumerate(counts.columns)]
    (tmp_path / "samples.csv").write_text(
        "patient_id,timepoint,sample_id,modality,stain,path\n" + "\n".join(rows) + "\n")
    runner = testing.CliRunner()
    result = runner.invoke(app, ["rnaseq", "run", str(tmp_path / "samples.csv"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    features = pd.read_csv(tmp_path / "out" / "transcriptome_features.csv")
    assert list(features["sample_id"]) == list(counts.columns)
