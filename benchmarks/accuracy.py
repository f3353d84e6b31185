"""Accuracy of the shipped models through ``hccbio slides run``, on every annotated set here.

Usage::

    python -m benchmarks.accuracy                      # all brightfield models, all sets
    python -m benchmarks.accuracy --models models/bf_nuclei --no-readme

Each annotated image is written as a TIFF with its pixel size in a manifest and segmented by
``hccbio slides run`` (:mod:`pathology.evaluation.harness`): the reader, the resampling to 0.5
um/px,
the tiling, the normalisation, the model, the measurements and the phenotypes are those of any
slide. Writes ``benchmarks/results/accuracy.json`` and the table between the ``accuracy``
markers in ``benchmarks/README.md``. Model cards cite these numbers.

Sets (none of them used to train or tune the model reported, unless the table says so):

* ``monuseg_val``: the three MoNuSeg test-set tiles every H&E model holds out (H&E, 40x).
* ``monuseg_masks``: the 17 MoNuSeg training tiles that have foreground masks but no nucleus
  outlines (no model trains on them): pixel precision, recall and Dice of the nucleus
  foreground.
* ``deepliif_test``: the two DeepLIIF Ki67 IHC test tiles with manual masks: nuclei, recall of
  Ki67-negative and Ki67-positive nuclei, and the Ki67 index against the truth.
* ``crc_coverage``: CRCHistoPhenotypes' 14 colorectal H&E images (20x): share of annotated
  nucleus centroids within 3 um of a detected nucleus (their annotation is not exhaustive, so
  no precision).
* ``crc_lymphocytes``: on the classifier's four held-out CRCHistoPhenotypes images, the H&E
  lymphocyte call (``lymphocyte_pos`` in ``cell_classes.parquet``) against the "inflammatory"
  annotation, and the classifier's per-class precision and recall.
* ``crc_stain``: the same held-out images re-rendered at three other stain strengths
  (hematoxylin and eosin optical densities scaled, ``STAIN_CHECK``; none is a strength the
  classifier trained with): the lymphocyte call per strength, a stain-batch robustness check.
* ``dsb2018_fluo`` (fluorescence model): the DSB2018 fluorescence images that
  ``models/train.py fluo`` holds out (every fifth), as single-channel slides at 0.5 um/px (the
  model works at DSB2018's native pixels, which state no size), through the ``nuclei_only``
  panel.
* ``speed``: nuclei per second and seconds per Mpx of the network plus non-maximum suppression
  on one 1024 px tile of real H&E at 0.5 um/px.

The table ends with issue 12's targets against the pipeline's default models (the ones
``hccbio slides run`` uses for ``he`` and ``ihc`` rows): measured, on what, met or not.

``--organs`` adds, for those default models, the figures per organ and stain that issue 27
asks for, measured by the same functions as their own benchmarks (one definition each):

* ``cell_classes`` (:mod:`benchmarks.cell_classes`): the H&E lymphocyte call on breast
  (BRCA-M2C) and colon (CRCHistoPhenotypes) report images, precision / recall / F1 and the
  share of tumour nuclei called lymphocytes, beside the other approaches compared;
* ``ihc_counterstain`` (:mod:`benchmarks.ihc_counterstain`): DAB-negative and DAB-positive
  recall and the Ki67 index error of the DeepLIIF test tiles at their own counterstain and
  re-rendered paler (hematoxylin x 0.7 to 0.2).

It then writes the cards of the default IHC and nucleus-class models from the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import ihc_counterstain  # noqa: E402
from benchmarks.reports import write_block  # noqa: E402
from hcccore.atomic import write_text  # noqa: E402
from pathology.evaluation.annotations import (  # noqa: E402
    AnnotatedImage,
    load_crchistophenotypes,
    load_deepliif,
    load_dsb2018,
    load_monuseg,
    shared_data_folder,
)
from pathology.evaluation.harness import (  # noqa: E402
    annotated_tile_config,
    detection_scores,
    ki67_tile_scores,
    match_centroids,
    rasterise_cells,
    run_pipeline,
    score_instances,
)
from pathology.segmentation.backends import int8_paths  # noqa: E402
from pathology.segmentation.nuclei import resolve_model_path  # noqa: E402

BRIGHTFIELD_MODELS = ("models/he_nuclei", "models/he_nuclei_fast", "models/bf_nuclei")
FLUORESCENCE_MODEL = "models/fluo_nuclei"
N_VAL_MONUSEG = 3  # as models/train.py: the last three MoNuSeg test-set tiles by name
CENTROID_UM = 3.0
LYMPHOCYTE_MATCH_UM = 4.0  # as models/train_lymphocytes.py
RESULT = ROOT / "benchmarks" / "results" / "accuracy.json"


def shared_data() -> Path:
    """:func:`pathology.evaluation.annotations.shared_data_folder`, its absence a plain exit
    message."""
    try:
        return shared_data_folder()
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None


def _pooled(per_image: list[dict], key: str) -> dict:
    counts = [r[key] for r in per_image]
    return detection_scores(sum(c["n_true"] for c in counts), sum(c["n_pred"] for c in counts),
                            sum(c["n_matched"] for c in counts))


def monuseg_val(root: Path, model: str, work: Path, precision: str = "float32") -> dict:
    """Nucleus F1 at IoU 0.5 and centroid F1 on the held-out MoNuSeg tiles (H&E)."""
    items = load_monuseg(root / "nuclei" / "monuseg")[-N_VAL_MONUSEG:]
    results = run_pipeline(items, work, modality="he",
                           config=annotated_tile_config(model, precision))
    per_image = []
    for item, result in zip(items, results, strict=True):
        scores = score_instances(result, item.labels, centroid_um=CENTROID_UM)
        per_image.append({"image": item.name, "iou50": scores["iou50"],
                          "centroid": scores["centroid"],
                          "lymphocyte_share": float(result.cells["lymphocyte_pos"].mean())})
    # No class truth here, but these are carcinoma-rich tiles: a classifier that calls most
    # of their nuclei lymphocytes is not specific.
    return {"images": [i.name for i in items], "iou50": _pooled(per_image, "iou50"),
            "centroid": _pooled(per_image, "centroid"), "per_image": per_image}


def monuseg_masks(root: Path, model: str, work: Path, precision: str = "float32") -> dict:
    """Foreground precision, recall and Dice on the MoNuSeg training tiles without outlines."""
    from skimage.io import imread

    folder = root / "nuclei" / "monuseg-train"
    outlined = {p.name.split(".")[0] for p in (folder / "annotations").glob("*.xml*")}
    items = []
    for path in sorted((folder / "images").glob("*.tif")):
        if path.stem in outlined:
            continue
        truth = imread(folder / "binary_masks" / f"{path.stem}.png")
        truth = (truth[..., 0] if truth.ndim == 3 else truth) > 0
        items.append(AnnotatedImage(path.stem, imread(path)[..., :3], truth.astype(np.int32),
                                    0.2527, "monuseg-train"))
    results = run_pipeline(items, work, modality="he",
                           config=annotated_tile_config(model, precision))
    tp = fp = fn = 0
    for item, result in zip(items, results, strict=True):
        predicted = rasterise_cells(result.cells, result.shape, result.mpp) > 0
        truth = item.labels > 0
        tp += int(np.sum(predicted & truth))
        fp += int(np.sum(predicted & ~truth))
        fn += int(np.sum(~predicted & truth))
    return {"images": [i.name for i in items], "pixel_precision": tp / max(tp + fp, 1),
            "pixel_recall": tp / max(tp + fn, 1), "dice": 2 * tp / max(2 * tp + fp + fn, 1)}


def deepliif_test(root: Path, model: str, work: Path, precision: str = "float32") -> dict:
    """Nuclei and the Ki67 index on the DeepLIIF IHC test tiles, through the Ki67 panel."""
    items = load_deepliif(root / "ihc" / "deepliif", "test")
    results = run_pipeline(items, work, modality="ihc", stain="Ki67",
                           config=annotated_tile_config(model, precision))
    per_image = [{"image": item.name, **ki67_tile_scores(result, item, centroid_um=CENTROID_UM)}
                 for item, result in zip(items, results, strict=True)]
    return {"images": [i.name for i in items], "iou50": _pooled(per_image, "iou50"),
            "centroid": _pooled(per_image, "centroid"), "per_image": per_image,
            "note": "34_3's manual mask leaves many DAB-positive nuclei unannotated "
                    "(tests/pathology/test_phenotypes.py), so its precision and its Ki67 index "
                    "over every cell found are against an incomplete truth; recall and the "
                    "index over the annotated nuclei are not affected."}


def dsb2018_fluo(root: Path, model: str, work: Path) -> dict:
    """Nucleus F1 of the fluorescence model on its held-out DSB2018 images."""
    items = load_dsb2018(root / "nuclei" / "dsb2018", "fluorescence")[::5]
    items = [AnnotatedImage(i.name, i.image, i.labels, 0.5, i.source) for i in items]
    config = {"segmentation": {"fluorescence_model": model}, "tissue": {"mode": "whole_image"}}
    results = run_pipeline(items, work, modality="mif", stain="nuclei_only", config=config)
    per_image = []
    for item, result in zip(items, results, strict=True):
        scores = score_instances(result, item.labels, centroid_um=CENTROID_UM)
        per_image.append({"image": item.name[:16], "iou50": scores["iou50"],
                          "centroid": scores["centroid"]})
    return {"images": [i.name for i in items], "iou50": _pooled(per_image, "iou50"),
            "centroid": _pooled(per_image, "centroid"), "per_image": per_image}


def crc(root: Path, model: str, work: Path, precision: str = "float32"
        ) -> tuple[dict, dict]:
    """Centroid coverage on all CRCHistoPhenotypes images, and lymphocyte calls on the
    classifier's held-out images."""
    from pathology.cells.lymphocytes import load_lymphocyte_model

    items = load_crchistophenotypes(root / "nuclei" / "crchistophenotypes")
    results = run_pipeline(items, work, modality="he",
                           config=annotated_tile_config(model, precision))
    classifier = load_lymphocyte_model("models/lymphocyte_classifier")
    held_out = set(classifier.meta.get("test_images", ()))
    annotated = covered = 0
    for item, result in zip(items, results, strict=True):
        xy, _ = item.centroids_um()
        t_idx, _ = match_centroids(xy, result.cells[["x_um", "y_um"]].to_numpy(), CENTROID_UM)
        annotated += len(xy)
        covered += len(t_idx)
    coverage = {"images": len(items), "annotated": annotated, "covered": covered,
                "recall": covered / max(annotated, 1)}
    pairs = [(i, r) for i, r in zip(items, results, strict=True) if i.name in held_out]
    return coverage, _lymphocyte_scores(pairs, classifier)


