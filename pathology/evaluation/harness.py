"""Score the slide pipeline against annotated images, through the command a lab runs.

Annotated tiles are written as TIFF files with a manifest (``mpp`` column) and segmented by
``hccbio slides run`` in a subprocess, with the same reader, tiling, normalisation, model,
measurements and phenotypes as any slide. The cells it writes are then compared with the
annotation: instance matching at IoU 0.5 (StarDist's ``matching``), centroid matching within a
distance (one-to-one, by the Hungarian algorithm), and per-class recall.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pathology.config import PROJECT_ROOT
from pathology.evaluation.annotations import AnnotatedImage, AnnotatedPoints
from pathology.run.layout import RunFolder


class EvaluationError(RuntimeError):
    """The pipeline run behind an evaluation failed; the message carries its report."""


@dataclass(frozen=True)
class PipelineCells:
    """The cells ``hccbio slides run`` found in one annotated image."""

    name: str
    cells: pd.DataFrame  # cells.parquet joined with cell_classes.parquet when present
    mpp: float  # pixel size of the annotated image (um/px)
    shape: tuple[int, int]  # (H, W) of the annotated image


def sample_id_for(name: str) -> str:
    """A manifest-safe sample id for an image name (letters, digits, ``_ - .``).

    Examples
    --------
    >>> sample_id_for("TCGA-2Z A9J9/01")
    'TCGA-2Z_A9J9_01'
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def annotated_tile_config(model: str, precision: str = "float32") -> dict:
    """Pipeline configuration for annotated tiles: the defaults, ``model`` for H&E and IHC
    (its network in ``precision``), and the whole image as tissue (the tiles are small crops
    of tissue, not slides)."""
    return {"segmentation": {"brightfield_model": model, "ihc_model": model,
                             "precision": precision},
            "tissue": {"mode": "whole_image"}}


