"""Serial sections in ``hccbio slides run``: the manifest's block_id pairs each slide with its
block's H&E, the pair is registered, and the H&E's annotated tumour is carried onto the IHC."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from integration.cli import app
from integration.manifest import read_manifest
from pathology.registration import read_registration
from pathology.registration.serial import REGISTERED_ARRAY
from pathology.run.serial import BlockMember, SerialPair, plan_serial_pairs
from pathology.tissue.regions import CODES, load_region_map

HEADER = "patient_id,timepoint,sample_id,modality,stain,path,mpp,block_id\n"


def test_manifest_block_id_and_pairs(tmp_path):
    """block_id is optional; blocks are per patient and timepoint; the first H&E is the
    reference; a block without one is reported."""
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + "P1,baseline,p1-he,he,HE,a.svs,,A1\n"
                             "P1,baseline,p1-cd8,ihc,CD8,b.svs,,A1\n"
                             "P1,baseline,p1-mif,mif,panel,c.tif,,A1\n"
                             "P2,baseline,p2-cd8,ihc,CD8,d.svs,,A1\n"
                             "P2,baseline,p2-he,he,HE,e.svs,,\n")
    samples = read_manifest(path)
    assert [s.block_id for s in samples] == ["A1", "A1", "A1", "A1", ""]
    assert samples[0].block == "P1/baseline/A1" and samples[4].block == ""
    pairs, notes = plan_serial_pairs([BlockMember(s.sample_id, s.modality, s.block)
                                      for s in samples], reference_modality="he")
    assert pairs == [SerialPair("p1-cd8", "p1-he"), SerialPair("p1-mif", "p1-he")]
    assert len(notes) == 1 and "P2/baseline/A1" in notes[0] and "p2-cd8" in notes[0]
    legacy = tmp_path / "legacy.csv"
    legacy.write_text("patient_id,timepoint,sample_id,modality,stain,path\n"
                      "P1,baseline,s1,he,HE,a.svs\n")
    assert read_manifest(legacy)[0].block_id == ""


@pytest.fixture(scope="module")
def block(kidney_block: dict[str, Path], tmp_path_factory) -> dict:
    """The rat kidney block (H&E annotated, pan-cytokeratin as IHC) through the sync batch."""
    root = tmp_path_factory.mktemp("block")
    paths, annotations = kidney_block, kidney_block["annotations"]
    manifest = root / "samples.csv"
    manifest.write_text(HEADER + f"R1,baseline,kidney-ck,ihc,CD8,{paths['ck']},,B7\n"
                                 f"R1,baseline,kidney-he,he,HE,{paths['he']},,B7\n")
    config = root / "pathology.yaml"
    config.write_text(f"regions:\n  annotations_dir: {annotations}\n  margin_width_um: 40\n"
                      "registration:\n  max_size_px: 512\n  nonrigid: false\n")
    out = root / "out"
    result = CliRunner().invoke(app, ["slides", "run", str(manifest), "--out", str(out),
                                      "--config", str(config), "--scheduler", "sync",
                                      "--quiet"])
    return {"out": out, "result": result, "paths": paths}


def test_batch_registers_the_ihc_onto_its_he_and_carries_the_tumour(block):
    result, out = block["result"], block["out"]
    assert result.exit_code == 0, result.output
    with open(out / "batch_report.csv") as handle:
        rows = {r["sample_id"]: r for r in csv.DictReader(handle)}
    assert rows["kidney-he"]["status"] == "done" and rows["kidney-ck"]["status"] == "done"
    registration = json.loads((out / "slides" / "kidney-ck" / "registration.json").read_text())
    assert registration["status"] == "pass", registration["reasons"]
    assert registration["reference"] == "kidney-he" and registration["moving"]["unit"] == "um"
    assert not (out / "slides" / "kidney-he" / "registration.json").exists()
    he = json.loads((out / "slides" / "kidney-he" / "features.json").read_text())
    ck = json.loads((out / "slides" / "kidney-ck" / "features.json").read_text())
    assert he["regions"]["source"] == "annotation"
    assert ck["regions"]["source"] == "registered:kidney-he"
    assert ck["regions"]["areas_mm2"]["tumour"] > 0
    # The carried tumour lies where the H&E was annotated: its pixels, mapped back through the
    # registration, fall in the annotated box (give or take a grid pixel and the fit).
    carried = load_region_map(out / "slides" / "kidney-ck", name=REGISTERED_ARRAY)
    rows, cols = np.nonzero(carried.codes == CODES["tumour"])
    level0 = np.column_stack([cols + 0.5, rows + 0.5]) * carried.mpp / 2.0  # 2 um/px slides
    on_he = read_registration(out / "slides" / "kidney-ck" / "registration.json"
                              ).transform.map_level0(level0)
    inside = ((on_he[:, 0] > 160 - 8) & (on_he[:, 0] < 270 + 8) & (on_he[:, 1] > 40 - 8)
              & (on_he[:, 1] < 160 + 8))
    assert inside.mean() > 0.95, inside.mean()
    qc = json.loads((out / "slides" / "kidney-ck" / "qc" / "qc.json").read_text())
    check = next(c for c in qc["checks"] if c["name"] == "registration")
    assert not check["fired"] and "kidney-he" in check["reason"]
    assert qc["files"]["registration"] == "registration.png"
    assert (out / "slides" / "kidney-ck" / "qc" / "registration.png").is_file()


def test_second_run_reuses_the_registration(block, tmp_path):
    """A resumed batch does not register again when inputs and settings are unchanged."""
    out = block["out"]
    path = out / "slides" / "kidney-ck" / "registration.json"
    before = json.loads(path.read_text())["created"]
    manifest = out.parent / "samples.csv"
    config = out.parent / "pathology.yaml"
    result = CliRunner().invoke(app, ["slides", "run", str(manifest), "--out", str(out),
                                      "--config", str(config), "--scheduler", "sync",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(path.read_text())["created"] == before
    ck = json.loads((out / "slides" / "kidney-ck" / "features.json").read_text())
    assert ck["regions"]["source"] == "registered:kidney-he"


def test_dask_scheduler_registers_the_block_like_the_sync_path(block, tmp_path):
    """The same block through a local Dask cluster (one worker process): registration runs as
    a task after both slides are segmented and gives the sync run's transform exactly (ITK on
    one thread, docs/registration.md; it differed by up to 7.5 um before)."""
    manifest = block["out"].parent / "samples.csv"
    config = block["out"].parent / "pathology.yaml"
    out = tmp_path / "dask_out"
    result = CliRunner().invoke(app, ["slides", "run", str(manifest), "--out", str(out),
                                      "--config", str(config), "--scheduler", "local:1",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    with open(out / "batch_report.csv") as handle:
        rows = {r["sample_id"]: r for r in csv.DictReader(handle)}
    assert {r["status"] for r in rows.values()} == {"done"}, rows
    sync = read_registration(block["out"] / "slides" / "kidney-ck" / "registration.json")
    dask_record = json.loads((out / "slides" / "kidney-ck" / "registration.json").read_text())
    assert dask_record["status"] == "pass" and dask_record["reference"] == "kidney-he"
    dask = read_registration(out / "slides" / "kidney-ck" / "registration.json")
    np.testing.assert_allclose(dask_record["transform"]["level0_affine"],
                               json.loads((block["out"] / "slides" / "kidney-ck" /
                                           "registration.json").read_text())
                               ["transform"]["level0_affine"], rtol=0, atol=1e-9)
    # so every level-0 pixel of the moving slide (2 um/px) lands where the sync run maps it
    grid = np.stack(np.meshgrid(np.linspace(0, 300, 16), np.linspace(0, 300, 16)), -1)
    points = grid.reshape(-1, 2)
    gap_um = np.linalg.norm(dask.transform.map_level0(points)
                            - sync.transform.map_level0(points), axis=1).max() * 2.0
    assert gap_um < 1e-6, gap_um
    ck_sync = json.loads((block["out"] / "slides" / "kidney-ck" / "features.json").read_text())
    ck_dask = json.loads((out / "slides" / "kidney-ck" / "features.json").read_text())
    assert ck_dask["regions"]["source"] == "registered:kidney-he"
    assert ck_dask["regions"]["areas_mm2"] == pytest.approx(ck_sync["regions"]["areas_mm2"],
                                                            rel=0.05, abs=1e-3)