def _lymphocyte_scores(pairs: list, classifier) -> dict:
    """The lymphocyte call (``lymphocyte_pos``) and the most probable class of the pipeline's
    nuclei matched one-to-one to the annotated centroids, pooled over (image, cells) pairs."""
    truth_lym, called_lym, truth_cls, predicted_cls = [], [], [], []
    for item, result in pairs:
        xy, classes = item.centroids_um()
        cells = result.cells
        t_idx, p_idx = match_centroids(xy, cells[["x_um", "y_um"]].to_numpy(),
                                       LYMPHOCYTE_MATCH_UM)
        truth_lym.append(classes[t_idx] == "inflammatory")
        called_lym.append(cells["lymphocyte_pos"].to_numpy()[p_idx].astype(bool))
        truth_cls.append(classes[t_idx])
        predicted_cls.append(classifier.predict_class(cells.iloc[p_idx]))
    truth = np.concatenate(truth_lym) if truth_lym else np.zeros(0, bool)
    called = np.concatenate(called_lym) if called_lym else np.zeros(0, bool)
    tp = int(np.sum(truth & called))
    lymph = {"images": sorted(item.name for item, _ in pairs),
             "classifier_trained_on": classifier.meta.get("segmentation_model"),
             **detection_scores(int(truth.sum()), int(called.sum()), tp),
             "n_matched_nuclei": int(len(truth))}
    if predicted_cls:
        t, p = np.concatenate(truth_cls), np.concatenate(predicted_cls)
        lymph["per_class"] = {
            c: detection_scores(int(np.sum(t == c)), int(np.sum(p == c)),
                                int(np.sum((t == c) & (p == c))))
            for c in sorted(set(t))}
    return lymph


