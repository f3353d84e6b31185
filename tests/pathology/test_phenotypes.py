"""Marker positivity and phenotypes on real IHC (DeepLIIF Ki67), MIBI-TOF and IMC images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage.io import imread

from pathology.cells.measure import intensity_image, measure_labels
from pathology.cells.panels import PanelError, load_panel, resolve_panel
from pathology.cells.phenotypes import auto_threshold, call_marker, classify_cells
from pathology.config import PhenotypesSection
from pathology.segmentation.watershed import segment_nuclei_watershed

DEEPLIIF_MPP = 0.25  # 40x (SOURCE.txt: nuclei about 25 px across)
TILE = 512
# (IHC image, truth mask): test tiles have a separate manual mask; train tiles carry the
# co-registered mask as their sixth panel
DEEPLIIF = {"22_2": ("test/22_2.png", "test_groundtruth/22_2.png"),
            "34_3": ("test/34_3.png", "test_groundtruth/34_3.png"),
            "Bladder1": ("train/Bladder1.png", None), "Lung1": ("train/Lung1.png", None)}
PIGMENTS_RGB = {  # typical colours of liver pigments in brightfield (golden, olive, yellow)
    "hemosiderin": (170, 120, 40), "hemosiderin_dark": (120, 80, 20),
    "lipofuscin": (200, 170, 90), "bile": (120, 130, 50)}


@pytest.fixture(scope="module")
def panels_dir(project_root):
    return project_root / "configs" / "panels"


def deepliif_tile(root, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IHC RGB, truth instance labels, and truth Ki67+ per label (index = label)."""
    image_file, mask_file = DEEPLIIF[name]
    image = imread(root / "ihc" / "deepliif" / image_file)[..., :3]
    ihc = image[:, :TILE]
    mask = (imread(root / "ihc" / "deepliif" / mask_file)[..., :3] if mask_file
            else image[:, 5 * TILE:6 * TILE])
    red = (mask[..., 0] > 200) & (mask[..., 1] < 50) & (mask[..., 2] < 50)
    blue = (mask[..., 2] > 200) & (mask[..., 0] < 50) & (mask[..., 1] < 50)
    labels, n = ndi.label(red | blue)
    positive = np.r_[False, np.asarray(ndi.mean(red, labels, np.arange(1, n + 1))) > 0.5]
    return ihc, labels, positive


def ki67_fraction(cells: pd.DataFrame, panels_dir) -> float:
    panel = resolve_panel("ihc", "Ki67", directory=panels_dir)
    result = classify_cells(cells, panel, kind="brightfield", config=PhenotypesSection())
    return 100.0 * result.positive["Ki67"].mean()


@pytest.mark.parametrize("name", ["22_2", "34_3"])
def test_ki67_fraction_within_5_points_on_pipeline_nuclei_that_hit_truth(
        deepliif_pipeline, name):
    """The Ki67 call on the nuclei `hccbio slides run` finds (the shipped IHC model), scored
    on those that match an annotated nucleus, so that 34_3's incomplete mask does not count."""
    item, result = deepliif_pipeline[name]
    from pathology.evaluation.harness import score_instances

    pairs = score_instances(result, item.labels)["matched_truth"]
    truth = np.array([item.classes[t] for t in pairs], dtype=bool)
    ours = result.cells["ki67_pos"].to_numpy()[list(pairs.values())].astype(bool)
    assert len(pairs) >= 0.6 * item.labels.max()  # IoU-0.5 matches; see test_evaluation
    assert abs(100 * ours.mean() - 100 * truth.mean()) <= 5
    assert (ours == truth).mean() >= 0.9  # cell by cell, not only on average


def test_ki67_34_3_truth_mask_leaves_positive_nuclei_unannotated(deepliif_pipeline):
    """Why 34_3 is scored on matched nuclei only: many of the brown nuclei that the pipeline
    finds lie on unannotated background of its manual mask (checked, not assumed)."""
    item, result = deepliif_pipeline["34_3"]
    cells = result.cells
    positive = cells["ki67_pos"].to_numpy().astype(bool)
    annotated = ndi.binary_dilation(item.labels > 0, iterations=4)
    rows = np.clip((cells["y_um"] / DEEPLIIF_MPP).astype(int).to_numpy(), 0, TILE - 1)
    cols = np.clip((cells["x_um"] / DEEPLIIF_MPP).astype(int).to_numpy(), 0, TILE - 1)
    on_truth = annotated[rows, cols]
    off_positive = (positive & ~on_truth).sum() / positive.sum()
    off_negative = (~positive & ~on_truth).sum() / (~positive).sum()
    assert off_positive > 0.3
    # far more often than negative ones (0.13 with the 2026-12-07 bf_nuclei, which finds
    # paler negative nuclei than before, some of them unannotated too)
    assert off_positive > 2.5 * off_negative, (off_positive, off_negative)


