"""Multiplex cells on imaging mass cytometry (IMC) and MIBI through ``hccbio slides run``.

IMC (cytomapper G01, J02: 100 x 100 um at 1 um/px, the Damond et al. expert whole-cell masks):
cells found against the mask's, matched whole-cell F1 (a match is IoU > 0.5, cells rasterised
from ``cell_poly_*`` as in ``tests/pathology/test_multiplex.py``) and the median cell area,
for the shipped panels (``nuclei_mpp`` 0.33 um/px, ``whole_cell`` method ``membrane``) and for
the same panels without those keys (the fluorescence defaults: nuclei at the working
resolution, ``expand`` growth). MIBI (Risom et al., Point2203, no cell truth): cells, marker
counts and the QC lineage shares (CD8+ cells that are CD3+, keratin+ cells that are CD45-)
against their targets (``qc.lineage_*``, 0.8 and 0.9).

Usage: ``python -m benchmarks.multiplex`` (writes ``benchmarks/results/multiplex.json``, an
overlay of G01's cells on the expert outlines in ``benchmarks/results/multiplex_g01.png`` and
a table into benchmarks/README.md). About one minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reports import save_report, write_block  # noqa: E402
from pathology.evaluation.annotations import shared_data_folder  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "multiplex.json"
OVERLAY = ROOT / "benchmarks" / "results" / "multiplex_g01.png"
MIBI_MPP = 500 / 1024  # Risom et al.: 500 um fields at 1024 px
IMC = ("G01", "J02")
MIBI_MARKERS = ("CD45", "CD3", "CD8", "PanKRT")


def cell_agreement(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Matched-cell agreement of two label images (a pair matches at IoU > 0.5)."""
    n_p, n_t = int(predicted.max()), int(truth.max())
    pairs = np.bincount(predicted.astype(np.int64).ravel() * (n_t + 1) + truth.ravel(),
                        minlength=(n_p + 1) * (n_t + 1)).reshape(n_p + 1, n_t + 1)
    inter = pairs[1:, 1:]
    union = pairs.sum(1)[1:, None] + pairs.sum(0)[None, 1:] - inter
    iou = inter / np.maximum(union, 1)
    matched = iou > 0.5
    n_pred = int(np.count_nonzero(pairs.sum(1)[1:]))
    n_true = int(np.count_nonzero(pairs.sum(0)[1:]))
    tp = int(matched.sum())
    return {"n_pred": n_pred, "n_true": n_true, "tp": tp,
            "f1": 2 * tp / (n_pred + n_true) if n_pred + n_true else 0.0,
            "mean_iou": float(iou[matched].mean()) if tp else 0.0}


def raster(cells: pd.DataFrame, shape: tuple[int, int], mpp: float, prefix: str) -> np.ndarray:
    """Cells' star polygons (``<prefix>poly_x_um`` / ``_y_um``) as a label image."""
    from skimage.draw import polygon

    out = np.zeros(shape, dtype=np.int32)
    for k, (xs, ys) in enumerate(zip(cells[f"{prefix}poly_x_um"], cells[f"{prefix}poly_y_um"],
                                     strict=True), start=1):
        rows, cols = polygon(np.asarray(ys) / mpp - 0.5, np.asarray(xs) / mpp - 0.5, shape)
        out[rows, cols] = k
    return out


