"""The whole journey on real slides: the lab runs the study, the pathologist rejects a slide in
the review app, the lab runs the study again, and the statistician's table leaves the slide out
with the reason; a slide with a pen stroke drawn on real tissue gets densities without the
stroke's area."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk
from starlette.testclient import TestClient
from typer.testing import CliRunner

from integration.cli import app
from pathology.run.review_log import APPROVED, NOT_REVIEWED, REJECTED

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PEN_SAMPLE = "DEMO01_progression_he_pen"
REJECTED_SAMPLE = "DEMO02_baseline_he"
REASON = "fold across the tumour, rescan requested"
ANALYSIS = {"landmark_months": 0.5,
            "cox": {"covariates": ["age"], "min_patients": 4, "n_km_plots": 1},
            "elastic_net": {"enabled": False}, "subtypes": {"enabled": False},
            "response": {"min_per_group": 1}}


def _pen_slide(shared_data: Path, folder: Path) -> tuple[Path, float]:
    """A 512 x 512 um field of real H&E (small_HE.svs) with a green marker stroke, 60 um wide,
    drawn across the tissue (ink transmits per channel). Returns the file and the stroke's area
    on tissue (mm^2)."""
    from integration.demo import write_pyramidal_tiff
    from pathology.io.slide import Slide

    with Slide(shared_data / "slides" / "pathml-testdata" / "small_HE.svs") as slide:
        image = slide.read_region_at(600, 900, 1024, 1024, mpp=0.5).astype(np.float32)
    stroke = np.zeros(image.shape[:2], dtype=bool)
    for t in np.linspace(0, 1, 200):
        rr, cc = disk((150 + 700 * t, 200 + 600 * t + 80 * np.sin(5 * t)), 60,
                      shape=stroke.shape)
        stroke[rr, cc] = True
    image[stroke] *= np.array([0.35, 0.75, 0.45], dtype=np.float32)
    path = folder / "slides" / "pen_he.tiff"
    write_pyramidal_tiff(path, np.clip(np.rint(image), 0, 255).astype(np.uint8), mpp=0.5)
    tissue = image.mean(axis=2) < 215  # the field is nearly all tissue; glass is bright
    return path, float((stroke & tissue).sum()) * 0.25 / 1e6


def _study(cli_args: list[str]) -> None:
    result = CliRunner().invoke(app, cli_args)
    assert result.exit_code == 0, result.output


def test_lab_pathologist_statistician_journey(shared_data, tmp_path):
    pytest.importorskip("stardist")
    pytest.importorskip("sksurv")
    from integration.demo import build_demo_study
    from pathology.review.app import create_app

    if not (PROJECT_ROOT / "models" / "he_nuclei" / "config.json").is_file():
        pytest.skip("models/he_nuclei is not there")
    data, out = tmp_path / "data", tmp_path / "out"
    study = build_demo_study(data, out=out, n_patients=3, crop=128, modalities=("he",),
                             rnaseq=True, scrna=False, analysis=ANALYSIS)
    pen_path, stroke_mm2 = _pen_slide(shared_data, data)
    with (data / "samples.csv").open("a") as handle:
        handle.write(f"DEMO01,progression,{PEN_SAMPLE},he,HE,{pen_path},0.5\n")

    # 1. the lab runs the study
    _study(["study", "run", str(study), "--quiet"])
    features = pd.read_csv(out / "pathology_features.csv").set_index("sample_id")
    assert REJECTED_SAMPLE in features.index

    # the pen stroke's area is out of every density of its slide
    pen = features.loc[PEN_SAMPLE]
    qc = json.loads((out / "slides" / PEN_SAMPLE / "qc" / "qc.json").read_text())
    assert "pen" in qc["flags"]
    pen_mm2 = qc["metrics"]["artefacts"]["pen"]["area_mm2"]
    assert pen_mm2 == pytest.approx(stroke_mm2, rel=0.35)
    assert pen["he_tissue_excl_mm2"] >= 0.9 * pen_mm2
    assert pen["he_tissue_mm2"] == pytest.approx(pen["he_tissue_raw_mm2"]
                                                 - pen["he_tissue_excl_mm2"])
    assert pen["he_n_cells_excl"] > 0
    assert pen["he_lym_tissue_density"] == pytest.approx(
        pen["he_lym_tissue_n"] / pen["he_tissue_mm2"])
    record = json.loads((out / "slides" / PEN_SAMPLE / "features.json").read_text())
    assert record["artefacts"]["checked"] is True
    assert record["regions"]["source"] == "none"  # no annotation, no marker, proxy off
    assert "Tissue-level features only" in record["regions"]["reason"]
    classes = pd.read_parquet(out / "slides" / PEN_SAMPLE / "cell_classes.parquet")
    assert int(classes["artefact"].sum()) == pen["he_n_cells_excl"]

    # 2. the pathologist rejects one slide and approves another in the review app
    with TestClient(create_app(out), base_url="http://127.0.0.1") as client:
        reply = client.post(f"/api/review/{REJECTED_SAMPLE}", json={
            "decision": REJECTED, "reviewer": "Dr Path", "comment": REASON})
        assert reply.status_code == 200, reply.text
        reply = client.post("/api/review/DEMO01_baseline_he",
                            json={"decision": APPROVED, "reviewer": "Dr Path"})
        assert reply.status_code == 200, reply.text

    # 3. the lab runs the study again: slides are skipped, the decision reaches the tables
    _study(["study", "run", str(study), "--quiet"])
    batch = pd.read_csv(out / "batch_report.csv", keep_default_na=False).set_index("sample_id")
    assert batch.loc[REJECTED_SAMPLE, "status"] == "skipped"

    # 4. the statistician's table leaves the slide out, and says why
    wide = pd.read_csv(out / "features.csv").set_index(["patient_id", "timepoint"])
    he_columns = [c for c in wide.columns if c.startswith("he_")]
    assert wide.loc[("DEMO02", "baseline"), he_columns].isna().all()
    assert wide.loc[("DEMO02", "on_treatment"), he_columns].notna().any()
    assert wide.loc[("DEMO01", "baseline"), "qc_review"] == APPROVED
    assert wide.loc[("DEMO03", "baseline"), "qc_review"] == NOT_REVIEWED
    long = pd.read_csv(out / "features_long.csv")
    assert REJECTED_SAMPLE not in set(long["sample_id"])
    exclusions = pd.read_csv(out / "exclusions.csv").set_index("sample_id")
    assert REASON in exclusions.loc[REJECTED_SAMPLE, "reason"]
    assert "Dr Path" in exclusions.loc[REJECTED_SAMPLE, "reason"]
    report = (out / "report.html").read_text()
    assert REASON in report and REJECTED_SAMPLE in report
    assert (out / "analysis" / "univariate_cox.csv").is_file()  # the analysis ran
