"""``hccbio slides run``: a manifest in, a run folder and batch report out."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from integration.cli import app


def test_slides_run_reports_bad_slide_and_exits_nonzero(shared_data, he_tiff, tmp_path):
    corrupt = shared_data / "slides" / "openslide-fixtures" / "unopenable.tiff"
    manifest = tmp_path / "samples.csv"
    manifest.write_text(
        "patient_id,timepoint,sample_id,modality,stain,path,mpp\n"
        f"P1,baseline,good,he,HE,{he_tiff},0.5\n"
        f"P2,baseline,corrupt,he,HE,{corrupt},\n"
        "P2,baseline,blood1,flow,T,whatever.fcs,\n")
    config = tmp_path / "pathology.yaml"
    config.write_text("tiling:\n  tile_size: 256\n  halo: 48\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["slides", "run", str(manifest), "--out", str(out),
                                      "--config", str(config), "--quiet"])
    assert result.exit_code == 1, result.output
    with open(out / "batch_report.csv") as handle:
        rows = {r["sample_id"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"good", "corrupt"}  # blood rows are not slides
    assert rows["good"]["status"] == "done"
    assert rows["corrupt"]["status"] == "failed"
    assert "unopenable.tiff" in rows["corrupt"]["reason"]
    assert (out / "slides" / "good" / "cells.parquet").is_file()


def test_invalid_config_is_a_clear_error(tmp_path, he_tiff):
    manifest = tmp_path / "samples.csv"
    manifest.write_text("patient_id,timepoint,sample_id,modality,stain,path\n"
                        f"P1,baseline,good,he,HE,{he_tiff}\n")
    config = tmp_path / "bad.yaml"
    config.write_text("tiling:\n  tile_size: 100\n  tyle: 3\n")
    result = CliRunner().invoke(app, ["slides", "run", str(manifest), "--out",
                                      str(tmp_path / "o"), "--config", str(config)])
    assert result.exit_code == 2
    assert "tiling.tile_size" in result.output and "multiple of 16" in result.output
    assert "tiling.tyle" in result.output


def test_slides_models_names_what_each_modality_gets(project_root):
    """The shipped defaults: the IHC model for ihc rows (issue 12), its pixel size and tuned
    threshold from the folder, and the card beside it."""
    import json

    result = CliRunner().invoke(app, ["slides", "models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    ihc = next(i for i, line in enumerate(lines) if line.startswith("ihc "))
    assert lines[ihc].endswith("models/bf_nuclei")
    prob = json.loads((project_root / "models" / "bf_nuclei" / "thresholds.json").read_text())
    assert f"works at 0.5 um/px, prob {prob['prob']:.3f}" in lines[ihc + 2]
    assert "int8 network shipped" in lines[ihc + 2]
    assert lines[ihc + 3].strip().endswith("models/bf_nuclei/MODEL_CARD.md")


def test_slides_models_fails_on_a_missing_model_or_int8_network(tmp_path):
    """Checked before an overnight batch: a mistyped folder, and int8 asked of a model that
    has no int8 network, both exit 1 naming the problem."""
    config = tmp_path / "pathology.yaml"
    config.write_text("segmentation:\n  ihc_model: models/bf_nucleii\n")
    result = CliRunner().invoke(app, ["slides", "models", "--config", str(config)])
    assert result.exit_code == 1
    assert "models/bf_nucleii: neither a model folder" in result.output
    config.write_text("segmentation:\n  precision: int8\n")
    result = CliRunner().invoke(app, ["slides", "models", "--config", str(config)])
    assert result.exit_code == 1
    assert "precision int8 is set but no int8 network" in result.output  # fluo_nuclei