def test_pigment_is_not_counted_positive(shared_data, panels_dir):
    real = []
    for name in DEEPLIIF:  # real Ki67 DAB on truth nuclei of every tile
        ihc, labels, truth_positive = deepliif_tile(shared_data, name)
        cells = measure_labels(labels, ihc, kind="brightfield", mpp=DEEPLIIF_MPP).to_pandas()
        real.append(cells.assign(truth=truth_positive[cells["label"].to_numpy()]))
    real = pd.concat(real, ignore_index=True)
    # synthetic pigment cells: a pale nucleus with pigment in its cytoplasm ring, or pigment
    # granules over the nucleus, in each pigment colour
    image = np.full((64, 64 * len(PIGMENTS_RGB) * 2, 3), 235, np.uint8)
    pigment_labels = np.zeros(image.shape[:2], np.int32)
    yy, xx = np.mgrid[:64, :64]
    kinds = []
    for i, (pigment_name, rgb) in enumerate(PIGMENTS_RGB.items()):
        for j, over_nucleus in enumerate((False, True)):
            x0 = (2 * i + j) * 64
            nucleus = (yy - 32) ** 2 + (xx - 32) ** 2 < 8**2
            ring = ((yy - 32) ** 2 + (xx - 32) ** 2 < 14**2) & ~nucleus
            tile = image[:, x0:x0 + 64]
            tile[nucleus] = (150, 150, 200)
            tile[nucleus if over_nucleus else ring] = rgb
            pigment_labels[:, x0:x0 + 64][nucleus] = 2 * i + j + 1
            kinds.append((pigment_name, over_nucleus))
    pigment = measure_labels(pigment_labels, image, kind="brightfield", mpp=DEEPLIIF_MPP,
                             ring_width_um=2.0).to_pandas()
    panel = resolve_panel("ihc", "Ki67", directory=panels_dir)
    cells = pd.concat([real, pigment], ignore_index=True)
    result = classify_cells(cells, panel, kind="brightfield", config=PhenotypesSection())
    flagged = dict(zip(kinds, result.pigment["Ki67"][len(real):], strict=True))
    # cytoplasmic pigment of every colour, and yellow pigment anywhere, is excluded
    assert all(flagged[(name, False)] for name in PIGMENTS_RGB)
    assert flagged[("hemosiderin", True)] and flagged[("lipofuscin", True)]
    # (dark hemosiderin and bile over a nucleus match DAB's hue: a documented limitation)
    truth = real["truth"].to_numpy()
    assert result.pigment["Ki67"][:len(real)][truth].mean() < 0.05  # real Ki67+ stay positive
    off = classify_cells(cells, panel, kind="brightfield",
                         config=PhenotypesSection(pigment_exclusion=False))
    would_be_positive = off.positive["Ki67"] & result.pigment["Ki67"]
    assert would_be_positive[len(real):].sum() >= 2  # pigment over nuclei looks Ki67+ ...
    assert not result.positive["Ki67"][result.pigment["Ki67"]].any()  # ... and is excluded
    assert result.calls["Ki67"].n_pigment_excluded == would_be_positive.sum()


def test_ihc_bins_and_h_score(panels_dir):
    panel = resolve_panel("ihc", "CD8", directory=panels_dir)
    marker = panel.markers[0]
    dab = np.array([0.0, 0.1, 0.3, 0.6, 1.2, 2.0])  # 0, 0, 1+, 2+, 3+, 3+
    cells = pd.DataFrame({f"{c}_{s}_od": dab if s == "dab" else np.full(6, 0.2)
                          for c in ("nucleus", "ring") for s in ("hematoxylin", "eosin", "dab")})
    cells[["nucleus_eosin_od", "ring_eosin_od"]] = -0.1
    positive, call, bins, _ = call_marker(cells, marker, kind="brightfield",
                                          config=PhenotypesSection())
    assert bins.tolist() == [0, 0, 1, 2, 3, 3]
    assert call.n_positive == 4 and positive.sum() == 4
    assert call.h_score == pytest.approx((1 * 1 + 2 * 1 + 3 * 2) * 100 / 6)


def mibi_cells(root) -> pd.DataFrame:
    folder = root / "multiplex" / "mibi" / "Point2203_pt1072_31606"
    import tifffile

    channels = ("Nuc", "CD45", "CD3", "CD4", "CD8", "FOXP3", "CD68", "PD1", "PDL1", "PanKRT")
    image = np.stack([tifffile.imread(folder / f"{c}.tif") for c in channels], -1)
    image = image.astype(np.float32)
    labels = segment_nuclei_watershed(ndi.gaussian_filter(image[..., 0], 1.0),
                                      min_distance_px=4, min_area_px=20)
    # about 0.5 um/px (500 um fields of 1024 px); the ring is 1.5 um
    return measure_labels(labels, image, kind="fluorescence", mpp=0.5, channels=channels,
                          ring_width_um=1.5).to_pandas()