def run_pipeline(items: list[AnnotatedImage] | list[AnnotatedPoints], work: Path, *,
                 modality: str, stain: str = "", config: dict | None = None,
                 timeout_s: float = 3600) -> list[PipelineCells]:
    """Segment annotated images with ``hccbio slides run`` and return the cells of each.

    Parameters
    ----------
    items
        Annotated images (outlines or points) with a pixel size; RGB uint8 for brightfield.
    work
        An empty or new folder for the TIFFs, the manifest, the config and the run.
    modality
        Manifest modality of every image (``he`` or ``ihc``).
    stain
        Manifest stain (the IHC marker, e.g. ``Ki67``).
    config
        Pathology configuration (YAML sections as a dict) written to ``work/config.yaml``.
    timeout_s
        Limit for the whole run.

    Returns
    -------
    list of PipelineCells
        In the order of ``items``.

    Raises
    ------
    EvaluationError
        The run failed for an image (its batch report reason is in the message).
    """
    import tifffile

    work = Path(work)
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in items:
        if item.mpp is None:
            raise ValueError(f"{item.name}: no pixel size; the pipeline needs one")
        sample_id = sample_id_for(item.name)
        path = images / f"{sample_id}.tif"
        rgb = item.image.ndim == 3 and item.image.shape[2] == 3
        tifffile.imwrite(path, np.ascontiguousarray(item.image),
                         photometric="rgb" if rgb else "minisblack")
        rows.append({"patient_id": sample_id, "timepoint": "baseline", "sample_id": sample_id,
                     "modality": modality, "stain": stain, "path": str(path),
                     "mpp": f"{item.mpp:.6g}"})
    manifest = work / "samples.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config or {}, sort_keys=False))
    out = work / "run"
    command = [sys.executable, "-m", "integration.cli", "slides", "run", str(manifest),
               "--out", str(out), "--config", str(config_path), "--scheduler", "sync",
               "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    run = RunFolder(out)
    report = run.batch_report
    if not report.is_file():
        raise EvaluationError(f"hccbio slides run wrote no report (exit {done.returncode}): "
                              f"{done.stderr.strip()[-2000:]}")
    statuses = pd.read_csv(report, dtype=str, keep_default_na=False).set_index("sample_id")
    results = []
    for item, row in zip(items, rows, strict=True):
        sample_id = row["sample_id"]
        status = statuses.loc[sample_id]
        if status["status"] == "failed":
            raise EvaluationError(f"{item.name}: hccbio slides run failed: {status['reason']}")
        folder = run.slide(sample_id)
        cells = pd.read_parquet(folder.cells)
        classes_path = folder.classes
        if classes_path.is_file():
            classes = pd.read_parquet(classes_path)
            cells = cells.merge(classes, on="cell_id", how="left", suffixes=("", "_class"))
        results.append(PipelineCells(item.name, cells, float(item.mpp),
                                     tuple(item.image.shape[:2])))
    return results


def rasterise_cells(cells: pd.DataFrame, shape: tuple[int, int], mpp: float) -> np.ndarray:
    """Label image of the cells' polygons on a grid of ``mpp`` um/px (label = row + 1).

    Polygons are drawn in order, so a later cell wins where two overlap (StarDist's own
    rendering also gives each pixel to one nucleus).
    """
    from skimage.draw import polygon as draw_polygon

    labels = np.zeros(shape, dtype=np.int32)
    for index, (xs, ys) in enumerate(zip(cells["poly_x_um"], cells["poly_y_um"],
                                         strict=True), start=1):
        rr, cc = draw_polygon(np.asarray(ys) / mpp - 0.5, np.asarray(xs) / mpp - 0.5,
                              shape=shape)
        labels[rr, cc] = index
    return labels


def match_centroids(truth_xy: np.ndarray, predicted_xy: np.ndarray,
                    max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of two point sets within ``max_distance`` (Hungarian algorithm).

    Returns
    -------
    truth_index, predicted_index
        Matched pairs, as index arrays into the two sets.

    Examples
    --------
    >>> t, p = match_centroids(np.array([[0., 0.], [10., 0.]]), np.array([[9., 0.], [1., 0.]]),
    ...                        3.0)
    >>> sorted(zip(t.tolist(), p.tolist()))
    [(0, 1), (1, 0)]
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    truth_xy = np.asarray(truth_xy, dtype=np.float64).reshape(-1, 2)
    predicted_xy = np.asarray(predicted_xy, dtype=np.float64).reshape(-1, 2)
    if not len(truth_xy) or not len(predicted_xy):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(truth_xy).sparse_distance_matrix(cKDTree(predicted_xy), max_distance,
                                                     output_type="coo_matrix")
    if pairs.nnz == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Dense cost on the rows and columns that have a candidate; impossible pairs cost more
    # than any sum of possible ones.
    rows, cols = np.unique(pairs.row), np.unique(pairs.col)
    cost = np.full((len(rows), len(cols)), 1e6)
    cost[np.searchsorted(rows, pairs.row), np.searchsorted(cols, pairs.col)] = pairs.data
    r, c = linear_sum_assignment(cost)
    keep = cost[r, c] <= max_distance
    return rows[r[keep]], cols[c[keep]]


def detection_scores(n_true: int, n_pred: int, n_matched: int) -> dict[str, float]:
    """Precision, recall and F1 from counts.

    Examples
    --------
    >>> detection_scores(10, 8, 6)["f1"]
    0.6666666666666666
    """
    precision = n_matched / n_pred if n_pred else 0.0
    recall = n_matched / n_true if n_true else 0.0
    f1 = 2 * n_matched / (n_true + n_pred) if n_true + n_pred else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n_true": int(n_true),
            "n_pred": int(n_pred), "n_matched": int(n_matched)}


def truth_centroids_um(labels: np.ndarray, mpp: float) -> np.ndarray:
    """Centroids ``(x, y)`` in um of labels ``1..max`` (NaN for labels that are absent)."""
    from scipy import ndimage as ndi

    n = int(labels.max())
    if n == 0:
        return np.zeros((0, 2))
    centres = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, np.arange(1, n + 1)),
                         dtype=np.float64).reshape(n, 2)
    return (centres[:, ::-1] + 0.5) * mpp


