"""Honest regions and standard PD-L1 scores: tumour sources, the proxy off by default, TPS and
CPS on synthetic cells of known class and on a real IHC image."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_features import MASK_MPP, synthetic_cd8_cells, write_slide
from test_phenotypes import DEEPLIIF_MPP, TILE, deepliif_tile

from pathology.cells.measure import measure_labels
from pathology.config import PathologyConfig, PhenotypesSection, RegionsSection
from pathology.features import compute_slide_features

PDL1_PANEL = """name: pdl1_test
modality: mif
prefix: mif_t
markers:
  - {name: PDL1, channel: PDL1, compartment: ring, threshold: {method: fixed, value: 0.5}}
  - {name: HepPar1, channel: HEP, compartment: ring, threshold: {method: fixed, value: 0.5}}
  - {name: CD3, channel: CD3, compartment: ring, threshold: {method: fixed, value: 0.5}}
  - {name: CD68, channel: CD68, compartment: ring, threshold: {method: fixed, value: 0.5}}
phenotypes:
  - {name: lym, markers: {CD3: true}, immune: true}
  - {name: macro, markers: {CD68: true, CD3: false}, immune: true}
  - {name: tumour, markers: {HepPar1: true, CD3: false, CD68: false}}
"""


def _geojson(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": name}},
         "geometry": {"type": "Polygon", "coordinates": [box]}} for name, box in features]}))


def _box(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.fixture()
def panels(project_root):
    return PhenotypesSection(panels_dir=str(project_root / "configs" / "panels"))


def test_tps_and_cps_on_cells_of_known_class(tmp_path):
    """20 tumour cells (8 PD-L1+), 10 lymphocytes (4+), 5 macrophages (2+) and 10 fibroblasts
    (all PD-L1+, which CPS must not count): TPS 40 %, CPS (8 + 4 + 2) / 20 x 100 = 70."""
    rng = np.random.default_rng(3)
    groups = {"tumour": (20, 8, "HEP"), "lym": (10, 4, "CD3"), "macro": (5, 2, "CD68"),
              "fibro": (10, 10, None)}
    frames = []
    for name, (n, n_pos, channel) in groups.items():
        frame = pd.DataFrame({"x_um": rng.uniform(50, 750, n), "y_um": rng.uniform(50, 750, n),
                              "area_um2": 30.0})
        for column in ("pdl1", "hep", "cd3", "cd68"):
            for compartment in ("nucleus", "ring"):
                frame[f"{compartment}_{column}_mean"] = 0.0
        frame["ring_pdl1_mean"] = np.r_[np.ones(n_pos), np.zeros(n - n_pos)]
        if channel:
            frame[f"ring_{channel.lower()}_mean"] = 1.0
        frames.append(frame.assign(truth=name))
    cells = pd.concat(frames, ignore_index=True)
    cells.insert(0, "cell_id", np.arange(len(cells)))
    panels = tmp_path / "panels"
    panels.mkdir()
    (panels / "pdl1_test.yaml").write_text(PDL1_PANEL)
    out = tmp_path / "run"
    write_slide(out, "s", cells.drop(columns="truth"), np.ones((100, 100), bool),
                modality="mif", stain="pdl1_test")
    config = PathologyConfig(phenotypes=PhenotypesSection(panels_dir=str(panels)))
    row = compute_slide_features(out / "slides" / "s", modality="mif", stain="pdl1_test",
                                 config=config)
    assert row["mif_t_tps"] == pytest.approx(40.0)
    assert row["mif_t_cps"] == pytest.approx(70.0)
    classes = pd.read_parquet(out / "slides" / "s" / "cell_classes.parquet")
    expected = cells["truth"].replace({"fibro": "other"})
    assert classes["phenotype"].tolist() == expected.tolist()
    record = json.loads((out / "slides" / "s" / "features.json").read_text())
    assert record["regions"]["tumour_cells"].startswith("marker")
    assert "lym, macro" in record["feature_dictionary"]["mif_t_cps"]["method"]


def test_without_a_tumour_source_only_tissue_features_and_the_reason(tmp_path, panels):
    out = tmp_path / "run"
    write_slide(out, "cd8", synthetic_cd8_cells(np.random.default_rng(0)),
                np.ones((100, 150), bool), modality="ihc", stain="CD8")
    row = compute_slide_features(out / "slides" / "cd8", modality="ihc", stain="CD8",
                                 config=PathologyConfig(phenotypes=panels))
    record = json.loads((out / "slides" / "cd8" / "features.json").read_text())
    assert record["regions"]["source"] == "none" and row["ihc_cd8_regions_src"] == "none"
    assert "regions.tumour_proxy" in record["regions"]["reason"]
    assert "Tissue-level features only" in record["regions"]["reason"]
    assert row["ihc_cd8_tissue_density"] == pytest.approx(110 / 0.96)
    assert row["ihc_cd8_tumour_density"] is None and row["ihc_cd8_immune_class"] is None
    assert not any(k.startswith("ihc_cd8_tumour_") and k.endswith("_n") and row[k]
                   for k in row)  # no tumour-cell counts from the proxy
    classes = pd.read_parquet(out / "slides" / "cd8" / "cell_classes.parquet")
    assert "tumour" not in set(classes["phenotype"])

    # switched on, the proxy finds a region and says what it is wherever it is used
    proxy = PathologyConfig(phenotypes=panels, regions=RegionsSection(tumour_proxy=True,
                                                                      margin_width_um=160))
    row = compute_slide_features(out / "slides" / "cd8", modality="ihc", stain="CD8", config=proxy)
    record = json.loads((out / "slides" / "cd8" / "features.json").read_text())
    assert record["regions"]["source"] == "proxy:nuclear_size" and record["regions"]["proxy"]
    assert row["ihc_cd8_regions_src"] == "proxy" and row["ihc_cd8_tumour_mm2"] > 0
    labels = record["feature_dictionary"]
    assert "PROXY" in labels["ihc_cd8_tumour_density"]["label"]
    assert "PROXY" in labels["ihc_cd8_immune_class"]["label"]
    assert "PROXY" not in labels["ihc_cd8_tissue_density"]["label"]


def test_annotated_stroma_and_excluded_classes_are_honoured(tmp_path, panels):
    """Tumor x < 400 um, Stroma 600-1000 um, Necrosis 1000-1200 um: tissue between 480 and
    600 um is neither (other), necrosis leaves the tissue."""
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    _geojson(annotations / "cd8.geojson", [("Tumor", _box(0, 0, 400, 800)),
                                           ("Stroma", _box(600, 0, 1000, 800)),
                                           ("Necrosis", _box(1000, 0, 1200, 800))])
    out = tmp_path / "run"
    write_slide(out, "cd8", synthetic_cd8_cells(np.random.default_rng(0)),
                np.ones((100, 150), bool), modality="ihc", stain="CD8")
    config = PathologyConfig(phenotypes=panels, regions=RegionsSection(
        annotations_dir=str(annotations), annotation_units="um", margin_width_um=160))
    row = compute_slide_features(out / "slides" / "cd8", modality="ihc", stain="CD8", config=config)
    assert row["ihc_cd8_regions_src"] == "annotation"
    assert row["ihc_cd8_tumour_mm2"] == pytest.approx(0.256)
    assert row["ihc_cd8_stroma_mm2"] == pytest.approx(0.4 * 0.8)
    assert row["ihc_cd8_tissue_mm2"] == pytest.approx(1.0 * 0.8)  # necrosis removed
    classes = pd.read_parquet(out / "slides" / "cd8" / "cell_classes.parquet")
    cells = pd.read_parquet(out / "slides" / "cd8" / "cells.parquet")
    x = cells["x_um"].to_numpy()
    assert set(classes.loc[(x > 490) & (x < 590), "region"]) == {"other"}
    assert set(classes.loc[x > 1010, "region"]) == {"outside"}
    record = json.loads((out / "slides" / "cd8" / "features.json").read_text())
    assert "necrosis" in record["regions"]["reason"]
    assert MASK_MPP == 8.0


def test_tps_on_a_real_ihc_image_matches_its_ground_truth(shared_data, tmp_path):
    """Real DAB IHC with annotated nuclei (DeepLIIF Lung1; Ki67 stands in for PD-L1, as no PD-L1
    IHC with ground truth is available): the whole field is annotated as tumour, tumour cells
    are the large nuclei; TPS from the pipeline is within 5 points of the truth's proportion of
    positive large nuclei."""
    ihc, labels, truth_positive = deepliif_tile(shared_data, "Lung1")
    cells = measure_labels(labels, ihc, kind="brightfield", mpp=DEEPLIIF_MPP).to_pandas()
    cells = cells[cells["area_um2"] >= 5].reset_index(drop=True)
    cells["cell_id"] = np.arange(len(cells))
    truth = truth_positive[cells["label"].to_numpy()]
    panels = tmp_path / "panels"
    panels.mkdir()
    (panels / "ihc.yaml").write_text(
        "name: ihc\nmodality: ihc\nprefix: ihc\nmarkers:\n"
        "  - {name: PD-L1, short: pdl1, compartment: nucleus, threshold: {method: fixed, "
        "value: 0.2}, bins: [0.5, 1.0]}\nphenotypes:\n"
        "  - {name: tumour, label: large nucleus, min: {area_um2: 20}, proxy: true}\n")
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    side = TILE * DEEPLIIF_MPP
    _geojson(annotations / "lung.geojson", [("Tumor", _box(-50, -50, side + 50, side + 50))])
    out = tmp_path / "run"
    mask = np.ones((int(np.ceil(side / MASK_MPP)),) * 2, bool)
    columns = ["cell_id", "x_um", "y_um", "area_um2"] + [
        c for c in cells.columns if c.endswith("_od")]
    write_slide(out, "lung", cells[columns], mask, modality="ihc", stain="PD-L1")
    config = PathologyConfig(phenotypes=PhenotypesSection(panels_dir=str(panels)),
                             regions=RegionsSection(annotations_dir=str(annotations),
                                                    annotation_units="um",
                                                    margin_width_um=2 * MASK_MPP))
    row = compute_slide_features(out / "slides" / "lung", modality="ihc", stain="PD-L1",
                                 config=config)
    classes = pd.read_parquet(out / "slides" / "lung" / "cell_classes.parquet")
    tumour = (classes["phenotype"] == "tumour").to_numpy()
    assert tumour.sum() > 50
    expected = 100.0 * truth[tumour].mean()
    assert 5 < expected < 95  # a real mix of positive and negative tumour cells
    assert abs(row["ihc_pdl1_tps"] - expected) <= 5, (row["ihc_pdl1_tps"], expected)
    assert row["ihc_pdl1_cps"] >= row["ihc_pdl1_tps"]