def test_mibi_phenotypes_follow_lineages(shared_data, panels_dir):
    cells = mibi_cells(shared_data)
    assert len(cells) > 400
    panel = load_panel(panels_dir / "mibi_breast.yaml")
    result = classify_cells(cells, panel, kind="fluorescence", config=PhenotypesSection())
    pos = result.positive
    assert pos["CD8"].sum() >= 3 and pos["CD3"].sum() >= 10 and pos["PanKRT"].sum() >= 100
    # CD8+ cells are T cells: CD3+ far more often than cells at large
    assert pos["CD3"][pos["CD8"]].mean() >= 5 * pos["CD3"].mean()
    # epithelial (panCK+) cells are not leukocytes, and T cells are not epithelial
    assert pos["CD45"][pos["PanKRT"]].mean() < 0.05
    assert pos["PanKRT"][pos["CD3"]].mean() < 0.2 * pos["PanKRT"].mean()
    # leukocyte markers travel together: CD3+ cells are CD45+ far above the base rate
    assert pos["CD45"][pos["CD3"]].mean() >= 4 * pos["CD45"].mean()
    for call in result.calls.values():  # the per-slide automatic thresholds are recorded
        assert call.method == "otsu" and np.isfinite(call.threshold)
    assert (result.label == "tumour").sum() > 100


@pytest.mark.parametrize("sample", ["G01", "J02"])
def test_imc_phenotypes_follow_lineages(shared_data, panels_dir, sample):
    import tifffile

    folder = shared_data / "multiplex" / "imc"
    image = tifffile.imread(folder / f"{sample}_imc.tiff").transpose(1, 2, 0)
    labels = tifffile.imread(folder / f"{sample}_mask.tiff")
    cells = measure_labels(labels, image, kind="fluorescence", mpp=1.0,
                           channels=("H3", "CD99", "PIN", "CD8a", "CDH"),
                           ring_width_um=1.0).to_pandas()
    panel = load_panel(panels_dir / "imc_pancreas.yaml")
    result = classify_cells(cells, panel, kind="fluorescence", config=PhenotypesSection())
    pos = result.positive
    assert not (pos["CD8"] & pos["PIN"]).any()  # T cells never make proinsulin
    if sample == "G01":  # an islet with beta cells (Damond et al.: non-diabetic donor)
        assert pos["PIN"].sum() >= 10
    else:  # J02: the T1D donor's islet, CD8+ T cells present
        assert pos["CD8"].sum() >= 1


def test_panel_naming_a_missing_channel_is_a_clear_error(shared_data, panels_dir):
    cells = pd.DataFrame({"nucleus_dapi_mean": [1.0, 2.0], "ring_dapi_mean": [1.0, 2.0],
                          "x_um": [0.0, 1.0], "y_um": [0.0, 1.0]})
    panel = load_panel(panels_dir / "hcc_io.yaml")
    with pytest.raises(PanelError, match="CD3.*dapi"):
        classify_cells(cells, panel, kind="fluorescence", config=PhenotypesSection())
    with pytest.raises(PanelError, match="no multiplex panel 'nope'"):
        resolve_panel("mif", "nope", directory=panels_dir)
    with pytest.raises(PanelError, match="no marker 'CD999'"):
        resolve_panel("ihc", "CD999", directory=panels_dir)


def test_panel_rules_must_use_defined_markers(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodality: mif\nprefix: mif_bad\nmarkers:\n"
                   "  - {name: CD3, channel: CD3}\nphenotypes:\n"
                   "  - {name: cd8_t, markers: {CD3: true, CD8: true}}\n")
    with pytest.raises(PanelError, match="bad.yaml.*CD8"):
        load_panel(bad)


@pytest.mark.parametrize("method", ["otsu", "gmm"])
def test_automatic_thresholds_split_two_populations(method):
    from pathology.cells.panels import Threshold

    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(10, 2, 3000), rng.normal(40, 5, 600)]
    cut = auto_threshold(values, Threshold(method=method))
    assert 16 < cut < 32
    positive = values >= cut
    assert abs(positive.sum() - 600) < 30


@pytest.mark.parametrize("name", list(DEEPLIIF))
def test_per_slide_stain_vectors_are_estimated_and_keep_ki67_right(shared_data, panels_dir,
                                                                   name):
    from pathology.segmentation.stains import (
        DEFAULT_MATRIX,
        angle_degrees,
        deconvolution_matrix,
        estimate_hdab_matrix,
    )

    ihc, labels, truth_positive = deepliif_tile(shared_data, name)
    matrix = estimate_hdab_matrix(ihc)
    assert angle_degrees(matrix[2], DEFAULT_MATRIX[2]) < 15  # DAB is DAB
    assert angle_degrees(matrix[0], DEFAULT_MATRIX[0]) < 20  # hematoxylin varies more
    assert angle_degrees(matrix[0], matrix[2]) > 15
    intensity, _ = intensity_image(ihc, kind="brightfield", channels=(),
                                   unmixing=deconvolution_matrix(matrix))
    cells = measure_labels(labels, ihc, kind="brightfield", mpp=DEEPLIIF_MPP).to_pandas()
    keep = cells["area_um2"].to_numpy() >= 5
    ids = cells["label"].to_numpy()[keep]
    cells = cells[keep].assign(nucleus_dab_od=ndi.mean(intensity[..., 2], labels, ids))
    truth = 100.0 * truth_positive[ids].mean()
    assert abs(ki67_fraction(cells, panels_dir) - truth) <= 10