def score_instances(result: PipelineCells, truth: np.ndarray, *,
                    classes: np.ndarray | None = None, centroid_um: float = 3.0) -> dict:
    """Nucleus-level scores of the pipeline's cells against an instance annotation.

    Parameters
    ----------
    result
        From :func:`run_pipeline`.
    truth
        Instance labels on the annotated image's grid.
    classes
        Optional class code per truth label (index = label) for per-class recall at IoU 0.5
        (``recall_by_class``) and by centroid distance (``found_by_class``: the nucleus was
        detected, whatever its outline; what a count or an index depends on).
    centroid_um
        Distance (um) within which a predicted centroid matches a truth centroid.

    Returns
    -------
    dict
        ``iou50`` (precision, recall, F1, counts), ``centroid`` (the same by centroid
        distance), ``matched_truth`` (truth label -> cell row of its IoU match),
        ``centroid_matched`` (truth label -> cell row of its centroid match) and, with
        ``classes``, ``recall_by_class`` and ``found_by_class``.
    """
    from stardist.matching import matching

    predicted = rasterise_cells(result.cells, result.shape, result.mpp)
    stats = matching(truth, predicted, thresh=0.5, report_matches=True)
    present = np.unique(truth)
    present = present[present > 0]
    n_true = len(present)
    iou = detection_scores(n_true, len(result.cells), int(stats.tp))
    pairs = [(int(t), int(p)) for (t, p), score in zip(stats.matched_pairs,
                                                         stats.matched_scores, strict=True)
             if score >= 0.5]
    truth_xy = truth_centroids_um(truth, result.mpp)[present - 1]
    t_idx, p_idx = match_centroids(truth_xy, result.cells[["x_um", "y_um"]].to_numpy(),
                                   centroid_um)
    out = {"iou50": iou,
           "centroid": detection_scores(n_true, len(result.cells), len(t_idx)),
           "matched_truth": {t: p - 1 for t, p in pairs},
           "centroid_matched": {int(present[t]): int(p) for t, p in zip(t_idx, p_idx,
                                                                        strict=True)}}
    if classes is not None:
        found = np.zeros(int(truth.max()) + 1, dtype=bool)
        found[[t for t, _ in pairs]] = True
        detected = np.zeros(int(truth.max()) + 1, dtype=bool)
        detected[present[t_idx]] = True
        codes = np.unique(classes[present])
        out["recall_by_class"] = {
            int(code): float(found[present][classes[present] == code].mean()) for code in codes}
        out["found_by_class"] = {
            int(code): float(detected[present][classes[present] == code].mean())
            for code in codes}
    return out


def ki67_tile_scores(result: PipelineCells, item: AnnotatedImage, *,
                     centroid_um: float = 3.0) -> dict:
    """Nuclei found by class and the Ki67 index of one annotated IHC tile.

    The index is given two ways: over every cell the pipeline found (what a lab reads), and
    over the cells matched to an annotated nucleus (``ki67_annotated_pct``): where an
    annotation leaves nuclei out, the first also scores the nuclei it left out; the second
    measures the detection bias between classes and the DAB call on what was annotated.

    Parameters
    ----------
    result
        From :func:`run_pipeline` with the Ki67 panel (``ki67_pos`` per cell).
    item
        The annotated tile; ``classes`` holds 1 for Ki67-positive nuclei, 0 for negative.
    centroid_um
        Centroid matching distance (um).

    Returns
    -------
    dict
        ``iou50`` and ``centroid`` scores, ``recall_negative`` / ``recall_positive`` (IoU
        0.5), ``found_negative`` / ``found_positive`` (centroid within ``centroid_um``), the
        truth index, both indices and their errors (points), and ``dab_call_agreement`` (share
        of matched nuclei whose call equals the annotation).
    """
    scores = score_instances(result, item.labels, classes=item.classes, centroid_um=centroid_um)
    present = np.unique(item.labels)
    present = present[present > 0]
    truth_index = 100.0 * float(np.mean(item.classes[present]))
    positive = (result.cells["ki67_pos"].to_numpy(dtype=bool) if len(result.cells)
                else np.zeros(0, dtype=bool))
    ours = 100.0 * float(positive.mean()) if len(positive) else 0.0
    matched = scores["centroid_matched"]
    truth_rows = np.fromiter(matched.keys(), dtype=np.int64, count=len(matched))
    cell_rows = np.fromiter(matched.values(), dtype=np.int64, count=len(matched))
    annotated = 100.0 * float(positive[cell_rows].mean()) if len(cell_rows) else 0.0
    agreement = (float(np.mean(positive[cell_rows] == item.classes[truth_rows].astype(bool)))
                 if len(cell_rows) else float("nan"))
    return {"iou50": scores["iou50"], "centroid": scores["centroid"],
            "recall_negative": scores["recall_by_class"].get(0, float("nan")),
            "recall_positive": scores["recall_by_class"].get(1, float("nan")),
            "found_negative": scores["found_by_class"].get(0, float("nan")),
            "found_positive": scores["found_by_class"].get(1, float("nan")),
            "ki67_truth_pct": truth_index, "ki67_pct": ours,
            "ki67_error_points": ours - truth_index,
            "ki67_annotated_pct": annotated,
            "ki67_annotated_error_points": annotated - truth_index,
            "dab_call_agreement": agreement}
