"""Train the StarDist 2D nucleus models that hccbio ships, and write their model cards.

Usage (from the project root, inside the project's virtual environment)::

    python models/train.py he   --steps 3000 --out models/he_nuclei
    python models/train.py fluo --steps 1500 --out models/fluo_nuclei

Data come from ``$HCCBIO_SHARED_DATA`` (default ``../shared/data``), never from the repo:

* ``he``: MoNuSeg 2018 tiles rescaled from 0.2527 to 0.5 um/px, plus the DSB2018 histology
  images rescaled so that their median nucleus matches MoNuSeg's at 0.5 um/px (DSB2018 states no
  pixel size). The last three MoNuSeg images (sorted by name) are validation only.
* ``fluo``: DSB2018 fluorescence; every fifth image (sorted by id) is validation only.

Brightfield input is normalised with a fixed range (uint8 / 255), so a tile gives the same
prediction wherever it is cut from; fluorescence with 1-99.8 percentiles (per image in training,
per slide in the pipeline). The normalisation is written to ``hccbio_model.json`` beside the
weights, where ``pathology.nuclei`` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pathology.annotations import (  # noqa: E402
    AnnotatedImage,
    load_dsb2018,
    load_monuseg,
    rescale_annotated,
)
from pathology.watershed import segment_nuclei_watershed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from card import render as render_card  # noqa: E402

WORKING_MPP = 0.5
SEED = 42
N_VAL_MONUSEG = 3


def shared_data() -> Path:
    """The shared data folder (``$HCCBIO_SHARED_DATA`` or ``../shared/data``)."""
    root = Path(os.environ.get("HCCBIO_SHARED_DATA", Path(__file__).resolve().parents[2]
                               / "shared" / "data"))
    if not root.is_dir():
        raise FileNotFoundError(f"shared data folder {root} not found; set HCCBIO_SHARED_DATA")
    return root


def median_equivalent_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter of the labelled objects, in pixels."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi)))


def he_split(root: Path) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Training and validation images for the brightfield model, at 0.5 um/px."""
    monuseg = [rescale_annotated(item, WORKING_MPP) for item in load_monuseg(root / "nuclei" /
                                                                             "monuseg")]
    train, val = monuseg[:-N_VAL_MONUSEG], monuseg[-N_VAL_MONUSEG:]
    reference = float(np.median([median_equivalent_diameter(i.labels) for i in train]))
    for item in load_dsb2018(root / "nuclei" / "dsb2018", "histology_brightfield"):
        # DSB2018 has no pixel size: match its nuclei to MoNuSeg's size at 0.5 um/px.
        scale = reference / median_equivalent_diameter(item.labels)
        pseudo = AnnotatedImage(item.name, item.image, item.labels, WORKING_MPP * scale,
                                item.source)
        train.append(rescale_annotated(pseudo, WORKING_MPP))
    return train, val


def fluo_split(root: Path) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Training and validation images for the fluorescence model (native resolution)."""
    items = load_dsb2018(root / "nuclei" / "dsb2018", "fluorescence")
    val = items[::5]
    train = [item for index, item in enumerate(items) if index % 5]
    return train, val


def normalise(image: np.ndarray, kind: str) -> np.ndarray:
    """Normalise as the model is trained (see module docstring)."""
    if kind == "he":
        return image.astype(np.float32) / 255.0
    from csbdeep.utils import normalize

    return normalize(image, 1, 99.8, axis=(0, 1)).astype(np.float32)


def pad_to(x: np.ndarray, y: np.ndarray, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Pad image and labels at the bottom/right to at least ``size`` x ``size``."""
    pad_h, pad_w = max(0, size - y.shape[0]), max(0, size - y.shape[1])
    if not pad_h and not pad_w:
        return x, y
    fill = 1.0 if kind == "he" else 0.0
    widths = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (x.ndim - 2)
    return (np.pad(x, widths, constant_values=fill),
            np.pad(y, ((0, pad_h), (0, pad_w)), constant_values=0))


def augmenter(kind: str):
    """Random flips, 90-degree rotations, intensity and (brightfield) stain jitter."""

    rng = np.random.default_rng(SEED)

    def augment(x: np.ndarray, y: np.ndarray):
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if kind == "he":
            # Stain jitter in optical density: scale and shift each RGB channel's OD.
            od = -np.log(np.clip(x, 1 / 255, 1))
            od = od * rng.uniform(0.8, 1.2, size=3) + rng.uniform(-0.05, 0.05, size=3)
            x = np.exp(-np.clip(od, 0, None))
        else:
            x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
        x = x + rng.normal(0, 0.02, size=x.shape)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)

    return augment


