"""Multiplex IF / IMC / MIBI as labs export them, through the command a lab runs.

The real IMC stacks (cytomapper: 5-page IYX float32 TIFFs without channel names, 1 um/px per
SOURCE.txt) and the real MIBI field (41 single-channel TIFFs in a folder) go through
``python -m integration.cli slides run`` with ``tissue.mode: whole_image``; the tests read
what the run wrote: cells.parquet, features.json, the QC overlays. Fast tests check the
readers (stack layouts read identically) and the errors on the same real data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

# matched-cell agreement and rasterising: the benchmark's definitions, one for both
from benchmarks.multiplex import cell_agreement
from benchmarks.multiplex import raster as _raster
from pathology.config import PathologyConfig, TissueSection
from pathology.io.slide import Slide, SlideError

PROJECT = Path(__file__).resolve().parents[2]
IMC_CHANNELS = ("H3", "CD99", "PIN", "CD8a", "CDH")
# Risom et al. (Cell 2022): 500 um fields of view at 1024 x 1024 pixels (the files carry no
# pixel size; the manifest's mpp column gives it, as a lab would)
MIBI_MPP = 500 / 1024


def _imc(shared_data, sample: str) -> Path:
    return shared_data / "multiplex" / "imc" / f"{sample}_imc.tiff"


def _mibi(shared_data) -> Path:
    return shared_data / "multiplex" / "mibi" / "Point2203_pt1072_31606"


def _imc_as_czi(shared_data, folder: Path) -> Path:
    """The real IMC stack G01 written as a Zeiss CZI by Zeiss's own library (pylibCZIrw):
    one Gray32Float channel per marker, named, 1 um/px in the file's Scaling (no manifest
    mpp needed)."""
    czi = pytest.importorskip("pylibCZIrw.czi")
    stack = tifffile.imread(_imc(shared_data, "G01"))
    path = folder / "G01_imc.czi"
    with czi.create_czi(str(path), exist_ok=True) as writer:
        for channel, plane in enumerate(stack):
            writer.write(np.ascontiguousarray(plane, dtype=np.float32), plane={"C": channel})
        writer.write_metadata(channel_names=dict(enumerate(IMC_CHANNELS)), scale_x=1e-6,
                              scale_y=1e-6)
    return path


@pytest.fixture(scope="module")
def mif_run(shared_data, tmp_path_factory) -> Path:
    """`hccbio slides run` on the IMC stacks G01, J02 and the MIBI folder, defaults except
    whole-image tissue (the fields are 100 um and 500 um)."""
    work = tmp_path_factory.mktemp("mif")
    rows = [("P1", "imc_G01", "imc_pancreas", _imc(shared_data, "G01"), 1.0),
            ("P2", "imc_J02", "imc_pancreas", _imc(shared_data, "J02"), 1.0),
            ("P3", "mibi", "mibi_breast", _mibi(shared_data), MIBI_MPP),
            ("P4", "imc_G01_czi", "imc_pancreas", _imc_as_czi(shared_data, work), "")]
    manifest = work / "samples.csv"
    manifest.write_text("patient_id,timepoint,sample_id,modality,stain,path,mpp\n" + "".join(
        f"{p},baseline,{s},mif,{stain},{path},{mpp if mpp == '' else f'{mpp:.6g}'}\n"
        for p, s, stain, path, mpp in rows))
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"tissue": {"mode": "whole_image"}}))
    out = work / "out"
    done = subprocess.run(
        [sys.executable, "-m", "integration.cli", "slides", "run", str(manifest), "--out",
         str(out), "--config", str(config), "--scheduler", "sync", "--quiet"],
        cwd=PROJECT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _slide(out: Path, sample: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    folder = out / "slides" / sample
    cells = pd.read_parquet(folder / "cells.parquet")
    classes = pd.read_parquet(folder / "cell_classes.parquet")
    return cells, classes, json.loads((folder / "features.json").read_text())


def test_imc_stack_and_mibi_folder_run_with_named_channels(mif_run):
    _, _, imc = _slide(mif_run, "imc_G01")
    assert imc["slide"]["backend"] == "tifffile"
    assert imc["slide"]["channels"] == list(IMC_CHANNELS)
    assert imc["slide"]["channels_source"] == "panel:imc_pancreas"
    assert imc["slide"]["mpp_source"] == "manifest:mpp"
    cells, _, mibi = _slide(mif_run, "mibi")
    assert mibi["slide"]["channels_source"] == "folder:file names"
    assert len(mibi["slide"]["channels"]) == 41 and "PanKRT" in mibi["slide"]["channels"]
    assert mibi["slide"]["dimensions"] == [1024, 1024]
    # whole cells grown from the nuclei, measured per channel, with outlines
    assert mibi["whole_cell"]["method"] == "expand"
    assert {"cell_area_um2", "cell_pankrt_mean", "cell_cd3_mean", "cell_poly_x_um"} <= set(
        cells.columns)
    assert (cells["cell_area_um2"] >= cells["area_um2"] - 1e-6).all()  # a cell holds its nucleus
    assert len(cells) > 300


def test_a_czi_export_gives_the_same_cells_as_the_tiff_stack(mif_run):
    tiff_cells, tiff_classes, _ = _slide(mif_run, "imc_G01")
    cells, classes, record = _slide(mif_run, "imc_G01_czi")
    assert record["slide"]["backend"] == "pylibczirw"
    assert record["slide"]["channels"] == list(IMC_CHANNELS)
    assert record["slide"]["channels_source"] == "czi"
    assert record["slide"]["mpp_source"] == "czi:Scaling/Distance"
    assert len(cells) == len(tiff_cells) > 10
    np.testing.assert_allclose(cells[["x_um", "y_um"]], tiff_cells[["x_um", "y_um"]])
    assert (classes["phenotype"].to_numpy() == tiff_classes["phenotype"].to_numpy()).all()


def test_mibi_marker_calls_follow_lineages(mif_run):
    _, classes, features = _slide(mif_run, "mibi")
    pos = {m: classes[f"{m.lower()}_pos"].to_numpy(bool)
           for m in ("CD3", "CD8", "CD45", "PanKRT")}
    assert pos["CD8"].sum() >= 5 and pos["PanKRT"].sum() >= 100
    assert pos["CD3"][pos["CD8"]].mean() >= 0.8  # CD8+ cells are CD3+ T cells (issue 33) ...
    assert pos["CD3"][pos["CD8"]].mean() >= 5 * pos["CD3"].mean()  # ... far above the base rate
    assert pos["CD45"][pos["PanKRT"]].mean() <= 0.1  # panCK+ epithelial cells are CD45-
    record = features["phenotyping"]["markers"]["PanKRT"]
    assert record["column"] == "cell_pankrt_mean"  # membrane / cytoplasm: read in the cell
    density = features["features"]["mif_mibi_cd8_t_tissue_density"]
    assert density["unit"] == "cells/mm^2"
    n_cd8 = int(classes["is_cd8_t"].sum())
    clean_mm2 = features["features"]["mif_mibi_tissue_mm2"]["value"]
    assert density["value"] == pytest.approx(n_cd8 / clean_mm2, rel=0.05)
    # counts: thresholds fitted on arcsinh(counts / cofactor), zero-inflated channels kept apart
    cd8 = features["phenotyping"]["markers"]["CD8"]
    assert cd8["transform"] == "asinh" and cd8["cofactor"] == 1.0
    assert cd8["zero_fraction"] > 0.8  # most cells carry no CD8 count ...
    assert cd8["threshold"] > 0.1  # ... and the threshold does not fall to the first count
    # QC: the lineage shares, checked, and one histogram with its threshold per marker
    qc = json.loads((mif_run / "slides" / "mibi" / "qc" / "qc.json").read_text())
    lineage = qc["metrics"]["lineage"]
    assert lineage["cd3_of_cd8"]["value"] == pytest.approx(pos["CD3"][pos["CD8"]].mean())
    assert lineage["cd3_of_cd8"]["n"] == pos["CD8"].sum()
    assert lineage["cd45neg_of_keratin"]["value"] >= 0.9
    [check] = [c for c in qc["checks"] if c["name"] == "lineage"]
    assert not check["fired"] and "lineage" not in qc["flags"]
    files = qc["files"]["marker_histograms"]
    assert set(files) == {m.name for m in _panel_markers("mibi_breast")}
    from PIL import Image

    with Image.open(mif_run / "slides" / "mibi" / "qc" / files["CD8"]) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # the threshold line (#d55e00) and the bars (#56b4e9) are drawn
    assert (np.abs(pixels - (213, 94, 0)).sum(axis=2) < 40).sum() > 100
    assert (np.abs(pixels - (86, 180, 233)).sum(axis=2) < 40).sum() > 100


def _panel_markers(name: str):
    from pathology.cells.panels import load_panel

    return load_panel(PROJECT / "configs" / "panels" / f"{name}.yaml").markers


def test_lineage_flag_fires_on_inconsistent_calls():
    from pathology.config import QcSection
    from pathology.qc.markers import lineage_flag, lineage_metrics

    cd8 = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    cd3 = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0], bool)  # 3 of 6 CD8+ cells CD3+
    keratin = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    cd45 = np.zeros(10, bool)
    config = QcSection(lineage_min_cells=5)
    metrics = lineage_metrics({"CD3": cd3, "CD8": cd8, "CD45": cd45, "panCK": keratin},
                              config=config)
    assert metrics["cd3_of_cd8"] == {"value": 0.5, "n": 6, "markers": ["CD8", "CD3"]}
    assert metrics["cd45neg_of_keratin"]["n"] == 4  # too few to be checked (< 5)
    flag = lineage_flag(metrics, config=config)
    assert flag.fired and flag.value == 0.5 and "CD3+ 0.5 of 6 < 0.8" in flag.reason
    consistent = lineage_metrics({"CD3": cd8, "CD8": cd8}, config=config)
    assert not lineage_flag(consistent, config=config).fired


def test_count_thresholds_do_not_collapse_on_zero_inflated_channels():
    from pathology.cells.panels import Threshold
    from pathology.cells.phenotypes import auto_threshold

    rng = np.random.default_rng(4)
    # 80 % of cells without a count, background counts (mean 0.05), 20 positive cells
    counts = np.r_[np.zeros(900), rng.poisson(2.0, 200) / 40, 0.15 + 0.2 * rng.random(20)]
    on_all = auto_threshold(counts, Threshold(method="otsu"))
    assert (counts >= on_all).sum() > 100  # on all cells the cut sinks into the background
    spec = Threshold(method="otsu", transform="asinh", cofactor=1.0, zeros="exclude")
    cut = auto_threshold(counts, spec)
    assert 20 <= (counts >= cut).sum() <= 25
    with pytest.raises(ValueError, match="contradict"):
        Threshold(method="otsu", log=True, transform="asinh")


@pytest.mark.parametrize("sample", ["G01", "J02"])
def test_imc_proinsulin_and_cd8_never_together(mif_run, sample):
    _, classes, features = _slide(mif_run, f"imc_{sample}")
    cd8, pin = classes["cd8_pos"].to_numpy(bool), classes["pin_pos"].to_numpy(bool)
    assert not (cd8 & pin).any()  # T cells never make proinsulin
    if sample == "G01":  # an islet of a non-diabetic donor: beta cells
        assert pin.sum() >= 10
    else:  # J02: the T1D donor's islet, CD8+ T cells present, no beta cells left
        assert cd8.sum() >= 1 and pin.sum() == 0
    assert features["features"]["mif_imc_beta_tissue_density"]["unit"] == "cells/mm^2"


def test_qc_overlays_show_panel_colours_and_cells(mif_run):
    qc = mif_run / "slides" / "mibi" / "qc"
    from PIL import Image

    crop = np.asarray(Image.open(qc / "crop_0.png").convert("RGB")).astype(int)
    # PanKRT (#009e73, bluish green) and the nuclear channel (blue) of the composite
    green = (crop[..., 1] > 60) & (crop[..., 1] > crop[..., 0] + 30)
    blue = (crop[..., 2] > 60) & (crop[..., 2] > crop[..., 0] + 30)
    assert green.mean() > 0.02 and blue.mean() > 0.02
    assert (qc / "crop_0_overlay.png").stat().st_size > 10_000
    record = json.loads((qc / "qc.json").read_text())
    assert record["n_detections"] > 300


def _tile(url: str) -> np.ndarray:
    import io
    import urllib.request

    from PIL import Image

    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback test
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")).astype(float)


def test_review_app_channel_toggles_and_contrast(mif_run, browser, serving, tmp_path):
    """The pathologist's viewer on the real MIBI field: one control row per channel, the
    panel's channels shown in the panel's colours by default, a channel toggled on and off
    and its contrast changed in the browser redraw the slide with that choice."""
    record = json.loads((mif_run / "slides" / "mibi" / "qc" / "qc.json").read_text())
    channels, colors = record["slide"]["channels"], record["display"]["colors"]
    shown = [i for i, color in enumerate(colors) if color]
    assert len(channels) == 41 and 2 <= len(shown) < 41
    with serving(mif_run) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors, tiles = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: tiles.append(r) if "_files/" in r.url else None)
        # the first request renders the 41-channel field; on a busy machine that takes > 30 s
        page.set_default_timeout(120_000)
        page.goto(url + "/slides/mibi")
        loaded = ("() => window.hccbioViewer.world.getItemCount() > 0 && "
                  "window.hccbioViewer.world.getItemAt(0).getFullyLoaded()")
        page.wait_for_function(loaded, timeout=30000)
        rows = page.locator("#channels .channel")
        assert rows.count() == 41
        assert rows.evaluate_all(
            "rs => rs.filter(r => r.querySelector('.channel-toggle').checked)"
            ".map(r => Number(r.dataset.index))") == shown
        assert [page.locator(f"#channels .channel[data-index='{i}'] .channel-color")
                .input_value() for i in shown] == [colors[i] for i in shown]
        # show only PanKRT, at a quarter of its default maximum
        first = channels.index("PanKRT")
        for i in shown:
            if i == first:
                continue
            page.locator(f"#channels .channel[data-index='{i}'] .channel-toggle").uncheck()
        slider = page.locator(f"#channels .channel[data-index='{first}'] .channel-max")
        slider.evaluate("(s) => { s.value = s.value / 4; "
                        "s.dispatchEvent(new Event('input')); }")
        page.wait_for_function(f"() => (window.hccbioChannels || '').startsWith('{first}-')"
                               " && !window.hccbioChannels.includes(',')", timeout=10000)
        query = page.evaluate("window.hccbioChannels")
        # the viewer may still report the old tiles as fully loaded before it asks for new ones
        # (a CI run failed so): wait for a tile of the new choice, then for the redraw
        if not any("ch=" + query in r.url for r in tiles):
            page.wait_for_event("response", predicate=lambda r: "ch=" + query in r.url,
                                timeout=60000)
        page.wait_for_function(loaded, timeout=30000)
        assert any("ch=" + query in r.url for r in tiles)
        assert all(r.status == 200 for r in tiles)
        page.screenshot(path=str(tmp_path / "mibi_channels.png"))
        assert errors == []
        page.close()
        # the whole field in one tile (1024 px / 8 = 128 px), as the browser asked for it,
        # against the default composite
        base = f"{url}/dzi/mibi_files/7/0_0.jpeg"
        one = _tile(f"{base}?ch={query}")
        assert np.abs(one - _tile(base)).mean() > 2
        dimmer = _tile(base + "?ch=" + query.rsplit("-", 1)[0] + "-"
                       + str(float(query.rsplit("-", 1)[1]) * 4))
        assert one.mean() > dimmer.mean()




# Measured 2026-12-07 with models/fluo_nuclei and the shipped imc_pancreas panel (nuclei at
# 0.33 um/px, whole cells by the membrane watershed; docs/phenotypes.md, python -m
# benchmarks.multiplex): sample: (cells found, true cells, whole-cell F1, mean IoU of matches).
# The target F1 >= 0.6 is not reached: the nuclei are the limit (see the docs).
IMC_AGREEMENT = {"G01": (128, 122, 0.45, 0.60), "J02": (109, 127, 0.31, 0.61)}


@pytest.mark.parametrize("sample", ["G01", "J02"])
def test_whole_cells_against_the_imc_whole_cell_masks(mif_run, shared_data, sample):
    cells, _, _ = _slide(mif_run, f"imc_{sample}")
    truth = tifffile.imread(shared_data / "multiplex" / "imc" / f"{sample}_mask.tiff")
    whole = cell_agreement(_raster(cells, truth.shape, 1.0, "cell_"), truth)
    found, n_true, f1, mean_iou = IMC_AGREEMENT[sample]
    assert whole["n_true"] == n_true
    assert whole["n_pred"] == pytest.approx(found, abs=3)
    assert abs(whole["n_pred"] - n_true) <= 0.3 * n_true  # the count within 30 % (issue 33)
    assert whole["f1"] >= f1 - 0.03 and whole["mean_iou"] >= mean_iou - 0.03
    assert (cells["cell_area_um2"] >= cells["area_um2"]).all()
    assert (cells["cell_area_um2"] > cells["area_um2"]).mean() > 0.6
    _, _, features = _slide(mif_run, f"imc_{sample}")
    assert features["nuclei_mpp"] == 0.33  # the panel's network resolution
    assert features["whole_cell"]["method"] == "membrane"
    assert features["whole_cell"]["channels"] == ["CD99", "CD8a", "CDH"]


# -- readers on the real data (no model) ------------------------------------------------------
def _region(path: Path, **kwargs) -> tuple[np.ndarray, Slide]:
    with Slide(path, manifest_mpp=1.0, **kwargs) as slide:
        return slide.read_region_at(10, 20, 60, 50, mpp=1.0), slide


def test_stack_layouts_read_the_same_pixels(shared_data, tmp_path):
    """IYX pages, one series per channel, a pyramidal (SubIFD) stack and a folder of files
    hold the same real IMC channels and read identically."""
    source = _imc(shared_data, "G01")
    stack = tifffile.imread(source)
    expected, _ = _region(source, channel_names=IMC_CHANNELS)
    assert expected.shape == (50, 60, 5)
    np.testing.assert_array_equal(expected[..., 2], stack[2, 20:70, 10:70])
    series = tmp_path / "series.tif"
    with tifffile.TiffWriter(series) as writer:
        for plane in stack:
            writer.write(plane)
    pyramid = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(pyramid) as writer:
        writer.write(stack, subifds=1, tile=(32, 32), metadata={"axes": "QYX"})
        writer.write(stack[:, ::2, ::2], subfiletype=1, tile=(32, 32))
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, plane in zip(IMC_CHANNELS, stack, strict=True):
        tifffile.imwrite(folder / f"{name}.tiff", plane)
    for path in (series, pyramid):
        region, slide = _region(path, channel_names=IMC_CHANNELS)
        assert slide.info.backend == "tifffile"
        np.testing.assert_array_equal(region, expected)
    with Slide(pyramid, manifest_mpp=1.0) as slide:
        assert len(slide.info.level_dimensions) == 2
    region, slide = _region(folder)
    order = [IMC_CHANNELS.index(c) for c in slide.info.channels]  # files sort by name
    np.testing.assert_array_equal(region, expected[..., order])


def test_channel_names_from_sidecar_and_clear_errors(shared_data, tmp_path):
    path = tmp_path / "G01_imc.tiff"
    shutil.copy(_imc(shared_data, "G01"), path)
    with Slide(path, manifest_mpp=1.0) as slide:  # no names anywhere
        assert slide.info.channels == ("ch0", "ch1", "ch2", "ch3", "ch4")
        assert slide.info.channels_source == "none"
    sidecar = tmp_path / "G01_imc.tiff.channels.txt"
    sidecar.write_text("# IMC panel, file order\nH3\nCD99\nPIN\nCD8a\nCDH\n")
    with Slide(path, manifest_mpp=1.0, channel_names=("a", "b", "c", "d", "e")) as slide:
        assert slide.info.channels == IMC_CHANNELS  # the sidecar wins over the panel
        assert slide.info.channels_source == "sidecar:G01_imc.tiff.channels.txt"
    sidecar.write_text("H3\nCD99\n")
    with pytest.raises(SlideError, match=r"channels\.txt: lists 2 channel name\(s\) but .* 5"):
        Slide(path, manifest_mpp=1.0)
    sidecar.unlink()
    with pytest.raises(SlideError, match="no pixel size"):  # IMC carries none: never guessed
        Slide(path)


def test_panel_marker_without_a_channel_fails_the_slide_naming_file_and_channels(
        shared_data, tmp_path):
    from pathology.config import PhenotypesSection
    from pathology.run.batch import run_slides
    from pathology.run.pipeline import SlideJob

    path = tmp_path / "G01_imc.tiff"
    shutil.copy(_imc(shared_data, "G01"), path)
    panels = tmp_path / "panels"
    shutil.copytree(PROJECT / "configs" / "panels", panels)
    text = (panels / "imc_pancreas.yaml").read_text()
    (panels / "imc_pancreas.yaml").write_text(text.replace("channels: [H3, CD99, PIN, CD8a, "
                                                           "CDH]\n", ""))
    config = PathologyConfig(tissue=TissueSection(mode="whole_image"),
                             phenotypes=PhenotypesSection(panels_dir=str(panels)))
    job = SlideJob("g01", path, "mif", "imc_pancreas", 1.0)
    [row] = run_slides([job], tmp_path / "out", config, scheduler="sync")
    assert row.status == "failed"
    assert str(path) in row.reason and "CD8a" in row.reason
    assert "ch0, ch1, ch2, ch3, ch4" in row.reason and "channels.txt" in row.reason
