"""The study YAML (``study`` section) and ``run_study`` end to end on a small real-image study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from integration.study import StudyError, StudySection, load_study, run_study

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _write_study(folder: Path, section: dict, *, analysis: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"study": section}
    if analysis is not None:
        data["analysis"] = analysis
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture()
def inputs(tmp_path: Path) -> dict:
    """A minimal valid study section with its manifest and clinical files present."""
    (tmp_path / "samples.csv").write_text(
        "patient_id,timepoint,sample_id,modality,stain,path,mpp\n"
        "P1,baseline,P1_he,he,HE,missing.tiff,0.5\n")
    (tmp_path / "clinical.csv").write_text(
        "patient_id,os_time,os_event,pfs_time,pfs_event,best_response\nP1,10,1,5,1,PD\n")
    return {"name": "t", "manifest": "samples.csv", "clinical": "clinical.csv", "out": "out"}


def test_paths_resolve_against_the_yaml_folder(tmp_path: Path, inputs: dict) -> None:
    study = load_study(_write_study(tmp_path, inputs))
    assert study.manifest == (tmp_path / "samples.csv").resolve()
    assert study.out == (tmp_path / "out").resolve()
    assert study.scheduler == "sync"
    assert study.pathology_config is None


def test_unknown_key_is_named(tmp_path: Path, inputs: dict) -> None:
    path = _write_study(tmp_path, {**inputs, "schedular": "local"})
    with pytest.raises(StudyError, match=r"study\.yaml: study\.schedular: Extra inputs"):
        load_study(path)


def test_missing_required_key_is_named(tmp_path: Path, inputs: dict) -> None:
    section = {k: v for k, v in inputs.items() if k != "clinical"}
    with pytest.raises(StudyError, match=r"study\.clinical: Field required"):
        load_study(_write_study(tmp_path, section))


def test_missing_file_is_named(tmp_path: Path, inputs: dict) -> None:
    path = _write_study(tmp_path, {**inputs, "clinical": "nowhere/clinical.csv"})
    with pytest.raises(StudyError, match=r"study\.clinical: file .*nowhere/clinical\.csv "
                                         r"not found"):
        load_study(path)
    path = _write_study(tmp_path, {**inputs, "pathology_config": "pathology.yaml"})
    with pytest.raises(StudyError, match=r"study\.pathology_config: file .*pathology\.yaml"):
        load_study(path)


def test_bad_yaml_and_missing_section(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("study: [unclosed\n")
    with pytest.raises(StudyError, match=r"study\.yaml: not valid YAML"):
        load_study(path)
    path.write_text("analysis: {}\n")
    with pytest.raises(StudyError, match=r"no 'study' section"):
        load_study(path)
    with pytest.raises(StudyError, match=r"study config not found"):
        load_study(tmp_path / "absent.yaml")


def test_invalid_clinical_stops_before_any_arm(tmp_path: Path, inputs: dict) -> None:
    (tmp_path / "clinical.csv").write_text("patient_id,os_time\nP1,10\n")
    with pytest.raises(StudyError, match=r"clinical\.csv"):
        run_study(_write_study(tmp_path, inputs))
    assert not (tmp_path / "out").exists()


def test_invalid_analysis_section_is_named(tmp_path: Path, inputs: dict) -> None:
    path = _write_study(tmp_path, inputs, analysis={"fdr": 2})
    with pytest.raises(StudyError, match=r"analysis\.fdr"):
        run_study(path)


def test_bad_scheduler_and_arm_config_are_named(tmp_path: Path, inputs: dict) -> None:
    path = _write_study(tmp_path, {**inputs, "scheduler": "cluster"})
    with pytest.raises(StudyError, match=r"study\.scheduler: .*'cluster'"):
        run_study(path)
    (tmp_path / "pathology.yaml").write_text("tiling: {tile_size: 100}\n")
    path = _write_study(tmp_path, {**inputs, "pathology_config": "pathology.yaml"})
    with pytest.raises(StudyError, match=r"pathology\.yaml: tiling\.tile_size: .*"
                                         r"study\.pathology_config"):
        run_study(path)
    assert not (tmp_path / "out").exists()


def test_shipped_study_yaml_validates() -> None:
    study = load_study(PROJECT_ROOT / "configs" / "study.yaml", check_files=False)
    assert isinstance(study, StudySection)
    assert study.pathology_config == PROJECT_ROOT / "configs" / "pathology.yaml"


def test_cli_reports_input_errors(tmp_path: Path, inputs: dict) -> None:
    from typer.testing import CliRunner

    from integration.cli import app

    path = _write_study(tmp_path, {**inputs, "manifest": "absent.csv"})
    result = CliRunner().invoke(app, ["study", "run", str(path)])
    assert result.exit_code == 2
    assert "study.manifest" in result.output


def test_run_study_end_to_end(tmp_path: Path) -> None:
    """Three patients, H&E crops at two time points, RNA-seq and one missing slide (real data)."""
    pytest.importorskip("stardist")
    pytest.importorskip("sksurv")
    from integration.demo import build_demo_study

    if not (PROJECT_ROOT / "models" / "he_nuclei" / "config.json").is_file():
        pytest.skip("models/he_nuclei is not there")
    # Three patients are too few for Cox models (and 3-patient fits can separate, giving
    # infinite hazard ratios): min_patients 4 leaves them out; the report is still written.
    analysis = {"landmark_months": 0.5,
                "cox": {"covariates": ["age"], "min_patients": 4, "n_km_plots": 1},
                "elastic_net": {"enabled": False}, "subtypes": {"enabled": False},
                "response": {"min_per_group": 1}}
    path = build_demo_study(tmp_path / "data", out=tmp_path / "out", n_patients=3, crop=128,
                            modalities=("he",), rnaseq=True, scrna=False, analysis=analysis)
    manifest = tmp_path / "data" / "samples.csv"
    with manifest.open("a") as handle:  # one broken sample: it fails, the study goes on
        handle.write("DEMO01,baseline,DEMO01_baseline_ihc,ihc,CD8,slides/absent.tiff,0.5\n")

    summary = run_study(path)
    out = tmp_path / "out"
    assert summary["out"] == out.resolve()
    for name in ("features.csv", "data_dictionary.csv", "report.html"):
        assert (out / name).is_file(), name
    assert summary["report"] == (out / "report.html").resolve()
    assert "SYNTHETIC" in (out / "report.html").read_text()
    assert summary["arms"]["pathology"] == {"samples": 7, "done": 6, "skipped": 0, "failed": 1}
    assert summary["arms"]["transcriptome"]["done"] == 3
    assert summary["arms"]["blood"] == {"skipped": "no rows in the manifest"}
    assert summary["failed"] == ["DEMO01_baseline_ihc"]
    batch = pd.read_csv(out / "batch_report.csv", keep_default_na=False).set_index("sample_id")
    assert batch.loc["DEMO01_baseline_ihc", "status"] == "failed"
    assert "absent.tiff" in batch.loc["DEMO01_baseline_ihc", "reason"]
    assert set(batch.index) >= {"DEMO03_on_treatment_he", "DEMO02_baseline_rnaseq"}
    features = pd.read_csv(out / "features.csv")
    assert len(features) == 6  # 3 patients x 2 time points
    assert any(c.startswith("he_") for c in features.columns)
    assert any(c.startswith("rna_") for c in features.columns)

    # Again: the demo builder leaves identical files alone, so every slide is skipped.
    build_demo_study(tmp_path / "data", out=tmp_path / "out", n_patients=3, crop=128,
                     modalities=("he",), rnaseq=True, scrna=False, analysis=analysis)
    with manifest.open("a") as handle:
        handle.write("DEMO01,baseline,DEMO01_baseline_ihc,ihc,CD8,slides/absent.tiff,0.5\n")
    again = run_study(path)
    assert again["arms"]["pathology"]["skipped"] == 6
    assert (out / "report.html").is_file()