def evaluate(model, images: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """AP (TP / (TP + FP + FN)) and F1 at IoU 0.5 of ``model`` over ``images``."""
    from stardist.matching import matching_dataset

    predictions = [model.predict_instances(x)[0] for x in images]
    stats = matching_dataset(truths, predictions, thresh=0.5, show_progress=False)
    return {"ap_iou50": float(stats.accuracy), "f1_iou50": float(stats.f1),
            "precision": float(stats.precision), "recall": float(stats.recall),
            "n_true": int(stats.n_true), "n_pred": int(stats.n_pred)}


def watershed_baseline(raw_images: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """The classical baseline's AP and F1 at IoU 0.5 on the same images."""
    from stardist.matching import matching_dataset

    predictions = [segment_nuclei_watershed(x) for x in raw_images]
    stats = matching_dataset(truths, predictions, thresh=0.5, show_progress=False)
    return {"ap_iou50": float(stats.accuracy), "f1_iou50": float(stats.f1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["he", "fluo"])
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--steps", type=int, default=3000, help="total training steps")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this model folder's weights_best.h5 (continue training)")
    parser.add_argument("--filters", type=int, default=32,
                        help="U-Net base filters (32: StarDist's versatile models; 16: about "
                        "3x faster on a CPU)")
    parser.add_argument("--head", type=int, default=128,
                        help="filters of the convolution after the U-Net (versatile: 128)")
    parser.add_argument("--previous-steps", type=int, default=0,
                        help="steps already trained by --init (recorded in the card)")
    args = parser.parse_args(argv)

    import tensorflow as tf
    from stardist.models import Config2D, StarDist2D

    np.random.seed(SEED)  # noqa: NPY002 - StarDist samples patches from the global RNG
    tf.keras.utils.set_random_seed(SEED)
    root = shared_data()
    train, val = (he_split if args.kind == "he" else fluo_split)(root)
    n_channel = 3 if args.kind == "he" else 1
    x_train = [normalise(i.image, args.kind) for i in train]
    y_train = [i.labels for i in train]
    x_val = [normalise(i.image, args.kind) for i in val]
    y_val = [i.labels for i in val]
    patch = args.patch
    # Images smaller than a patch (rescaled DSB2018 histology) are padded with background
    # (white glass / dark field, label 0) so that every image yields full patches.
    x_train, y_train = zip(*(pad_to(x, y, patch, args.kind)
                             for x, y in zip(x_train, y_train, strict=True)), strict=True)

    config = Config2D(
        n_rays=32, grid=(2, 2), n_channel_in=n_channel, unet_n_depth=3,
        unet_n_filter_base=args.filters, net_conv_after_unet=args.head,
        train_patch_size=(patch, patch),
        train_batch_size=args.batch, train_epochs=max(1, args.steps // args.steps_per_epoch),
        train_steps_per_epoch=args.steps_per_epoch, train_learning_rate=3e-4,
        train_tensorboard=False, train_reduce_lr={"factor": 0.5, "patience": 10, "min_delta": 0},
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model = StarDist2D(config, name=args.out.name, basedir=str(args.out.parent))
    if args.init is not None:
        model.keras_model.load_weights(str(args.init / "weights_best.h5"))
    started = time.time()
    model.train(x_train, y_train, validation_data=(x_val, y_val), augmenter=augmenter(args.kind))
    train_seconds = time.time() - started
    model.optimize_thresholds(x_val, y_val)
    metrics = evaluate(model, x_val, y_val)
    baseline = watershed_baseline([i.image for i in val], y_val)

    meta = {
        "kind": args.kind,
        "axes": "YXC" if n_channel == 3 else "YX",
        "mpp": WORKING_MPP if args.kind == "he" else None,
        "normalization": ({"method": "fixed", "low": 0.0, "high": 255.0} if args.kind == "he"
                          else {"method": "percentile", "low": 1.0, "high": 99.8}),
        "train_images": [i.name for i in train],
        "val_images": [i.name for i in val],
        "val_sources": sorted({i.source for i in val}),
        "steps": args.steps + args.previous_steps, "patch": patch, "batch": args.batch,
        "seed": SEED,
        "train_seconds": round(train_seconds, 1),
        "thresholds": json.loads((args.out / "thresholds.json").read_text()),
        "metrics_val": metrics, "watershed_val": baseline,
        "versions": {"tensorflow": tf.__version__, "stardist": __import__("stardist").__version__},
    }
    (args.out / "hccbio_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    (args.out / "MODEL_CARD.md").write_text(render_card(args.out))
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