def _panels(work: Path, *, shipped: bool) -> Path:
    """The project's panels, or a copy without the IMC / MIBI segmentation keys."""
    folder = work / ("panels_shipped" if shipped else "panels_defaults")
    shutil.copytree(ROOT / "configs" / "panels", folder)
    if not shipped:
        for path in folder.glob("*.yaml"):
            data = yaml.safe_load(path.read_text())
            if data.pop("nuclei_mpp", None) is not None or data.pop("whole_cell", None):
                path.write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def run(data: Path, work: Path, panels: Path, *, model: str | None = None) -> Path:
    """``hccbio slides run`` on G01, J02 and the MIBI field with ``panels`` (``model``: a
    fluorescence nucleus model other than the configured one)."""
    rows = [(f"P{k}", f"imc_{s}", "imc_pancreas", data / "multiplex" / "imc" / f"{s}_imc.tiff",
             1.0) for k, s in enumerate(IMC)]
    rows.append(("P9", "mibi", "mibi_breast",
                 data / "multiplex" / "mibi" / "Point2203_pt1072_31606", MIBI_MPP))
    folder = work / f"run_{panels.name}"
    folder.mkdir()
    manifest = folder / "samples.csv"
    manifest.write_text("patient_id,timepoint,sample_id,modality,stain,path,mpp\n" + "".join(
        f"{p},baseline,{s},mif,{stain},{path},{mpp:.6g}\n" for p, s, stain, path, mpp in rows))
    config = folder / "config.yaml"
    settings: dict = {"tissue": {"mode": "whole_image"},
                      "phenotypes": {"panels_dir": str(panels)}}
    if model:
        settings["segmentation"] = {"fluorescence_model": model}
    config.write_text(yaml.safe_dump(settings))
    out = folder / "out"
    done = subprocess.run(
        [sys.executable, "-m", "integration.cli", "slides", "run", str(manifest), "--out",
         str(out), "--config", str(config), "--scheduler", "sync", "--quiet"],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"hccbio slides run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return out


def score(out: Path, data: Path) -> dict:
    """IMC agreement and MIBI marker figures of one run."""
    import tifffile

    result: dict = {"imc": {}, "mibi": {}}
    for sample in IMC:
        cells = pd.read_parquet(out / "slides" / f"imc_{sample}" / "cells.parquet")
        truth = tifffile.imread(data / "multiplex" / "imc" / f"{sample}_mask.tiff")
        whole = cell_agreement(raster(cells, truth.shape, 1.0, "cell_"), truth)
        n_true = whole["n_true"]
        result["imc"][sample] = {
            **whole, "count_error": (whole["n_pred"] - n_true) / n_true,
            "median_cell_area_um2": float(cells["cell_area_um2"].median()),
            "median_true_area_um2": float(np.median(np.bincount(truth.ravel())[1:][
                np.bincount(truth.ravel())[1:] > 0])),
            "nuclei_f1": cell_agreement(raster(cells, truth.shape, 1.0, ""), truth)["f1"]}
    folder = out / "slides" / "mibi"
    classes = pd.read_parquet(folder / "cell_classes.parquet")
    qc = json.loads((folder / "qc" / "qc.json").read_text())
    features = json.loads((folder / "features.json").read_text())
    result["mibi"] = {
        "n_cells": len(classes),
        "positive": {m: int(classes[f"{m.lower()}_pos"].sum()) for m in MIBI_MARKERS},
        "thresholds": {m: features["phenotyping"]["markers"][m]["threshold"]
                       for m in MIBI_MARKERS},
        "lineage": qc["metrics"].get("lineage"), "qc_flags": qc["flags"]}
    return result


def write_overlay(out: Path, data: Path, target: Path) -> None:
    """G01: H3 (blue) and the membrane markers (grey) with the expert cell outlines (white)
    and ours (orange), 4x enlarged."""
    import tifffile
    from PIL import Image
    from skimage.segmentation import find_boundaries

    stack = tifffile.imread(data / "multiplex" / "imc" / "G01_imc.tiff").astype(np.float32)
    truth = tifffile.imread(data / "multiplex" / "imc" / "G01_mask.tiff")
    cells = pd.read_parquet(out / "slides" / "imc_G01" / "cells.parquet")

    def scaled(x: np.ndarray) -> np.ndarray:
        return np.clip(x / max(float(np.percentile(x, 99.5)), 1e-6), 0, 1)

    factor = 4
    membrane = scaled(stack[1] + stack[4])
    rgb = np.stack([membrane * 0.6, membrane * 0.6, np.maximum(membrane * 0.6,
                                                               scaled(stack[0]))], -1)
    rgb = np.kron(rgb, np.ones((factor, factor, 1)))
    ours = raster(cells, (100 * factor, 100 * factor), 1.0 / factor, "cell_")
    expert = np.kron(truth, np.ones((factor, factor), dtype=truth.dtype))
    rgb[find_boundaries(expert, mode="inner")] = (1.0, 1.0, 1.0)
    rgb[find_boundaries(ours, mode="inner")] = (0.902, 0.624, 0.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(target)


def table(report: dict) -> str:
    """Markdown: IMC agreement per setting and image, MIBI lineage shares."""
    lines = ["| setting | image | cells (expert) | count error | whole-cell F1 | mean IoU of "
             "matches | median cell um^2 (expert) |", "|---|---|---|---|---|---|---|"]
    for setting, label in (("defaults", "fluorescence defaults (nuclei at 0.5 um/px, "
                            "`expand`)"), ("shipped", "shipped panel (`nuclei_mpp` 0.33, "
                                                      "`membrane`)")):
        for sample, r in report[setting]["imc"].items():
            lines.append(f"| {label} | {sample} | {r['n_pred']} ({r['n_true']}) | "
                         f"{100 * r['count_error']:+.0f} % | {r['f1']:.2f} | "
                         f"{r['mean_iou']:.2f} | {r['median_cell_area_um2']:.0f} "
                         f"({r['median_true_area_um2']:.0f}) |")
    lines += ["", "Targets: count within 30 % of the expert mask, matched F1 >= 0.6. MIBI "
              "Point2203 (no cell truth), marker calls and QC lineage shares "
              "(targets >= 0.8, >= 0.9):", "",
              "| setting | cells | CD45+ | CD3+ | CD8+ | PanKRT+ | CD8+ that are CD3+ | "
              "PanKRT+ that are CD45- | QC flags |", "|---|---|---|---|---|---|---|---|---|"]
    for setting in ("defaults", "shipped"):
        m = report[setting]["mibi"]
        lineage = m["lineage"] or {}

        def share(key: str, lineage: dict = lineage) -> str:
            entry = lineage.get(key) or {}
            return "-" if entry.get("value") is None else \
                f"{entry['value']:.2f} ({entry['n']} cells)"

        pos = m["positive"]
        lines.append(f"| {setting} | {m['n_cells']} | {pos['CD45']} | {pos['CD3']} | "
                     f"{pos['CD8']} | {pos['PanKRT']} | {share('cd3_of_cd8')} | "
                     f"{share('cd45neg_of_keratin')} | {', '.join(m['qc_flags']) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--model", help="fluorescence nucleus model to run instead of "
                        "segmentation.fluorescence_model (a candidate; implies --no-readme)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = shared_data_folder()
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="hccbio-multiplex-") as tmp:
        work = Path(tmp)
        for setting, shipped in (("defaults", False), ("shipped", True)):
            out = run(data, work, _panels(work, shipped=shipped), model=args.model)
            report[setting] = score(out, data)
            if shipped and not args.model:
                write_overlay(out, data, OVERLAY)
    report = save_report(report, args.out, started=started)
    print(table(report))
    if not args.no_readme and not args.model:
        write_block("multiplex", heading="Multiplex cells: IMC and MIBI", date=report["date"],
                    body=table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
