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
USE = {
    "he": "Nuclei in H&E and IHC (hematoxylin counterstain) brightfield slides at 0.5 um/px.",
    "fluo": "Nuclei in the nuclear channel (DAPI, Hoechst, dsDNA, H3) of fluorescence and "
            "multiplex images. Trained at DSB2018's native pixel size (unpublished; nuclei "
            "about 10-30 px across), not at a known um/px; the pipeline runs it at the working "
            "resolution (0.5 um/px), where typical nuclei (5-15 um) are of that size in pixels, "
            "so the scale match is approximate.",
}


def render(folder: Path) -> str:
    """The model card text for a trained model folder."""
    meta = json.loads((folder / "hccbio_model.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    kind = meta["kind"]
    metrics, baseline = meta["metrics_val"], meta["watershed_val"]
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
        "## Data", "", DATA[kind], "",
        f"- Training images ({len(meta['train_images'])}): " + ", ".join(
            f"`{n[:16]}`" for n in meta["train_images"]),
        f"- Validation images ({len(meta['val_images'])}, never used for training): " +
        ", ".join(f"`{n[:24]}`" for n in meta["val_images"]),
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
        f"- Thresholds (tuned on the validation images by StarDist's optimize_thresholds): "
        f"prob {meta['thresholds']['prob']:.3f}, nms {meta['thresholds']['nms']:.2f}", "",
        "## Measured accuracy (validation images, IoU 0.5)", "",
        "| method | AP (TP/(TP+FP+FN)) | F1 | precision | recall |",
        "|---|---|---|---|---|",
        f"| this model | {metrics['ap_iou50']:.3f} | {metrics['f1_iou50']:.3f} | "
        f"{metrics['precision']:.3f} | {metrics['recall']:.3f} |",
        f"| watershed baseline (`pathology.watershed`) | {baseline['ap_iou50']:.3f} | "
        f"{baseline['f1_iou50']:.3f} | | |", "",
        f"{metrics['n_true']} annotated nuclei, {metrics['n_pred']} predicted. "
        "`tests/pathology/test_models.py` recomputes these numbers from the shipped weights. "
        "The thresholds were tuned on the same validation images, so the figures are slightly "
        "optimistic; the images themselves never entered training.", "",
        *([f"On unseen tissue (CRCHistoPhenotypes, colorectal H&E at 0.55 um/px, 14 images): "
           f"{meta['crc_centroid_coverage']['coverage']:.1%} of "
           f"{meta['crc_centroid_coverage']['annotated']} annotated nucleus centroids fall "
           f"inside a detected nucleus ({meta['crc_centroid_coverage']['detected']} nuclei "
           "detected; `models/train_lymphocytes.py:centroid_coverage`).", ""]
          if meta.get("crc_centroid_coverage") else []),
        "## Limitations", "",
        "Few training images (no MoNuSeg training split is available here, no liver tissue); "
        "expect lower accuracy on unusual stains, heavy pigment or out-of-focus areas. Retrain "
        "with `python models/train.py` when annotated HCC tiles are available.", "",
        "## Reproduce", "",
        f"```\npython models/train.py {kind} --steps {meta['steps']}{architecture} "
        f"--out models/{folder.name}\npython models/card.py models/{folder.name}\n```", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    for name in (argv if argv is not None else sys.argv[1:]):
        folder = Path(name)
        (folder / "MODEL_CARD.md").write_text(render(folder))
        print(f"wrote {folder / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