# (hematoxylin, eosin) factors of the stain-shift check: none of them is among the strengths
# models/train_lymphocytes.py trains with (its STAIN_SHIFTS).
STAIN_CHECK = ((0.8, 1.2), (1.8, 1.3), (2.5, 1.0))


def crc_stain(root: Path, model: str, work: Path, precision: str = "float32") -> dict:
    """The lymphocyte call on the classifier's held-out CRCHistoPhenotypes images re-rendered
    at other stain strengths (:func:`pathology.segmentation.stains.rescale_stains`), per
    strength."""
    from pathology.cells.lymphocytes import load_lymphocyte_model
    from pathology.evaluation.annotations import stain_shift_key

    classifier = load_lymphocyte_model("models/lymphocyte_classifier")
    held_out = set(classifier.meta.get("test_images", ()))
    items = [i for i in load_crchistophenotypes(root / "nuclei" / "crchistophenotypes")
             if i.name in held_out]
    shifted, renamed = [], []
    for h, e in STAIN_CHECK:
        for item in items:
            shifted.append(item.restained(h, e))
            renamed.append((stain_shift_key(h, e), item))
    results = run_pipeline(shifted, work, modality="he",
                           config=annotated_tile_config(model, precision))
    per_shift: dict[str, list] = {}
    for (key, item), result in zip(renamed, results, strict=True):
        per_shift.setdefault(key, []).append((item, result))
    scores = {key: _lymphocyte_scores(pairs, classifier) for key, pairs in per_shift.items()}
    return {"stain_shifts": [list(s) for s in STAIN_CHECK], "per_shift": scores,
            "min_f1": min(s["f1"] for s in scores.values()),
            "min_precision": min(s["precision"] for s in scores.values())}


