"""Slide features from cells.parquet + the tissue mask: exact densities on a synthetic slide,
features.json / CSV / dictionary contracts, the ``slides features`` command, real MIBI cells."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import zarr
from typer.testing import CliRunner

from integration.cli import app
from pathology.config import PathologyConfig, PhenotypesSection, RegionsSection
from pathology.features import CLASSES_FILE, compute_slide_features
from pathology.run.tables import (
    DICTIONARY_COLUMNS,
    DICTIONARY_FILE,
    RUN_FEATURES_FILE,
    write_run_features,
)

MASK_MPP = 8.0
# 800 x 1200 um of tissue; the tumour annotation is x < 400 um; a 160 um margin band gives
# tumour centre x < 320 (0.256 mm^2), margin 320-480 (0.128 mm^2), stroma > 480 (0.576 mm^2)
AREAS = {"tissue": 0.96, "tumour": 0.256, "margin": 0.128, "stroma": 0.576}
PLAN = {  # region: (x range um, tumour cells, CD8+ cells, other small cells)
    "tumour": ((10, 310), 100, 30, 0), "margin": ((330, 470), 10, 20, 0),
    "stroma": ((490, 1190), 0, 60, 50)}


def write_slide(out, sample_id, cells: pd.DataFrame, mask: np.ndarray, *, modality, stain):
    folder = out / "slides" / sample_id
    folder.mkdir(parents=True)
    cells.to_parquet(folder / "cells.parquet")
    group = zarr.open_group(str(folder / "store.zarr"), mode="w")
    array = group.create_array("tissue_mask", shape=mask.shape, dtype="uint8")
    array[...] = mask.astype(np.uint8)
    array.attrs["mpp"] = MASK_MPP
    (folder / "features.json").write_text(json.dumps({
        "sample_id": sample_id, "modality": modality, "stain": stain, "n_nuclei": len(cells),
        "tissue_area_mm2": {"value": float(mask.sum()) * MASK_MPP**2 / 1e6, "unit": "mm^2"},
        "slide": {"mpp_x": 0.5, "mpp_y": 0.5}, "config_sha256": "lead"}))
    return folder


def synthetic_cd8_cells(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for (x0, x1), n_tumour, n_cd8, n_other in PLAN.values():
        for n, area, dab in ((n_tumour, 60.0, 0.02), (n_cd8, 20.0, 0.8), (n_other, 20.0, 0.02)):
            rows.append(pd.DataFrame({"x_um": rng.uniform(x0, x1, n),
                                      "y_um": rng.uniform(10, 790, n),
                                      "area_um2": area, "dab": dab}))
    frame = pd.concat(rows, ignore_index=True)
    cells = pd.DataFrame({"cell_id": np.arange(len(frame)), "x_um": frame["x_um"],
                          "y_um": frame["y_um"], "area_um2": frame["area_um2"]})
    for compartment in ("nucleus", "ring"):
        cells[f"{compartment}_hematoxylin_od"] = 0.3
        cells[f"{compartment}_eosin_od"] = -0.05
        cells[f"{compartment}_dab_od"] = frame["dab"].to_numpy()
    return cells


@pytest.fixture()
def cd8_run(tmp_path, project_root):
    rng = np.random.default_rng(0)
    mask = np.ones((100, 150), bool)
    mask[:, 150:] = False
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "cd8_slide.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "features": [{
            "type": "Feature", "properties": {"classification": {"name": "Tumor"}},
            "geometry": {"type": "Polygon",
                         "coordinates": [[[0, 0], [400, 0], [400, 800], [0, 800], [0, 0]]]}}]}))
    out = tmp_path / "run"
    write_slide(out, "cd8_slide", synthetic_cd8_cells(rng), mask, modality="ihc", stain="CD8")
    config = PathologyConfig(regions=RegionsSection(annotations_dir=str(annotations),
                                                    annotation_units="um",
                                                    margin_width_um=160.0),
                             phenotypes=PhenotypesSection(
                                 panels_dir=str(project_root / "configs" / "panels")))
    return out, config


def test_densities_on_a_synthetic_slide_are_exact(cd8_run):
    out, config = cd8_run
    row = compute_slide_features(out / "slides" / "cd8_slide", modality="ihc", stain="CD8",
                                 config=config)
    for region, area in AREAS.items():
        assert row[f"ihc_cd8_{region}_mm2"] == pytest.approx(area, rel=1e-12)
    for region, (_, n_tumour, n_cd8, _) in PLAN.items():
        assert row[f"ihc_cd8_{region}_n"] == n_cd8
        assert row[f"ihc_cd8_{region}_density"] == pytest.approx(n_cd8 / AREAS[region])
        # large nuclei (the proxy) are tumour cells only inside the annotated tumour centre
        assert row[f"ihc_cd8_tumour_{region}_n"] == (n_tumour if region == "tumour" else 0)
    assert row["ihc_cd8_tissue_density"] == pytest.approx(110 / 0.96)
    assert row["ihc_cd8_pct"] == pytest.approx(100 * 110 / 270)
    assert row["ihc_cd8_tumour_pct"] == pytest.approx(100 * 30 / 130)
    assert row["ihc_cd8_hscore"] == pytest.approx(2 * 100 * 110 / 270)  # all 2+ (OD 0.8)
    assert row["ihc_cd8_immune_class"] == "inflamed"  # 117 CD8/mm^2 in tumour >= 100
    assert row["ihc_cd8_pigment_n"] == 0
    assert 0 < row["ihc_cd8_tum50_pct"] <= 100
    assert all(len(k) <= 32 and k == k.lower() for k in row)


def test_features_json_keeps_the_lead_keys_and_cells_get_regions(cd8_run):
    out, config = cd8_run
    compute_slide_features(out / "slides" / "cd8_slide", modality="ihc", stain="CD8", config=config)
    folder = out / "slides" / "cd8_slide"
    record = json.loads((folder / "features.json").read_text())
    assert record["config_sha256"] == "lead" and record["n_nuclei"] == 270
    assert record["regions"]["source"] == "annotation"
    call = record["phenotyping"]["markers"]["CD8"]
    assert call["threshold"] == 0.2 and call["n_positive"] == 110
    assert record["features"]["ihc_cd8_margin_density"]["unit"] == "cells/mm^2"
    classes = pd.read_parquet(folder / CLASSES_FILE)
    assert len(classes) == 270
    counts = classes.groupby(["region", "phenotype"]).size()
    assert counts[("margin", "cd8_t")] == 20 and counts[("stroma", "other")] == 50


def test_immune_class_rules(cd8_run):
    out, config = cd8_run
    strict = config.model_copy(update={"spatial": config.spatial.model_copy(
        update={"inflamed_min_tumour_density": 200.0})})
    row = compute_slide_features(out / "slides" / "cd8_slide", modality="ihc", stain="CD8",
                                 config=strict)
    assert row["ihc_cd8_immune_class"] == "excluded"  # margin 156, stroma 104 per mm^2
    stricter = strict.model_copy(update={"spatial": strict.spatial.model_copy(
        update={"excluded_min_stroma_density": 500.0})})
    row = compute_slide_features(out / "slides" / "cd8_slide", modality="ihc", stain="CD8",
                                 config=stricter)
    assert row["ihc_cd8_immune_class"] == "desert"


def test_run_table_dictionary_and_cli(cd8_run, tmp_path):
    out, config = cd8_run
    config_file = tmp_path / "pathology.yaml"
    config_file.write_text(
        f"regions:\n  annotations_dir: {config.regions.annotations_dir}\n"
        "  annotation_units: um\n  margin_width_um: 160\n"
        f"phenotypes:\n  panels_dir: {config.phenotypes.panels_dir}\n")
    result = CliRunner().invoke(app, ["slides", "features", str(out), "--config",
                                      str(config_file)])
    assert result.exit_code == 0, result.output
    with open(out / RUN_FEATURES_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and list(rows[0])[0] == "sample_id"
    assert float(rows[0]["ihc_cd8_margin_density"]) == pytest.approx(20 / 0.128)
    with open(out / DICTIONARY_FILE, newline="") as handle:
        dictionary = {r["name"]: r for r in csv.DictReader(handle)}
    assert tuple(next(iter(dictionary.values()))) == DICTIONARY_COLUMNS
    assert set(rows[0]) == set(dictionary)  # every column documented
    assert dictionary["ihc_cd8_margin_density"]["unit"] == "cells/mm^2"
    assert all(r["unit"] or r["name"] in ("sample_id",) for r in dictionary.values())


def test_missing_cells_is_a_clear_error(tmp_path):
    from pathology.features import FeatureError

    with pytest.raises(FeatureError, match="cells.parquet"):
        compute_slide_features(tmp_path / "slides" / "nope", modality="ihc", stain="CD8",
                               config=PathologyConfig())


def test_automatic_regions_and_spatial_features_on_real_mibi_cells(shared_data, tmp_path,
                                                                   project_root):
    from test_phenotypes import mibi_cells

    cells = mibi_cells(shared_data)
    mask = np.ones((int(np.ceil(512 / MASK_MPP)),) * 2, bool)
    out = tmp_path / "run"
    write_slide(out, "mibi", cells, mask, modality="mif", stain="mibi_breast")
    config = PathologyConfig(phenotypes=PhenotypesSection(
        panels_dir=str(project_root / "configs" / "panels")),
        regions=RegionsSection(margin_width_um=100.0))  # a 512 um field: a narrow margin
    row = compute_slide_features(out / "slides" / "mibi", modality="mif", stain="mibi_breast",
                                 config=config)
    record = json.loads((out / "slides" / "mibi" / "features.json").read_text())
    assert record["regions"]["source"] == "marker:tumour"  # panCK+ CD45- cells
    areas = [row[f"mif_mibi_{r}_mm2"] for r in ("tumour", "margin", "stroma")]
    assert sum(areas) == pytest.approx(row["mif_mibi_tissue_mm2"])
    assert min(areas) > 0.01  # tumour, margin and stroma all present in this field
    assert row["mif_mibi_tumour_tissue_n"] > 100
    # epithelium is cohesive: tumour cells cluster at 20 um (L - r > 0)
    assert row["mif_mibi_tumour_l20"] > 0
    assert row["mif_mibi_pankrt_pct"] > 30
    write_run_features(out)
    assert (out / RUN_FEATURES_FILE).is_file()


def test_he_slide_features_use_the_logistic_lymphocyte_classifier(tmp_path, project_root):
    """Cells measured elsewhere (watershed nuclei, no patch probabilities): the logistic model
    on shape and stain columns, named in the config, still makes the H&E features (the patch
    network's path: tests/pathology/test_nucleus_classes.py)."""
    from stardist.data import test_image_he_2d

    from pathology.cells.measure import measure_labels
    from pathology.segmentation.watershed import segment_nuclei_watershed

    image = test_image_he_2d()[..., :3]
    cells = measure_labels(segment_nuclei_watershed(image, min_distance_px=4, min_area_px=15),
                           image, kind="brightfield", mpp=0.5).to_pandas()
    mask = np.ones((int(np.ceil(image.shape[0] * 0.5 / MASK_MPP)),
                    int(np.ceil(image.shape[1] * 0.5 / MASK_MPP))), bool)
    out = tmp_path / "run"
    write_slide(out, "he", cells, mask, modality="he", stain="")
    config = PathologyConfig(phenotypes=PhenotypesSection(
        panels_dir=str(project_root / "configs" / "panels"),
        lymphocyte_model="models/lymphocyte_classifier"))
    row = compute_slide_features(out / "slides" / "he", modality="he", stain="", config=config)
    n_lym = row["he_lym_tissue_n"]
    assert 0 < n_lym < len(cells)
    assert row["he_lym_pct"] == pytest.approx(100 * n_lym / row["he_n_cells"])
    classes = pd.read_parquet(out / "slides" / "he" / CLASSES_FILE)
    assert classes["lymphocyte_pos"].sum() == n_lym


def test_densities_are_per_clean_tissue_when_qc_found_artefacts(cd8_run):
    """A pen stroke over the right third of the stroma: its area leaves the stroma's and the
    tissue's areas, its cells leave the counts; raw and excluded areas are reported."""
    from pathology.qc.artefacts import save_artefact_mask

    out, config = cd8_run
    folder = out / "slides" / "cd8_slide"
    before = compute_slide_features(out / "slides" / "cd8_slide", modality="ihc", stain="CD8",
                                    config=config)
    codes = np.zeros((200, 300), np.uint8)  # QC overview grid, 4 um/px
    codes[:, 200:] = 2  # pen at x >= 800 um: 400 x 800 um of stroma
    save_artefact_mask(folder, codes, mpp=4.0, qc_config_sha256="test")
    row = compute_slide_features(out / "slides" / "cd8_slide", modality="ihc", stain="CD8",
                                 config=config)
    assert row["ihc_cd8_stroma_raw_mm2"] == pytest.approx(AREAS["stroma"])
    assert row["ihc_cd8_stroma_excl_mm2"] == pytest.approx(0.32)
    assert row["ihc_cd8_stroma_mm2"] == pytest.approx(AREAS["stroma"] - 0.32)
    assert row["ihc_cd8_tissue_mm2"] == pytest.approx(AREAS["tissue"] - 0.32)
    assert row["ihc_cd8_tumour_mm2"] == pytest.approx(AREAS["tumour"])  # untouched
    assert row["ihc_cd8_tumour_excl_mm2"] == 0
    cells = pd.read_parquet(folder / "cells.parquet")
    classes = pd.read_parquet(folder / CLASSES_FILE)
    on_pen = cells["x_um"].to_numpy() >= 800
    assert classes["artefact"].tolist() == on_pen.tolist()
    cd8 = (classes["phenotype"] == "cd8_t").to_numpy()
    stroma = (classes["region"] == "stroma").to_numpy()
    n_clean = int((cd8 & stroma & ~on_pen).sum())
    assert 0 < n_clean < before["ihc_cd8_stroma_n"]
    assert row["ihc_cd8_stroma_n"] == n_clean
    assert row["ihc_cd8_stroma_density"] == pytest.approx(n_clean / (AREAS["stroma"] - 0.32))
    assert row["ihc_cd8_n_cells_excl"] == int(on_pen.sum())
    assert row["ihc_cd8_tumour_density"] == before["ihc_cd8_tumour_density"]
    record = json.loads((folder / "features.json").read_text())
    assert record["artefacts"]["checked"] is True
    assert record["artefacts"]["excluded_area_mm2"]["stroma"] == pytest.approx(0.32)
    entry = record["feature_dictionary"]["ihc_cd8_stroma_density"]
    assert "clean tissue" in entry["method"]
    write_run_features(out)
    names = {r["name"] for r in csv.DictReader((out / DICTIONARY_FILE).open())}
    assert {"ihc_cd8_stroma_raw_mm2", "ihc_cd8_stroma_excl_mm2"} <= names
