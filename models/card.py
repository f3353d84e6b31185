"""Write a model's MODEL_CARD.md from the facts that training recorded in hccbio_model.json.

Usage: ``python models/card.py models/he_nuclei``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA = {
    "he": ("MoNuSeg 2018 test-set tiles (Kumar et al., IEEE TMI 2017), 1000x1000 H&E at 40x "
           "(0.2527 um/px) rescaled to 0.5 um/px, licence CC BY-NC-SA 4.0; Data Science Bowl "
           "2018 stage-1 histology images (Caicedo et al., Nat Methods 2019), licence CC0, "
           "rescaled so that their median nucleus matches MoNuSeg's at 0.5 um/px (DSB2018 "
           "states no pixel size) and padded with white glass to the patch size."),
    "fluo": ("Data Science Bowl 2018 stage-1 fluorescence images (Caicedo et al., Nat Methods "
             "2019), licence CC0, at their native resolution (no pixel size published; nuclei "
             "of about 10-30 px across)."),
}
MONUSEG_TRAIN = (
    " Also: the MoNuSeg 2018 training-set tiles that have nucleus outlines (13 of 30, several "
    "organs, CC BY-NC-SA 4.0; the last three by name are the tuning split for early stopping and "
    "thresholds)")
MONUSEG_TRAIN_NOTE = MONUSEG_TRAIN + "."
DATA["bf"] = (
    DATA["he"] + MONUSEG_TRAIN + ", and the two DeepLIIF Ki67 IHC training tiles (Ghahremani "
    "et al., Nat Mach Intell 2022; 40x, all nuclei annotated; see their SOURCE.txt for the "
    "licence), rescaled from 0.25 to 0.5 um/px "
    "and repeated {ihc_repeats} times; their masks come from the co-registered "
    "immunofluorescence and are moved onto the IHC panel they annotate (6 and 8 px off at 40x; "
    "`pathology.evaluation.annotations.mask_offset`, since stage 2). Three in four of their "
    "patches are re-rendered at another counterstain (x 0.15-1.2, the tile's own hematoxylin "
    "vector) and DAB strength (x 0.3-2.5; `models/train.py:restain_ihc`). Half of the H&E "
    "patches are re-rendered as hematoxylin + DAB (`models/train.py:render_hdab`: the H&E's "
    "hematoxylin, x 0.15-1.1, with DAB on a random share of the annotated nuclei or around "
    "them).")
USE = {
    "bf": "Nuclei in brightfield slides at 0.5 um/px: H&E, and IHC with a hematoxylin "
          "counterstain however pale, DAB-positive or not.",
    "he": "Nuclei in H&E and IHC (hematoxylin counterstain) brightfield slides at 0.5 um/px.",
    "fluo": "Nuclei in the nuclear channel (DAPI, Hoechst, dsDNA, H3) of fluorescence and "
            "multiplex images. Trained at DSB2018's native pixel size (unpublished; nuclei "
            "about 10-30 px across), not at a known um/px; the pipeline runs it at the working "
            "resolution (0.5 um/px), where typical nuclei (5-15 um) are of that size in pixels, "
            "so the scale match is approximate.",
}


ACCURACY_REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "accuracy.json"


def accuracy_lines(name: str, report_path: Path = ACCURACY_REPORT, *,
                   checkpoint_on_validation: bool = False) -> list[str]:
    """The card's section with the model's row of ``python -m benchmarks.accuracy``
    (``checkpoint_on_validation``: the checkpoint was chosen on the MoNuSeg validation
    tiles, which the card then says)."""
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    r = report.get("models", {}).get(name)
    if r is None:
        return ["## Accuracy through `hccbio slides run`", "",
                "Not yet measured: run `python -m benchmarks.accuracy`.", ""]
    m, d = r["monuseg_val"], r["deepliif_test"]
    tiles = "; ".join(
        f"{t['image']}: Ki67- recall {t['recall_negative']:.3f}, Ki67+ recall "
        f"{t['recall_positive']:.3f}"
        + (f" (found within 3 um: {t['found_negative']:.3f} / {t['found_positive']:.3f})"
           if "found_negative" in t else "")
        + f", Ki67 index {t['ki67_pct']:.1f} % (truth {t['ki67_truth_pct']:.1f} %"
        + (f"; over the annotated nuclei {t['ki67_annotated_pct']:.1f} %"
           if "ki67_annotated_pct" in t else "") + ")" for t in d["per_image"])
    lym = r["crc_lymphocytes"]
    return [
        "## Accuracy through `hccbio slides run`", "",
        f"From `benchmarks/results/accuracy.json` ({r.get('measured', report['date'])[:10]}; "
        "`python -m benchmarks.accuracy` writes it by running the annotated tiles through the "
        "pipeline: reader, resampling to 0.5 um/px, tiling, normalisation, this model, "
        "measurements, phenotypes). " + (
            "None of these images was used to train this model or tune its thresholds, but its "
            "checkpoint was chosen by the loss on the three MoNuSeg validation tiles."
            if checkpoint_on_validation else
            "None of these images was used to train or tune this model."),
        "",
        "| set | measure | value |", "|---|---|---|",
        f"| MoNuSeg validation (3 H&E tiles) | F1 at IoU 0.5 | {m['iou50']['f1']:.3f} |",
        f"| | precision / recall | {m['iou50']['precision']:.3f} / "
        f"{m['iou50']['recall']:.3f} |",
        f"| | centroid F1 (3 um) | {m['centroid']['f1']:.3f} |",
        f"| MoNuSeg training tiles without outlines (17) | foreground Dice | "
        f"{r['monuseg_masks']['dice']:.3f} |",
        f"| DeepLIIF Ki67 IHC test tiles (2) | F1 at IoU 0.5 | {d['iou50']['f1']:.3f} |",
        f"| | centroid recall (3 um) | {d['centroid']['recall']:.3f} |",
        f"| CRCHistoPhenotypes (14 colorectal H&E) | centroid recall (3 um) | "
        f"{r['crc_coverage']['recall']:.3f} |",
        f"| CRCHistoPhenotypes held-out (4) | lymphocyte F1 (precision / recall) | "
        f"{lym['f1']:.3f} ({lym['precision']:.3f} / {lym['recall']:.3f}) |",
        f"| speed | s per Mpx (network + NMS, 2 CPU cores, "
        f"{r['speed'].get('backend', 'tensorflow')}) | {r['speed']['s_per_mpx']:.2f} |",
        "", f"DeepLIIF per tile: {tiles}.", "",
        *_int8_lines(name, report),
    ]


def _int8_lines(name: str, report: dict) -> list[str]:
    """What the accuracy report says of the model's int8 network (``int8/``), if measured."""
    int8 = report.get("models", {}).get(f"{name}+int8")
    if int8 is None:
        return []
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.accuracy import INT8_MAX_LOSS, int8_changes

    changes = int8_changes(report["models"][name], int8)
    losses = {k: -v for k, v in changes.items() if k != "speedup"}
    worst = max(losses, key=losses.get)
    verdict = ("within the 0.01 allowed on every set: usable" if losses[worst] <= INT8_MAX_LOSS
               else "more than the 0.01 allowed: not recommended")
    speed = (f", {changes['speedup']:.2f}x the float32 speed in that run" if "speedup" in changes
             else "")
    return [f"**int8.** `int8/` holds this network quantised after training "
            "(`python models/quantize.py`, calibrated on training tiles; run with "
            f"`segmentation.precision: int8`). Through the same report its largest loss is "
            f"{max(losses[worst], 0):.4f} ({worst}), {verdict}{speed}.", ""]


