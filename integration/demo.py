"""End-to-end demo study on real data that ships inside the project's dependencies.

Writes a small study to ``demo_data/`` and runs it end to end through
:func:`integration.study.run_study` (slides, blood, RNA-seq, integration, analysis, report)::

    python -m integration.demo --out demo_out

Real data: crops, flips and rotations of ``stardist.data.test_image_he_2d()`` (H&E),
``skimage.data.immunohistochemistry()`` (IHC, stain CD8) and
``stardist.data.test_image_nuclei_2d()`` (fluorescence, panel ``nuclei_only``), written as
pyramidal TIFFs with their pixel size, for each patient at baseline and on treatment (mIF at
baseline only); tumour
expression from scikit-survival's breast-cancer set (Desmedt et al., Clin Cancer Res 2007;
log2 Affymetrix, 76 probe sets; baseline only); single-cell RNA-seq from scanpy's
``pbmc68k_reduced()`` split into per-sample files when the blood arm handles ``scrna``. The
scan resolution of the images is not published; 0.5 um/px is assumed from the nucleus size and
stated in the manifest and the TIFF resolution tags.

The clinical outcomes are SYNTHETIC (:func:`integration.synthetic.synthetic_clinical`; the risk
is planted on the DAB optical density of each patient's baseline IHC crop) and
``analysis.synthetic_outcomes: true`` labels every output so. Running the demo again reuses
``demo_data/`` (identical files, so finished slides are skipped) and resumes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import yaml

from integration.manifest import read_manifest

DEMO_MPP = 0.5  # assumed (see module docstring)
MARGIN = 32  # px of empty glass around each image, so tissue detection has work to do
CROP = 192  # px side of each image crop
RECIPE_VERSION = 2  # bump whenever the files written change
RECIPE_FILE = "demo_recipe.json"
TIMEPOINTS = ("baseline", "on_treatment")
SLIDE_STAINS = {"he": "HE", "ihc": "CD8", "mif": "nuclei_only"}
MIF_TIMEPOINTS = ("baseline",)  # multiplex IF at baseline only (keeps the demo short)
DEMO_PATHOLOGY = {"tiling": {"tile_size": 256, "halo": 64},
                  "tissue": {"min_tissue_area_um2": 2000.0},
                  "qc": {"crops": 1}}
DEMO_BLOOD = {"scrna": {"qc": {"min_cells": 20}}}  # pbmc68k_reduced: ~29 cells per sample
DEMO_ANALYSIS = {"synthetic_outcomes": True,
                 "cox": {"covariates": ["crafity", "age"], "min_patients": 8, "n_km_plots": 2},
                 "elastic_net": {"folds": 3, "bootstrap": 50},
                 "subtypes": {"k_max": 3, "resamples": 20}}


def write_pyramidal_tiff(path: Path, image: np.ndarray, *, mpp: float, levels: int = 2,
                         channel_names: list[str] | None = None) -> None:
    """Write a tiled pyramidal TIFF (levels as successive pages) with its pixel size.

    RGB images are written as ``YXS`` (readable by OpenSlide as generic TIFF); multichannel
    images as an OME-TIFF ``CYX`` with ``PhysicalSizeX/Y`` and channel names (tiffslide).

    Parameters
    ----------
    path
        Output file.
    image
        ``(H, W, 3)`` uint8 RGB, or ``(C, H, W)`` fluorescence.
    mpp
        Level-0 pixel size in um/px.
    levels
        Number of pyramid levels (each halves the size).
    channel_names
        For multichannel images.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per cm
    rgb = image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    with tifffile.TiffWriter(path, bigtiff=False, ome=not rgb) as tif:
        current = image
        for level in range(levels):
            if rgb:
                tif.write(current, tile=(128, 128), photometric="rgb", compression="zlib",
                          resolution=resolution, resolutionunit="CENTIMETER",
                          subfiletype=0 if level == 0 else 1, metadata=None)
                current = current[::2, ::2]
            else:
                meta = ({"axes": "CYX", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                         "Channel": {"Name": channel_names or []}} if level == 0 else None)
                tif.write(current, tile=(128, 128), photometric="minisblack",
                          compression="zlib", resolution=resolution,
                          resolutionunit="CENTIMETER", metadata=meta,
                          subfiletype=0 if level == 0 else 1)
                current = current[:, ::2, ::2]


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary)`` then rename (same folder, same suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (its modification time is kept)."""
    if path.is_file() and path.read_text() == text:
        return
    _atomic(path, lambda p: p.write_text(text))


def _variant(image: np.ndarray, index: int, crop: int, rng: np.random.Generator) -> np.ndarray:
    """A ``crop`` x ``crop`` window of ``image`` (last two or first two axes), rotated/flipped."""
    height, width = image.shape[:2]
    y0 = int(rng.integers(0, height - crop + 1))
    x0 = int(rng.integers(0, width - crop + 1))
    window = image[y0:y0 + crop, x0:x0 + crop]
    window = np.rot90(window, k=index % 4)
    if (index // 4) % 2:
        window = window[:, ::-1]
    return np.ascontiguousarray(window)


def _pad(image: np.ndarray, value: int) -> np.ndarray:
    pad = [(MARGIN, MARGIN), (MARGIN, MARGIN)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, constant_values=value)


def blood_handles(modality: str) -> bool:
    """Whether the installed blood arm processes ``modality`` (False without ``blood.batch``)."""
    try:
        from blood import batch
    except ImportError:
        return False
    return modality in getattr(batch, "PROCESSORS", {})


def build_demo_study(folder: Path, *, out: Path, n_patients: int = 12, crop: int = CROP,
                     modalities: Sequence[str] = ("he", "ihc", "mif"), rnaseq: bool = True,
                     scrna: bool | None = None, analysis: dict | None = None,
                     seed: int = 0) -> Path:
    """Write the demo study into ``folder`` and return its study YAML.

    Written: pyramidal TIFF slides, ``samples.csv``, ``clinical.csv`` (SYNTHETIC outcomes),
    ``rnaseq_log2.csv``, ``scrna/*.h5ad`` and ``blood.yaml`` (if the blood arm handles
    scRNA-seq), ``pathology.yaml`` (small tiles) and ``study.yaml``. Images are rewritten only
    when the recipe (these parameters) changed, so a second run finds the same files and skips
    the finished slides.

    Parameters
    ----------
    folder
        Study folder (created).
    out
        The run folder named in ``study.yaml``.
    n_patients
        Patients, each with ``modalities`` slides at baseline and on treatment (``mif`` at
        baseline only).
    crop
        Side (px) of each image crop, before a margin of empty glass.
    modalities
        Slide modalities written (subset of he, ihc, mif).
    rnaseq
        Add baseline tumour RNA-seq (scikit-survival breast-cancer expression).
    scrna
        Add per-sample scRNA-seq (pbmc68k_reduced); ``None``: when the blood arm handles it.
    analysis
        The study YAML's ``analysis`` section (default: :data:`DEMO_ANALYSIS`); its
        ``synthetic_outcomes`` is always true.
    seed
        Seeds crops, sample assignment and the synthetic clinical table.

    Returns
    -------
    pathlib.Path
        ``folder/study.yaml``.

    Raises
    ------
    ValueError
        An unknown slide modality, fewer than 2 patients, or a crop larger than the images.
    """
    from skimage.color import rgb2hed
    from skimage.data import immunohistochemistry
    from stardist.data import test_image_he_2d, test_image_nuclei_2d

    from integration.synthetic import synthetic_clinical

    unknown = sorted(set(modalities) - set(SLIDE_STAINS))
    if unknown:
        raise ValueError(f"unknown slide modality {unknown}; use {sorted(SLIDE_STAINS)}")
    if n_patients < 2:
        raise ValueError(f"n_patients is {n_patients}; the demo needs at least 2")
    if not 64 <= crop <= 300:
        raise ValueError(f"crop is {crop}; use 64-300 px (the H&E image is 300 px high)")
    scrna = blood_handles("scrna") if scrna is None else scrna
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {"version": RECIPE_VERSION, "n_patients": n_patients, "crop": crop,
              "margin": MARGIN, "modalities": list(modalities), "rnaseq": rnaseq,
              "scrna": scrna, "seed": seed}
    stamp = folder / RECIPE_FILE
    reuse = stamp.is_file() and json.loads(stamp.read_text()) == recipe
    rng = np.random.default_rng(seed)
    sources = {"he": (test_image_he_2d(), 245), "ihc": (immunohistochemistry(), 245),
               "mif": (test_image_nuclei_2d(), 0)}
    patients = [f"DEMO{i + 1:02d}" for i in range(n_patients)]
    rows: list[tuple] = []
    dab = np.zeros(n_patients)
    for i, patient in enumerate(patients):
        for j, timepoint in enumerate(TIMEPOINTS):
            index = 2 * i + j
            for modality in SLIDE_STAINS:  # every crop drawn, so rng use is stable
                image, background = sources[modality]
                window = _variant(image, index, crop, rng)
                if modality == "ihc" and timepoint == "baseline":
                    dab[i] = float(rgb2hed(window)[..., 2].mean())
                if modality not in modalities or (modality == "mif"
                                                  and timepoint not in MIF_TIMEPOINTS):
                    continue
                sample_id = f"{patient}_{timepoint}_{modality}"
                name = f"{sample_id}.ome.tiff" if modality == "mif" else f"{sample_id}.tiff"
                rows.append((patient, timepoint, sample_id, modality, SLIDE_STAINS[modality],
                             f"slides/{name}", DEMO_MPP))
                target = folder / "slides" / name
                if reuse and target.is_file():
                    continue
                padded = _pad(window, background)
                if modality == "mif":
                    _atomic(target, lambda p, a=padded: write_pyramidal_tiff(
                        p, a.astype(np.uint16)[None], mpp=DEMO_MPP, channel_names=["DAPI"]))
                else:
                    _atomic(target, lambda p, a=padded: write_pyramidal_tiff(p, a,
                                                                             mpp=DEMO_MPP))
    if rnaseq:
        rows.extend(_write_rnaseq(folder, patients, rng))
    if scrna:
        rows.extend(_write_scrna(folder, patients, rng, reuse=reuse))
    manifest = pd.DataFrame(rows, columns=["patient_id", "timepoint", "sample_id", "modality",
                                           "stain", "path", "mpp"])
    manifest["mpp"] = manifest["mpp"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    _write_text(folder / "samples.csv", manifest.to_csv(index=False, lineterminator="\n"))
    # SYNTHETIC outcomes: more DAB (CD8) in the baseline IHC crop, lower hazard.
    risk = -0.8 * (dab - dab.mean()) / (dab.std() or 1.0)
    clinical = synthetic_clinical(patients, seed=seed + 1, risk=risk)
    _write_text(folder / "clinical.csv", clinical.to_csv(index=False, lineterminator="\n"))
    _write_text(folder / "pathology.yaml",
                "# Demo slide settings: small tiles for small images (see configs/pathology.yaml)\n"
                + yaml.safe_dump(DEMO_PATHOLOGY, sort_keys=False))
    arm_configs = {"pathology_config": "pathology.yaml"}
    if scrna:
        _write_text(folder / "blood.yaml",
                    "# Demo blood settings: about 30 cells per scRNA-seq sample (see "
                    "configs/blood.yaml)\n" + yaml.safe_dump(DEMO_BLOOD, sort_keys=False))
        arm_configs["blood_config"] = "blood.yaml"
    section = dict(analysis if analysis is not None else DEMO_ANALYSIS)
    section["synthetic_outcomes"] = True
    study = {"study": {"name": "hccbio demo (real images and expression, SYNTHETIC outcomes)",
                       "manifest": "samples.csv", "clinical": "clinical.csv",
                       "out": os.path.relpath(Path(out).resolve(), folder.resolve()),
                       **arm_configs, "scheduler": "sync"},
             "analysis": section}
    _write_text(folder / "study.yaml",
                "# hccbio demo study, written by integration.demo (schema: integration/study.py,"
                " integration/config.py).\n# The clinical outcomes are SYNTHETIC.\n"
                + yaml.safe_dump(study, sort_keys=False))
    _write_text(stamp, json.dumps(recipe, indent=1) + "\n")
    read_manifest(folder / "samples.csv", check_files=True)
    return folder / "study.yaml"


def _write_rnaseq(folder: Path, patients: list[str], rng: np.random.Generator) -> list[tuple]:
    """Baseline tumour expression: real log2 values of breast tumours, one column per patient."""
    from sksurv.datasets import load_breast_cancer

    features, _ = load_breast_cancer()
    genes = [c for c in features.columns if c.startswith("X")]
    chosen = np.sort(rng.choice(features.shape[0], size=len(patients), replace=False))
    ids = [f"{p}_baseline_rnaseq" for p in patients]
    table = features.iloc[chosen][genes].astype(float).T
    table.columns = ids
    table.index.name = "gene"
    _write_text(folder / "rnaseq_log2.csv",
                table.round(6).to_csv(lineterminator="\n", float_format="%.6f"))
    return [(p, "baseline", i, "rnaseq", "", "rnaseq_log2.csv", None)
            for p, i in zip(patients, ids, strict=True)]


def _write_scrna(folder: Path, patients: list[str], rng: np.random.Generator, *,
                 reuse: bool) -> list[tuple]:
    """scanpy's pbmc68k_reduced cells dealt at random into one h5ad per patient and time point."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    groups = np.array_split(rng.permutation(adata.n_obs), 2 * len(patients))
    rows = []
    for k, (patient, timepoint) in enumerate((p, t) for p in patients for t in TIMEPOINTS):
        sample_id = f"{patient}_{timepoint}_scrna"
        target = folder / "scrna" / f"{sample_id}.h5ad"
        if not (reuse and target.is_file()):
            part = adata[np.sort(groups[k])].copy()
            _atomic(target, lambda p, a=part: a.write_h5ad(p))
        rows.append((patient, timepoint, sample_id, "scrna", "pbmc", f"scrna/{sample_id}.h5ad",
                     None))
    return rows


def _print_summary(summary: dict, study_yaml: Path, seconds: float) -> None:
    print(f"\nDemo study {summary['name']!r}: {seconds:.0f} s")
    for arm, counts in summary["arms"].items():
        print(f"  {arm:14s} {counts}")
    report = summary.get("batch_report")
    if summary["failed"] and report is not None:
        batch = pd.read_csv(report, dtype=str, keep_default_na=False)
        failed = batch[batch["sample_id"].isin(summary["failed"])]
        print(f"\n  {len(failed)} sample(s) failed (the study went on without them):")
        for row in failed.itertuples():
            print(f"    {row.sample_id:28s} {row.reason[:110]}")
    out = Path(summary["out"])
    print(f"\n  study config   {study_yaml.resolve()}")
    print(f"  results        {out}")
    print(f"  report         {summary.get('report')}   (outcomes are SYNTHETIC)")
    print(f"  QC review      {summary.get('qc') or 'not written'}   (or: hccbio review {out})")
    print(f"  batch report   {report}")
    print(f"  features       {summary.get('features')}")
    print(f"  dictionary     {summary.get('data_dictionary')}")
    print(f"  analysis       {summary.get('analysis')}")


def main(argv: list[str] | None = None) -> int:
    """Build the demo study and run it; 0 when the report was written."""
    parser = argparse.ArgumentParser(description="hccbio end-to-end demo study")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="run folder")
    parser.add_argument("--data", type=Path, default=Path("demo_data"), help="study folder")
    parser.add_argument("--patients", type=int, default=12, help="number of patients")
    parser.add_argument("--force", action="store_true", help="recompute finished slides")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from integration.study import StudyError, run_study

    started = time.perf_counter()
    study_yaml = build_demo_study(args.data, out=args.out, n_patients=args.patients)
    try:
        summary = run_study(study_yaml, force=args.force)
    except StudyError as error:
        print(f"error: {error}")
        return 2
    _print_summary(summary, study_yaml, time.perf_counter() - started)
    return 0 if summary.get("report") else 1


if __name__ == "__main__":
    raise SystemExit(main())