def speed(model_spec: str, root: Path, repeats: int = 3, precision: str = "float32") -> dict:
    """Network + non-maximum suppression on one 1024 px tile of real H&E at 0.5 um/px."""
    from skimage.transform import rescale

    from pathology.segmentation.nuclei import (
        instances_from_prediction,
        load_model,
        normalization_range,
        predict_tiles,
    )

    tiles = [rescale(i.image, 0.2527 / 0.5, channel_axis=-1, preserve_range=True,
                     anti_aliasing=True).astype(np.uint8)[:512, :512]
             for i in load_monuseg(root / "nuclei" / "monuseg")[-4:]]
    tile = np.concatenate([np.concatenate(tiles[:2], axis=1),
                           np.concatenate(tiles[2:], axis=1)], axis=0)
    tile = np.pad(tile, ((0, 1024 - tile.shape[0]), (0, 1024 - tile.shape[1]), (0, 0)),
                  mode="reflect")
    model = load_model(model_spec, precision=precision)
    norm = normalization_range(model, tile)
    instances_from_prediction(model, predict_tiles(model, [tile], norm)[0])  # warm-up, tracing
    times, forward_times, n = [], [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        (prediction,) = predict_tiles(model, [tile], norm)
        forward_times.append(time.perf_counter() - started)
        n = len(instances_from_prediction(model, prediction).prob)
        times.append(time.perf_counter() - started)
    best, forward = min(times), min(forward_times)
    mpx = tile.shape[0] * tile.shape[1] / 1e6
    return {"tile_px": 1024, "nuclei": n, "seconds": best, "forward_seconds": forward,
            "s_per_mpx": best / mpx, "nuclei_per_s": n / best,
            "backend": model.backend, "precision": model.precision}


SETS = {"monuseg_val": monuseg_val, "monuseg_masks": monuseg_masks,
        "deepliif_test": deepliif_test, "crc": crc, "crc_stain": crc_stain, "speed": speed}


def checkpoint_chosen_on_validation(name: str) -> bool:
    """Whether a shipped model's early stopping used the MoNuSeg validation tiles (models
    trained before 2026-12-01 list them as ``val_images``; later ones have a tuning split of
    their own, ``tune_images``), so that its MoNuSeg validation figures are optimistic."""
    meta = ROOT / "models" / name.removesuffix("+int8") / "hccbio_model.json"
    return meta.is_file() and "val_images" in json.loads(meta.read_text())


def table(report: dict) -> str:
    """The Markdown table of a report (one row per model and set)."""
    lines = ["| model | MoNuSeg val F1 IoU0.5 (P / R) | MoNuSeg val centroid F1 | "
             "MoNuSeg masks Dice | DeepLIIF IHC F1 IoU0.5 | IHC recall Ki67- / Ki67+ | "
             "Ki67 index error (points, per tile) | CRC centroid recall | "
             "CRC lymphocyte F1 (P / R) | CRC lymphocyte F1 at 3 other stain strengths "
             "(lowest; lowest P) | share called lymphocytes, MoNuSeg val tiles | s per Mpx |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["models"].items():
        missing = [k for k in ("monuseg_val", "monuseg_masks", "deepliif_test", "crc_coverage",
                               "crc_lymphocytes") if k not in r]
        if missing:  # measured on some sets only (--sets): no row until all are measured
            lines.append(f"| {name} | not measured on {', '.join(missing)} |" + " |" * 10)
            continue
        m, c, d = r["monuseg_val"], r["monuseg_masks"], r["deepliif_test"]
        neg = np.mean([p["recall_negative"] for p in d["per_image"]])
        pos = np.mean([p["recall_positive"] for p in d["per_image"]])
        errors = ", ".join(f"{p['image']} {p['ki67_error_points']:+.1f}" for p in d["per_image"])
        lym = r["crc_lymphocytes"]
        stain = (f"{r['crc_stain']['min_f1']:.3f} ({r['crc_stain']['min_precision']:.2f})"
                 if "crc_stain" in r else "not measured")
        shares = " / ".join(f"{p['lymphocyte_share']:.2f}" for p in m["per_image"]
                            if "lymphocyte_share" in p) or "not measured"
        mark = " (a)" if checkpoint_chosen_on_validation(name) else ""
        lines.append(
            f"| {name}{mark} | {m['iou50']['f1']:.3f} ({m['iou50']['precision']:.2f} / "
            f"{m['iou50']['recall']:.2f}) | {m['centroid']['f1']:.3f} | {c['dice']:.3f} | "
            f"{d['iou50']['f1']:.3f} | {neg:.2f} / {pos:.2f} | {errors} | "
            f"{r['crc_coverage']['recall']:.3f} | {lym['f1']:.3f} ({lym['precision']:.2f} / "
            f"{lym['recall']:.2f}) | {stain} | {shares} | "
            + (f"{r['speed']['s_per_mpx']:.2f} |" if "speed" in r else "not measured |"))
    if any(checkpoint_chosen_on_validation(name) for name in report["models"]):
        lines += ["", "(a) Checkpoint chosen by the loss on the MoNuSeg validation tiles (trained "
                  "before tuning splits were kept apart): its MoNuSeg validation figures are "
                  "optimistic."]
    lines += target_lines(report)
    lines += organ_lines(report)
    lines += int8_lines(report)
    for name, r in report.get("fluorescence", {}).items():
        d = r["dsb2018_fluo"]
        lines += ["", "| fluorescence model | DSB2018 held-out F1 IoU0.5 (P / R) | centroid F1 |",
                  "|---|---|---|",
                  f"| {name} | {d['iou50']['f1']:.3f} ({d['iou50']['precision']:.2f} / "
                  f"{d['iou50']['recall']:.2f}) | {d['centroid']['f1']:.3f} |"]
    return "\n".join(lines)


def organ_lines(report: dict) -> list[str]:
    """Issue 27's targets per organ and stain (``report["organs"]``, from ``--organs``)."""
    from benchmarks import cell_classes

    organs = report.get("organs", {})
    lines: list[str] = []
    if "cell_classes" in organs:
        r = organs["cell_classes"]
        shipped = r["approaches"]["patch_cnn"]
        lines += ["", "Per organ (issue 27), H&E lymphocyte call of the default nucleus-class "
                  f"network `{r['model']}` on report images (never trained or tuned on), "
                  f"measured {r['date'][:10]}:", "",
                  "| target | organ (report images) | measured | |", "|---|---|---|---|"]
        for organ, sc in shipped.items():
            n = len(r["images"][organ]["report"])
            lines.append(f"| lymphocyte F1 >= {cell_classes.TARGET_F1} | {organ} ({n}) | "
                         f"{sc['f1']:.3f} (P {sc['precision']:.3f} / R {sc['recall']:.3f}) | "
                         f"{_verdict(sc['f1'] >= cell_classes.TARGET_F1)} |")
            share = sc["tumour_called_lymphocyte"]
            lines.append(f"| tumour nuclei called lymphocytes <= "
                         f"{cell_classes.TARGET_TUMOUR_SHARE:.0%} | {organ} ({n}) | "
                         f"{share:.1%} | "
                         f"{_verdict(share <= cell_classes.TARGET_TUMOUR_SHARE)} |")
        lines += ["", "Approaches compared:", "", cell_classes.table(r)]
    if "ihc_counterstain" in organs:
        r = organs["ihc_counterstain"]
        lines += ["", f"Per counterstain strength (issue 27), IHC nuclei of `{r['model']}` on the "
                  f"DeepLIIF Ki67 test tiles ({', '.join(r['tiles'])}; never "
                  f"trained or tuned on), measured {r['date'][:10]}:", "",
                  "| hematoxylin x | DAB- found (lowest tile) | DAB+ found (lowest tile) | "
                  f"found >= {TARGET_IHC_RECALL} | DAB- / DAB+ recall at IoU 0.5 (lowest tile) "
                  "| Ki67 index error, median over tiles: every cell / annotated nuclei "
                  f"(points) | within {TARGET_KI67_POINTS:g} (annotated) |",
                  "|---|---|---|---|---|---|---|"]
        for factor in sorted({row["hematoxylin_factor"] for row in r["rows"]}, reverse=True):
            rows = [row for row in r["rows"] if row["hematoxylin_factor"] == factor]
            found_neg = min(row["found_negative"] for row in rows)
            found_pos = min(row["found_positive"] for row in rows)
            negative = min(row["recall_negative"] for row in rows)
            positive = min(row["recall_positive"] for row in rows)
            error = float(np.median([abs(row["ki67_error_points"]) for row in rows]))
            annotated = float(np.median([abs(row["ki67_annotated_error_points"])
                                         for row in rows]))
            lines.append(f"| {factor:g} | {found_neg:.2f} | {found_pos:.2f} | "
                         f"{_verdict(min(found_neg, found_pos) >= TARGET_IHC_RECALL)} | "
                         f"{negative:.2f} / {positive:.2f} | {error:.1f} / {annotated:.1f} | "
                         f"{_verdict(annotated <= TARGET_KI67_POINTS)} |")
        lines += ["", "Found: an annotated nucleus has a cell's centroid within "
                  f"{CENTROID_UM:g} um (what the count and the index depend on); recall at IoU "
                  "0.5 also asks for its outline. The index over annotated nuclei uses the cells "
                  "matched to an annotated nucleus (34_3's annotation leaves DAB-positive nuclei "
                  "out)."]
        lines += ["", ihc_counterstain.table(r)]
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def measure_organs(root: Path, work: Path) -> dict:
    """Issue 27's per-organ figures for the pipeline's default models (see module doc)."""
    from benchmarks import cell_classes
    from pathology.config import PhenotypesSection, SegmentationSection

    lymphocyte_model = PhenotypesSection().lymphocyte_model
    ihc_model = SegmentationSection().ihc_model
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    classes = cell_classes.measure(root, lymphocyte_model, work / "cell_classes")
    classes.update({"model": lymphocyte_model, "match_um": cell_classes.MATCH_UM, "date": date})
    counterstain = ihc_counterstain.measure(root, ihc_model, work / "ihc_counterstain")
    counterstain["date"] = date
    return {"cell_classes": classes, "ihc_counterstain": counterstain}


def write_organ_cards(report: dict) -> None:
    """Write the default IHC and nucleus-class models' cards from the report."""
    from benchmarks import cell_classes

    sys.path.insert(0, str(ROOT / "models"))
    from card import render as render_card

    organs = report.get("organs", {})
    if "cell_classes" in organs:
        folder = ROOT / organs["cell_classes"]["model"]
        write_text(folder / "MODEL_CARD.md", cell_classes.model_card(organs["cell_classes"],
                                                                     folder))
    if "ihc_counterstain" in organs:
        folder = ROOT / organs["ihc_counterstain"]["model"]
        write_text(folder / "MODEL_CARD.md", render_card(folder))


# issue 12's targets, on images never used to train or tune
TARGET_HE_F1 = 0.85
TARGET_IHC_RECALL = ihc_counterstain.TARGET_IHC_RECALL
TARGET_KI67_POINTS = 5.0
TARGET_LYMPHOCYTE_F1 = 0.7


def target_lines(report: dict) -> list[str]:
    """Issue 12's targets against the pipeline's default models (what `hccbio slides run`
    uses for `he` and `ihc` rows): the figure measured, on what, and whether it is met."""
    from pathology.config import SegmentationSection

    defaults = SegmentationSection()
    he_name, ihc_name = Path(defaults.brightfield_model).name, Path(defaults.ihc_model).name
    he, ihc = report["models"].get(he_name, {}), report["models"].get(ihc_name, {})
    if not all(k in he for k in ("monuseg_val", "crc_lymphocytes", "speed")) or not all(
            k in ihc for k in ("deepliif_test", "speed")):
        return []

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    tiles = ihc["deepliif_test"]["per_image"]
    recall = min(min(t["recall_negative"], t["recall_positive"]) for t in tiles)
    recalls = "; ".join(f"{t['image']} {t['recall_negative']:.2f} / {t['recall_positive']:.2f}"
                        for t in tiles)
    found = min(min(t["found_negative"], t["found_positive"]) for t in tiles)
    founds = "; ".join(f"{t['image']} {t['found_negative']:.2f} / {t['found_positive']:.2f}"
                       for t in tiles)
    error = max(abs(t["ki67_error_points"]) for t in tiles)
    errors = ", ".join(f"{t['image']} {t['ki67_error_points']:+.1f}" for t in tiles)
    annotated = max(abs(t["ki67_annotated_error_points"]) for t in tiles)
    annotated_errors = ", ".join(f"{t['image']} {t['ki67_annotated_error_points']:+.1f}"
                                 for t in tiles)
    f1 = he["monuseg_val"]["iou50"]["f1"]
    lymphocytes = he["crc_lymphocytes"]["f1"]
    lines = ["", "| target (issue 12) | default model | measured on | measured | |",
             "|---|---|---|---|---|",
             f"| H&E nucleus F1 >= {TARGET_HE_F1} at IoU 0.5 | {he_name} | MoNuSeg validation "
             f"tiles (3) | {f1:.3f} | {verdict(f1 >= TARGET_HE_F1)} |",
             f"| IHC: >= {TARGET_IHC_RECALL} of Ki67- and of Ki67+ nuclei found (centroid "
             f"within {CENTROID_UM:g} um), each tile | {ihc_name} | DeepLIIF test tiles (2) | "
             f"{founds} | {verdict(found >= TARGET_IHC_RECALL)} |",
             f"| IHC: the same at IoU 0.5 (outline too) | {ihc_name} | DeepLIIF test tiles (2) "
             f"| {recalls} | {verdict(recall >= TARGET_IHC_RECALL)} |",
             f"| Ki67 index within {TARGET_KI67_POINTS:g} points, each tile, every cell found "
             f"| {ihc_name} | DeepLIIF test tiles (2) | {errors} | "
             f"{verdict(error <= TARGET_KI67_POINTS)} |",
             f"| the same over the annotated nuclei | {ihc_name} | DeepLIIF test tiles (2) | "
             f"{annotated_errors} | {verdict(annotated <= TARGET_KI67_POINTS)} |",
             f"| H&E lymphocyte F1 >= {TARGET_LYMPHOCYTE_F1} | {he_name} | CRCHistoPhenotypes "
             f"held-out images (4) | {lymphocytes:.3f} | "
             f"{verdict(lymphocytes >= TARGET_LYMPHOCYTE_F1)} |",
             f"| IHC model no slower per Mpx than {he_name} | {ihc_name} | one 1024 px tile | "
             f"{ihc['speed']['s_per_mpx']:.2f} s against {he['speed']['s_per_mpx']:.2f} s | "
             f"{verdict(ihc['speed']['s_per_mpx'] <= he['speed']['s_per_mpx'])} |"]
    if ihc["deepliif_test"].get("note"):
        lines += ["", f"DeepLIIF: {ihc['deepliif_test']['note']}"]
    return lines


INT8_MAX_LOSS = 0.01  # issue 17: int8 only if no set loses more F1 than this


def int8_changes(float32: dict, int8: dict) -> dict[str, float]:
    """Each set's figure with the int8 network minus float32's (F1, Dice, recall), and the
    speed-up (float32 s per Mpx / int8's)."""
    def figures(r: dict) -> dict[str, float]:
        return {"monuseg_val_f1": r["monuseg_val"]["iou50"]["f1"],
                "monuseg_masks_dice": r["monuseg_masks"]["dice"],
                "deepliif_f1": r["deepliif_test"]["iou50"]["f1"],
                "crc_centroid_recall": r["crc_coverage"]["recall"],
                "crc_lymphocyte_f1": r["crc_lymphocytes"]["f1"]}

    a, b = figures(float32), figures(int8)
    changes = {key: round(b[key] - a[key], 4) for key in a}
    if "speed" in float32 and "speed" in int8:
        changes["speedup"] = round(float32["speed"]["s_per_mpx"] / int8["speed"]["s_per_mpx"], 2)
    return changes


def int8_lines(report: dict) -> list[str]:
    """A table of int8 against float32 for every model measured both ways."""
    pairs = [(name, name.removesuffix("+int8")) for name in report["models"]
             if name.endswith("+int8") and name.removesuffix("+int8") in report["models"]]
    if not pairs:
        return []
    lines = ["", "| int8 against float32 | MoNuSeg val F1 | MoNuSeg masks Dice | DeepLIIF F1 | "
             "CRC centroid recall | CRC lymphocyte F1 | speed-up | largest loss |",
             "|---|---|---|---|---|---|---|---|"]
    for int8_name, name in pairs:
        c = int8_changes(report["models"][name], report["models"][int8_name])
        worst = -min(v for k, v in c.items() if k != "speedup")
        verdict = "within" if worst <= INT8_MAX_LOSS else "beyond"
        lines.append(f"| {name} | {c['monuseg_val_f1']:+.4f} | {c['monuseg_masks_dice']:+.4f} | "
                     f"{c['deepliif_f1']:+.4f} | {c['crc_centroid_recall']:+.4f} | "
                     f"{c['crc_lymphocyte_f1']:+.4f} | "
                     + (f"{c['speedup']:.2f}x | " if "speedup" in c else "not measured | ") +
                     f"{max(worst, 0):.4f} ({verdict} {INT8_MAX_LOSS}) |")
    return lines


def update_readme(report: dict) -> None:
    """Replace this report's table in benchmarks/README.md."""
    write_block("accuracy", heading="Accuracy",
                date=report["date"], body=table(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None,
                        help="brightfield model folders (default: every shipped one; none "
                        "with --fluorescence measures that model alone)")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--fluorescence", action="store_true",
                        help="also measure the fluorescence model on DSB2018")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS),
                        help="measure only these sets; the others keep their previous figures")
    parser.add_argument("--precision", choices=["float32", "int8"], default="float32",
                        help="int8: the models' quantised networks (models/quantize.py), "
                        "reported as '<model>+int8' beside the float32 rows")
    parser.add_argument("--organs", action="store_true",
                        help="also measure the default models per organ and counterstain "
                        "(issue 27: benchmarks.cell_classes and benchmarks.ihc_counterstain) "
                        "and write their model cards from the report")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not rewrite the table in benchmarks/README.md (nor the cards)")
    args = parser.parse_args(argv)
    root = shared_data()
    models = (args.models if args.models is not None else
              [m for m in BRIGHTFIELD_MODELS if (ROOT / m / "config.json").is_file()])
    for model in models:  # fail before hours of measuring, naming the folder
        folder = resolve_model_path(model)
        if folder is None:
            parser.error(f"{model}: not a model folder (no config.json); the shipped ones are "
                         + ", ".join(BRIGHTFIELD_MODELS))
        if args.precision == "int8" and not int8_paths(folder)[0].is_file():
            parser.error(f"{model}: no int8 network; make it with "
                         f"`python models/quantize.py {model}`")
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "centroid_um": CENTROID_UM, "models": dict(previous.get("models", {})),
              # every write keeps what this run does not measure again
              "fluorescence": dict(previous.get("fluorescence", {})),
              "organs": dict(previous.get("organs", {}))}
    for model in models:
        started = time.perf_counter()
        key = Path(model).name + ("+int8" if args.precision == "int8" else "")
        result = dict(report["models"].get(key, {}))
        with tempfile.TemporaryDirectory(prefix="hccbio-accuracy-") as tmp:
            work = Path(tmp)
            for name in args.sets:
                if name == "crc":
                    result["crc_coverage"], result["crc_lymphocytes"] = crc(
                        root, model, work / name, args.precision)
                elif name == "speed":
                    result["speed"] = speed(model, root, precision=args.precision)
                else:
                    result[name] = SETS[name](root, model, work / name, args.precision)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["measured"] = report["date"]
        report["models"][key] = result
        write_text(args.out, json.dumps(report, indent=2, default=float) + "\n")
        print(f"{model}: done in {result['seconds']} s", flush=True)
    if args.fluorescence:
        with tempfile.TemporaryDirectory(prefix="hccbio-accuracy-") as tmp:
            report["fluorescence"][Path(FLUORESCENCE_MODEL).name] = {
                "dsb2018_fluo": dsb2018_fluo(root, FLUORESCENCE_MODEL, Path(tmp)),
                "measured": report["date"]}
        write_text(args.out, json.dumps(report, indent=2, default=float) + "\n")
    if args.organs:
        with tempfile.TemporaryDirectory(prefix="hccbio-accuracy-") as tmp:
            report["organs"] = measure_organs(root, Path(tmp))
        write_text(args.out, json.dumps(report, indent=2, default=float) + "\n")
    print(table(report))
    if not args.no_readme:
        update_readme(report)
        if args.organs:
            write_organ_cards(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