def render(folder: Path) -> str:
    """The model card text for a trained model folder."""
    meta = json.loads((folder / "hccbio_model.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    kind = meta["kind"]
    if kind == "bf":
        return _render_brightfield(folder, meta, config)
    # Models trained since 2026-12-01 are tuned on a split of their own ("tune_images") and
    # reported on other images; earlier ones were tuned on their validation images.
    tuned = "tune_images" in meta
    metrics = meta["metrics_tune"] if tuned else meta["metrics_val"]
    baseline = meta["watershed_tune"] if tuned else meta["watershed_val"]
    split_lines = ([
        f"- Tuning images ({len(meta['tune_images'])}; early stopping and thresholds): "
        + ", ".join(f"`{n[:24]}`" for n in meta["tune_images"]),
        f"- Reporting images ({len(meta['report_images'])}; never used to train or tune): "
        + ", ".join(f"`{n[:24]}`" for n in meta["report_images"])] if tuned else [
        f"- Validation images ({len(meta['val_images'])}, never used for training): "
        + ", ".join(f"`{n[:24]}`" for n in meta["val_images"])])
    split = "tuning split" if tuned else "validation images"
    norm = meta["normalization"]
    norm_text = (f"fixed range {norm['low']:g}-{norm['high']:g} (uint8 / 255): the same input "
                 "gives the same output wherever a tile is cut" if norm["method"] == "fixed"
                 else f"percentiles {norm['low']:g}-{norm['high']:g} (per image in training, "
                 "once per slide in the pipeline)")
    architecture = "".join(
        f" --{flag} {config[key]}" for flag, key, default in
        (("filters", "unet_n_filter_base", 32), ("head", "net_conv_after_unet", 128))
        if config[key] != default)
    lines = [
        f"# Model card: `{folder.name}` (StarDist 2D, {kind})", "",
        f"**Intended use.** {USE[kind]} Research use; not a medical device.", "",
        *([f"**Variant.** {meta['variant']}", ""] if meta.get("variant") else []),
        "## Data", "", DATA[kind] + (MONUSEG_TRAIN_NOTE if tuned else ""), "",
        f"- Training images ({len(meta['train_images'])}): " + ", ".join(
            f"`{n[:16]}`" for n in meta["train_images"]),
        *split_lines,
        "- The data stay outside the repository (`$HCCBIO_SHARED_DATA`, default "
        "`../shared/data`).", "",
        "## Licence", "",
        "Weights: BSD-3-Clause like the project code. Training data licences above apply to "
        "derived use; MoNuSeg is CC BY-NC-SA 4.0 (non-commercial), so the brightfield weights "
        "inherit that restriction in practice." if kind == "he" else
        "Weights: BSD-3-Clause like the project code; training data CC0.", "",
        "## Settings", "",
        f"- StarDist {meta['versions']['stardist']}, TensorFlow {meta['versions']['tensorflow']}"
        f" (CPU), {config['n_rays']} rays, grid {tuple(config['grid'])}, U-Net depth "
        f"{config['unet_n_depth']}, {config['unet_n_filter_base']} base filters, "
        f"{config['net_conv_after_unet']} filters after the U-Net, "
        f"{config['n_channel_in']} input channel(s)",
        f"- {meta['steps']} steps, batch {meta['batch']}, patch {meta['patch']} px, "
        f"learning rate {config['train_learning_rate']}, seed {meta['seed']}, "
        f"{meta['train_seconds'] / 60:.0f} min on 2 CPU cores",
        "- Augmentation: flips, 90-degree rotations, "
        + ("stain jitter in optical density (per-channel scale 0.8-1.2, shift +-0.05), "
           if kind == "he" else "intensity scale 0.7-1.3 and shift +-0.1, ")
        + "Gaussian noise (sd 0.02)",
        f"- Input normalisation: {norm_text}",
        f"- Resolution: {meta['mpp']} um/px" if meta["mpp"] else
        "- Resolution: native DSB2018 pixels (no pixel size published)",
        (f"- Thresholds (StarDist's optimize_thresholds on MoNuSeg training-set tiles "
         f"{', '.join(f'`{n[:23]}`' for n in meta['threshold_tune_images'])}, not the validation "
         f"images): prob {meta['thresholds']['prob']:.3f}, nms {meta['thresholds']['nms']:.2f} "
         f"(until 2026-12-01 tuned on the validation images: prob "
         f"{meta['thresholds_before']['prob']:.3f}, nms {meta['thresholds_before']['nms']:.2f})"
         if "threshold_tune_images" in meta else
         f"- Thresholds (tuned on the {split} by StarDist's optimize_thresholds): "
         f"prob {meta['thresholds']['prob']:.3f}, nms {meta['thresholds']['nms']:.2f}"), "",
        f"## Measured accuracy ({split}, IoU 0.5)", "",
        "| method | AP (TP/(TP+FP+FN)) | F1 | precision | recall |",
        "|---|---|---|---|---|",
        f"| this model | {metrics['ap_iou50']:.3f} | {metrics['f1_iou50']:.3f} | "
        f"{metrics['precision']:.3f} | {metrics['recall']:.3f} |",
        f"| watershed baseline (`pathology.segmentation.watershed`) | {baseline['ap_iou50']:.3f} | "
        f"{baseline['f1_iou50']:.3f} | | |", "",
        f"{metrics['n_true']} annotated nuclei, {metrics['n_pred']} predicted. "
        "`tests/pathology/test_models.py` recomputes these numbers from the shipped weights. " + (
            "These are the images the thresholds and the checkpoint were chosen on; the "
            "reporting images' figures are in the next section." if tuned else
            "The images never entered training and the thresholds were tuned on other images, "
            "but the checkpoint (weights_best.h5) was chosen by the loss on these images, so "
            "the figures are slightly optimistic." if "threshold_tune_images" in meta else
            "The thresholds were tuned on the same validation images, so the figures are "
            "slightly optimistic; the images themselves never entered training."), "",
        *(accuracy_lines(folder.name, checkpoint_on_validation=not tuned)
          if kind == "he" else []),
        "## Limitations", "",
        ("Few training images and no liver tissue; " if tuned else
         "Few training images (no MoNuSeg training split is available here, no liver tissue); ")
        + "expect lower accuracy on unusual stains, heavy pigment or out-of-focus areas. Retrain "
        "with `python models/train.py` when annotated HCC tiles are available.", "",
        "## Reproduce", "",
        "```", *_stage_commands(folder.name, kind, meta, architecture),
        f"python models/card.py models/{folder.name}", "```", "", *_stage_notes(meta),
    ]
    return "\n".join(lines)


def _target_lines(name: str, report_path: Path = ACCURACY_REPORT) -> list[str]:
    """What the accuracy report says of the brightfield targets (issues 12 and 27), met or
    not, with the recall per counterstain strength when this is the default IHC model."""
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    r = report.get("models", {}).get(name)
    if r is None:
        return []
    tiles = r["deepliif_test"]["per_image"]
    worst_negative = min(t["recall_negative"] for t in tiles)
    worst_positive = min(t["recall_positive"] for t in tiles)
    f1 = r["monuseg_val"]["iou50"]["f1"]
    found = ""
    if all("found_negative" in t for t in tiles):
        lowest = min(min(t["found_negative"], t["found_positive"]) for t in tiles)
        error = max(abs(t["ki67_annotated_error_points"]) for t in tiles)
        found = (f"; found (centroid within 3 um) {'met' if lowest >= 0.85 else 'not met'}: "
                 f"lowest {lowest:.2f}; Ki67 index within 5 points over the annotated nuclei "
                 f"({'met' if error <= 5 else 'not met'}: largest error {error:.1f})")
    lines = [
        "Targets on the reporting images: H&E F1 >= 0.85 "
        f"({'met' if f1 >= 0.85 else 'not met'}: {f1:.3f}); recall >= 0.85 of Ki67-negative "
        f"and of Ki67-positive nuclei on each DeepLIIF tile: at IoU 0.5 "
        f"{'met' if min(worst_negative, worst_positive) >= 0.85 else 'not met'}: lowest "
        f"{worst_negative:.2f} and {worst_positive:.2f}{found}.", ""]
    counterstain = report.get("organs", {}).get("ihc_counterstain")
    if counterstain is not None and Path(counterstain["model"]).name == name:
        lines += [
            "On a paler counterstain (the same tiles re-rendered with less hematoxylin, "
            "`python -m benchmarks.accuracy --organs`, "
            f"{counterstain['date'][:10]}):", "",
            "| hematoxylin x | DAB- found per tile | DAB+ found per tile | DAB- recall (IoU "
            "0.5) per tile | DAB+ recall (IoU 0.5) per tile | Ki67 index error per tile, "
            "every cell (points) | the same, annotated nuclei |", "|---|---|---|---|---|---|---|"]
        for factor in sorted({row["hematoxylin_factor"] for row in counterstain["rows"]},
                             reverse=True):
            rows = [row for row in counterstain["rows"] if row["hematoxylin_factor"] == factor]
            cells = [" / ".join(f"{row[key]:{spec}}" for row in rows)
                     for key, spec in (("found_negative", ".2f"), ("found_positive", ".2f"),
                                       ("recall_negative", ".2f"), ("recall_positive", ".2f"),
                                       ("ki67_error_points", "+.1f"),
                                       ("ki67_annotated_error_points", "+.1f"))]
            lines.append(f"| {factor:g} | " + " | ".join(cells) + " |")
        lines += ["", "Tiles in the order " + ", ".join(counterstain["tiles"]) + ". QC flags "
                  "slides whose counterstain is too pale (`qc.counterstain_min_contrast`, "
                  "docs/phenotypes.md).", ""]
    return lines


def _render_brightfield(folder: Path, meta: dict, config: dict) -> str:
    """Card of a ``bf`` model: tuned on its own split, reported by the accuracy benchmark."""
    tune = meta["metrics_tune"]
    lines = [
        f"# Model card: `{folder.name}` (StarDist 2D, brightfield H&E + IHC)", "",
        f"**Intended use.** {USE['bf']} Research use; not a medical device. The default "
        "model of `hccbio slides run` for `he` and `ihc` rows.", "",
        "## Data", "", DATA["bf"].format(ihc_repeats=meta.get("ihc_repeats", 3)), "",
        f"- Training images ({len(meta['train_images'])}): " + ", ".join(
            f"`{n[:16]}`" for n in meta["train_images"]),
        f"- Tuning images ({len(meta['tune_images'])}; early stopping and thresholds, with "
        "seeded H-DAB renderings of each): " + ", ".join(f"`{n[:24]}`" for n in
                                                        meta["tune_images"]),
        f"- Reporting images ({len(meta['report_images'])}; never used to train or tune): " +
        ", ".join(f"`{n[:24]}`" for n in meta["report_images"]),
        "- The data stay outside the repository (`$HCCBIO_SHARED_DATA`, default "
        "`../shared/data`).", "",
        "## Licence", "",
        "Weights: BSD-3-Clause like the project code. Training data licences above apply to "
        "derived use; MoNuSeg is CC BY-NC-SA 4.0 (non-commercial) and DeepLIIF's data are for "
        "academic use, so the weights inherit those restrictions in practice.", "",
        "## Settings", "",
        f"- StarDist {meta['versions']['stardist']}, TensorFlow {meta['versions']['tensorflow']}"
        f" (CPU), {config['n_rays']} rays, grid {tuple(config['grid'])}, U-Net depth "
        f"{config['unet_n_depth']}, {config['unet_n_filter_base']} base filters, "
        f"{config['net_conv_after_unet']} filters after the U-Net, 3 input channels "
        "(the same network as `he_nuclei`, so the same speed)",
        f"- Started from `{meta.get('init', '-')}`'s weights; {meta['steps']} steps in all, "
        f"batch {meta['batch']}, patch {meta['patch']} px, learning rate "
        f"{config['train_learning_rate']}, seed {meta['seed']}, "
        f"{meta['train_seconds'] / 60:.0f} min on 2 CPU cores for the last stage",
        "- Augmentation: flips, 90-degree rotations, the stain re-renderings above, global "
        "stain strength (optical density x 0.6-1.3), per-channel stain jitter (x 0.85-1.15, "
        "+-0.05), and since stage 2 defocus (Gaussian blur, sigma 0.3-1.2 px) and JPEG "
        "compression (quality 30-90) on a third of the patches each, Gaussian noise (sd 0.02)",
        "- Input normalisation: fixed range 0-255 (uint8 / 255)",
        f"- Resolution: {meta['mpp']} um/px",
        f"- Thresholds (StarDist's optimize_thresholds on the tuning split): prob "
        f"{meta['thresholds']['prob']:.3f}, nms {meta['thresholds']['nms']:.2f}; F1 at IoU 0.5 "
        f"on the tuning split {tune['f1_iou50']:.3f} (watershed "
        f"{meta['watershed_tune']['f1_iou50']:.3f} on its H&E tiles)", "",
        *accuracy_lines(folder.name),
        "## Limitations", "",
        *_target_lines(folder.name),
        "No liver tissue and two real IHC tiles in training (the rest of the IHC appearance "
        "is rendered from H&E); expect lower accuracy on unusual stains, heavy pigment or "
        "out-of-focus areas. Trained with blur, it finds blobs where no nucleus can be "
        "resolved: on a 2 um/px overview resampled to 0.5 um/px it outlines hundreds "
        "(tests/pathology/reference_run.json, kidney-ck); QC's focus flag marks such slides. "
        "Retrain with `python models/train.py bf` when annotated HCC tiles are available.", "",
        "## Reproduce", "",
        "```", *_stage_commands(folder.name, "bf", meta), "python -m benchmarks.accuracy",
        f"python models/card.py models/{folder.name}", "```", "", *_stage_notes(meta),
    ]
    return "\n".join(lines)


def _stage_notes(meta: dict) -> list[str]:
    """What the commands alone do not say about a stage (a run stopped early, a fresh
    learning-rate schedule), from the stage's ``note``."""
    notes = [f"Stage {index}: {stage['note']}." for index, stage in
             enumerate(meta.get("stages", []), start=1) if stage.get("note")]
    return [" ".join(notes), ""] if notes else []


def _stage_commands(name: str, kind: str, meta: dict, architecture: str = "") -> list[str]:
    """``models/train.py`` commands that made a model, one per training stage (``stages``; each
    continues the weights of the one before). A ``bf`` model starts from an H&E model's weights
    (``he_nuclei``'s, whose steps count first); a single-stage model is one command."""
    default = ({"init": "he_nuclei", "steps": meta["steps"] - 2000,
                "ihc_repeats": meta.get("ihc_repeats", 3)} if kind == "bf"
               else {"init": None, "steps": meta["steps"]})
    stages = [s for s in meta.get("stages", []) if s.get("steps")] or [default]
    done = meta["steps"] - sum(stage["steps"] for stage in stages)  # the starting model's steps
    lines = []
    for index, stage in enumerate(stages):
        out = name if index == len(stages) - 1 else f"{name}_stage{index + 1}"
        init = stage["init"] if index == 0 else f"{name}_stage{index}"
        start = f" --init models/{init} --previous-steps {done}" if init else ""
        repeats = f" --ihc-repeats {stage['ihc_repeats']}" if "ihc_repeats" in stage else ""
        lines.append(f"python models/train.py {kind} --steps {stage['steps']}{architecture}"
                     f"{start}{repeats} --out models/{out}")
        done += stage["steps"]
    return lines


def main(argv: list[str] | None = None) -> int:
    for name in (argv if argv is not None else sys.argv[1:]):
        folder = Path(name)
        (folder / "MODEL_CARD.md").write_text(render(folder))
        print(f"wrote {folder / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
