"""``hccbio rnaseq run`` into one run folder twice: the tables keep every finished sample, and
the run lock keeps a second run out (issue 29, item 1)."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from hcccore.lock import LOCK_FILE, RunLock
from integration.cli import app


def _manifest(folder, name: str, samples, counts_file: str) -> str:
    rows = [f"P{s},baseline,{s},rnaseq,,{counts_file}" for s in samples]
    path = folder / name
    path.write_text("patient_id,timepoint,sample_id,modality,stain,path\n"
                    + "\n".join(rows) + "\n")
    return str(path)


def _rnaseq_run(manifest: str, out) -> object:
    return CliRunner().invoke(app, ["rnaseq", "run", manifest, "--out", str(out)])


def test_second_rnaseq_run_adds_its_samples(tmp_path, hcc_like_counts):
    counts = hcc_like_counts
    first, second = list(counts.columns[:6]), list(counts.columns[6:])
    counts[first].reset_index().to_csv(tmp_path / "a.csv", index=False)
    counts[second].reset_index().to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "out"
    run = _rnaseq_run(_manifest(tmp_path, "first.csv", first, "a.csv"), out)
    assert run.exit_code == 0, run.output
    alone = pd.read_csv(out / "transcriptome_features.csv")
    run = _rnaseq_run(_manifest(tmp_path, "second.csv", second, "b.csv"), out)
    assert run.exit_code == 0, run.output
    assert "scored in 2 separate runs" in " ".join(run.output.split())

    features = pd.read_csv(out / "transcriptome_features.csv")
    assert features["sample_id"].tolist() == first + second
    pd.testing.assert_frame_equal(features.iloc[:6], alone)  # the first run's numbers stay
    dictionary = pd.read_csv(out / "transcriptome_features_dictionary.csv")
    assert dictionary["name"].tolist() == list(features.columns[1:])
    report = pd.read_csv(out / "batch_report.csv", keep_default_na=False)
    assert report["sample_id"].tolist() == first + second
    assert set(report["status"]) == {"done"}
    qc = pd.read_csv(out / "transcriptome_qc.csv")
    assert qc["sample_id"].tolist() == first + second
    assert (qc["library_size"].to_numpy() == counts.sum().to_numpy()).all()
    expression = pd.read_parquet(out / "transcriptome_log2_expression.parquet")
    assert expression.columns.tolist() == first + second
    assert expression.shape[0] == counts.shape[0]

    # A rerun that fails replaces its row and leaves the tables; other samples stay.
    run = _rnaseq_run(_manifest(tmp_path, "again.csv", first[:1], "b.csv"), out)
    assert run.exit_code == 1
    report = pd.read_csv(out / "batch_report.csv", keep_default_na=False).set_index("sample_id")
    assert report.loc[first[0], "status"] == "failed"
    assert "not found" in report.loc[first[0], "reason"]
    assert (report.drop(index=first[0])["status"] == "done").all()
    features = pd.read_csv(out / "transcriptome_features.csv")
    assert features["sample_id"].tolist() == first[1:] + second


def test_rnaseq_run_into_a_locked_folder_is_refused(tmp_path, hcc_like_counts):
    hcc_like_counts.reset_index().to_csv(tmp_path / "counts.csv", index=False)
    manifest = _manifest(tmp_path, "samples.csv", hcc_like_counts.columns[:4], "counts.csv")
    out = tmp_path / "out"
    with RunLock(out):  # another run holds the folder
        run = _rnaseq_run(manifest, out)
    assert run.exit_code == 2
    message = " ".join(run.output.split())
    assert "another hccbio run is writing into this folder" in message
    assert str(out / LOCK_FILE) in message and '"pid":' in message
    assert not (out / "transcriptome_features.csv").exists()
    assert _rnaseq_run(manifest, out).exit_code == 0  # released: the next run goes ahead


def test_a_run_that_fails_as_a_whole_leaves_the_tables(tmp_path, hcc_like_counts):
    """``hccbio study run`` records a cohort-wide error for every sample of the run."""
    from transcriptome.pipeline import RnaseqRecord, record_failed_run

    hcc_like_counts.reset_index().to_csv(tmp_path / "counts.csv", index=False)
    samples = list(hcc_like_counts.columns[:4])
    out = tmp_path / "out"
    assert _rnaseq_run(_manifest(tmp_path, "s.csv", samples, "counts.csv"), out).exit_code == 0
    rows = record_failed_run([RnaseqRecord(samples[0], tmp_path / "counts.csv")], out,
                             reason="no gene is shared by all expression files")
    assert rows["status"].tolist() == ["failed"]
    report = pd.read_csv(out / "batch_report.csv", keep_default_na=False).set_index("sample_id")
    assert report.loc[samples[0], "reason"] == "no gene is shared by all expression files"
    for name in ("transcriptome_features.csv", "transcriptome_qc.csv"):
        assert pd.read_csv(out / name)["sample_id"].tolist() == samples[1:]
