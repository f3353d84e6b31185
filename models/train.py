"""Train the StarDist 2D nucleus models that hccbio ships, and write their model cards.

Usage (from the project root, inside the project's virtual environment)::

    python models/train.py he   --steps 3000 --out models/he_nuclei
    python models/train.py fluo --steps 1500 --out models/fluo_nuclei
    python models/train.py bf   --steps 1600 --init models/he_nuclei --out models/bf_nuclei

Data come from ``$HCCBIO_SHARED_DATA`` (default ``../shared/data``), never from the repo:

* ``he``: MoNuSeg 2018 tiles rescaled from 0.2527 to 0.5 um/px, plus the DSB2018 histology
  images rescaled so that their median nucleus matches MoNuSeg's at 0.5 um/px (DSB2018 states no
  pixel size), plus the MoNuSeg training set's outlined tiles but the last three, which are the
  tuning split (early stopping and thresholds: :func:`he_tuned_split`). The last three MoNuSeg
  test-set images (sorted by name) are for reporting only, never trained or tuned on.
  ``--retune-thresholds`` tunes an existing model's thresholds on the tuning split alone.
* ``fluo``: DSB2018 fluorescence; every fifth image (sorted by id) is validation only.
* ``bf`` (brightfield: H&E and IHC): ``he``'s training images, plus the MoNuSeg training set's
  images that have nucleus polygons (``nuclei/monuseg-train``; the last three by name are the
  *tuning* split) and the two DeepLIIF Ki67 IHC training tiles (all nuclei annotated, repeated
  so that IHC is not drowned). Half of the H&E patches are re-rendered as hematoxylin + DAB
  (:func:`render_hdab`: pale to dark counterstain, DAB on a random share of nuclei or around
  them). Early stopping and threshold tuning use the tuning split (its H&E and its seeded H-DAB
  renderings); the reporting images (MoNuSeg ``nuclei/monuseg``'s last three, DeepLIIF's test
  tiles) never enter training or tuning.

Brightfield input is normalised with a fixed range (uint8 / 255), so a tile gives the same
prediction wherever it is cut from; fluorescence with 1-99.8 percentiles (per image in training,
per slide in the pipeline). The normalisation is written to ``hccbio_model.json`` beside the
weights, where ``pathology.segmentation.nuclei`` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pathology.evaluation.annotations import (  # noqa: E402
    AnnotatedImage,
    load_deepliif,
    load_dsb2018,
    load_monuseg,
    rescale_annotated,
    shared_data_folder,
)
from pathology.segmentation.watershed import segment_nuclei_watershed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from card import render as render_card  # noqa: E402

WORKING_MPP = 0.5
SEED = 42
N_VAL_MONUSEG = 3
N_TUNE_MONUSEG_TRAIN = 3
IHC_REPEATS = 3  # each DeepLIIF training tile counts this many times among the images
HDAB_SHARE = 0.5  # share of brightfield training patches re-rendered as hematoxylin + DAB
IHC_RESTAIN_SHARE = 0.75  # share of real IHC patches re-rendered at another stain strength
COARSE_SHARE = 0.5  # fluo --coarse: share of patches re-rendered as a low-resolution count image
# Ruifrok-Johnston optical-density vectors (unit length) of hematoxylin and DAB, and a cyan
# hematoxylin (more red absorption) as seen on IHC counterstains such as DeepLIIF's tiles
HEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286])
HEMATOXYLIN_CYAN_OD = np.array([0.860, 0.470, 0.200])
DAB_OD = np.array([0.268, 0.570, 0.776])


def shared_data() -> Path:
    """The shared data folder (:func:`pathology.evaluation.annotations.shared_data_folder`)."""
    return shared_data_folder()


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


def he_tuned_split(root: Path) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Training and tuning images for an H&E model, at 0.5 um/px.

    ``he_split``'s training images plus the MoNuSeg training set's images with nucleus
    polygons, of which the last three by name are the tuning split (early stopping and
    thresholds). The reporting images (``he_split``'s validation tiles) are in neither list.
    """
    train, _ = he_split(root)
    extra = [rescale_annotated(item, WORKING_MPP) for item in
             load_monuseg(root / "nuclei" / "monuseg-train", annotated_only=True)]
    return train + extra[:-N_TUNE_MONUSEG_TRAIN], extra[-N_TUNE_MONUSEG_TRAIN:]


def bf_split(root: Path, ihc_repeats: int = IHC_REPEATS
             ) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Training and tuning images for the brightfield (H&E + IHC) model, at 0.5 um/px.

    ``he_tuned_split`` plus the DeepLIIF IHC training tiles. The reporting images
    (``he_split``'s validation tiles and DeepLIIF's test tiles) are in neither list.
    """
    train, tune = he_tuned_split(root)
    ihc = [rescale_annotated(item, WORKING_MPP) for item in
           load_deepliif(root / "ihc" / "deepliif", "train")]
    return train + ihc * ihc_repeats, tune


def he_to_hematoxylin(image: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density of an H&E image in [0, 1] (float RGB, 1 = white)."""
    from skimage.color import hed_from_rgb

    od = -np.log(np.clip(image, 1 / 255, 1))
    return np.clip(od.reshape(-1, 3) @ hed_from_rgb[:, 0], 0, None).reshape(image.shape[:2])


def render_hdab(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Re-render an H&E image (float RGB in [0, 1]) as a hematoxylin + DAB IHC image.

    The hematoxylin of the H&E (colour deconvolution) is kept and scaled by a random factor
    (0.15-1.1: pale to dark counterstain, as IHC counterstains are usually paler than H&E);
    eosin is dropped. DAB is added on a random share (0-70 %) of the annotated nuclei (nuclear
    markers such as Ki67) or, in a third of images, as a ring around them (membrane and
    cytoplasm markers such as CD8 or PD-L1), with random strength per nucleus. Stain vectors
    are jittered so that the network does not learn one scanner's hues.
    """
    from scipy import ndimage as ndi

    hematoxylin = he_to_hematoxylin(image) * rng.uniform(0.15, 1.1)
    mix = rng.uniform(0, 1)
    h_vector = (1 - mix) * HEMATOXYLIN_OD + mix * HEMATOXYLIN_CYAN_OD + rng.normal(0, 0.03, 3)
    dab_vector = DAB_OD + rng.normal(0, 0.04, 3)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    dab = np.zeros(labels.shape, np.float64)
    if len(ids):
        chosen = ids[rng.random(len(ids)) < rng.uniform(0, 0.7)]
        strength = np.zeros(int(labels.max()) + 1)
        strength[chosen] = rng.uniform(0.15, 1.0, len(chosen))
        if rng.random() < 1 / 3:  # membrane / cytoplasm: a ring around the chosen nuclei
            grown = ndi.grey_dilation(np.where(np.isin(labels, chosen), labels, 0), size=7)
            ring = (grown > 0) & (labels == 0)
            dab[ring] = strength[grown[ring]] * 0.8
        else:
            dab = strength[labels]
        dab = ndi.gaussian_filter(dab, 1.0)
    # background: white to cream glass (a little blue absorption), as scanners render it
    tint = rng.uniform(0, 0.03, 3) + np.array([0.0, 0.02, 0.12]) * rng.uniform(0, 1)
    od = (hematoxylin[..., None] * h_vector[None, None] + dab[..., None] * dab_vector[None, None]
          + tint)
    return np.exp(-np.clip(od, 0, None))


def restain_ihc(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Re-render a real IHC image (float RGB in [0, 1]) at another counterstain and DAB strength.

    The image's own counterstain vector
    (:func:`pathology.segmentation.stains.counterstain_matrix`) unmixes it, so a paler
    rendering is less of the same dye (the Ruifrok vectors would turn a bluish counterstain
    cyan).
    Hematoxylin is scaled by 0.15-1.2 (down to the palest counterstains labs scan), DAB by
    0.3-2.5 on a log scale (faint to saturated), the residual by 0.5-1.
    """
    from pathology.segmentation.stains import StainError, counterstain_matrix, rescale_stains

    rgb = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    try:
        matrix = counterstain_matrix(rgb)
    except StainError:
        return image
    hematoxylin, residual = rng.uniform(0.15, 1.2), rng.uniform(0.5, 1.0)
    dab = float(np.exp(rng.uniform(np.log(0.3), np.log(2.5))))
    return rescale_stains(rgb, hematoxylin=hematoxylin, eosin=residual, dab=dab,
                          matrix=matrix) / 255.0


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner artefacts on a float RGB image in [0, 1]: slight defocus (Gaussian blur, sigma
    0.3-1.2 px, a third of patches) and JPEG compression (quality 30-90, a third of patches)."""
    import io

    from PIL import Image
    from scipy import ndimage as ndi

    if rng.random() < 1 / 3:
        image = ndi.gaussian_filter(image, sigma=(*(rng.uniform(0.3, 1.2),) * 2, 0))
    if rng.random() < 1 / 3:
        buffer = io.BytesIO()
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(
            buffer, format="JPEG", quality=int(rng.integers(30, 91)))
        image = np.asarray(Image.open(buffer), dtype=np.float64) / 255.0
    return image


def coarsen(image: np.ndarray, rng: np.random.Generator, *, nucleus_px: float) -> np.ndarray:
    """A fluorescence image as imaging mass cytometry / MIBI record it and the pipeline reads
    it (``nuclei_mpp`` above the instrument's pixel size): nuclei of ``nucleus_px`` (median)
    shrunk to 5-10 px by area averaging, ion counts with Poisson noise (a bright nucleus at
    3-30 counts per pixel), then interpolated back to the original size (bilinear).

    Tried once (2026-12-07): ``fluo_nuclei`` + 1200 steps with ``--coarse`` rose on the DSB2018
    validation images (F1 0.819 -> 0.860; 0.713 on their coarse renderings) but found fewer
    cells on the IMC fields through the pipeline (G01 / J02 count -40 % / -48 %, whole-cell F1
    0.46 / 0.27 against 0.45 / 0.31; MIBI 435 cells against 556): not shipped.

    Parameters
    ----------
    image
        ``(H, W)`` float image normalised to about [0, 1].
    nucleus_px
        Median nucleus diameter of the image in pixels.
    """
    from skimage.transform import resize

    factor = max(1.0, nucleus_px / rng.uniform(5.0, 10.0))
    small_shape = tuple(max(8, round(n / factor)) for n in image.shape[:2])
    small = resize(np.clip(image, 0, None), small_shape, order=1, anti_aliasing=True,
                   preserve_range=True)
    peak = rng.uniform(3.0, 30.0)
    counts = rng.poisson(small * peak) / peak
    return resize(counts, image.shape[:2], order=1, preserve_range=True).astype(np.float32)


def fluo_split(root: Path) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Training and validation images for the fluorescence model (native resolution)."""
    items = load_dsb2018(root / "nuclei" / "dsb2018", "fluorescence")
    val = items[::5]
    train = [item for index, item in enumerate(items) if index % 5]
    return train, val


def normalise(image: np.ndarray, kind: str) -> np.ndarray:
    """Normalise as the model is trained (see module docstring)."""
    if kind in ("he", "bf"):
        return image.astype(np.float32) / 255.0
    from csbdeep.utils import normalize

    return normalize(image, 1, 99.8, axis=(0, 1)).astype(np.float32)


def pad_to(x: np.ndarray, y: np.ndarray, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Pad image and labels at the bottom/right to at least ``size`` x ``size``."""
    pad_h, pad_w = max(0, size - y.shape[0]), max(0, size - y.shape[1])
    if not pad_h and not pad_w:
        return x, y
    fill = 1.0 if kind in ("he", "bf") else 0.0
    widths = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (x.ndim - 2)
    return (np.pad(x, widths, constant_values=fill),
            np.pad(y, ((0, pad_h), (0, pad_w)), constant_values=0))


def augmenter(kind: str, *, coarse: bool = False):
    """Random flips, 90-degree rotations, intensity and (brightfield) stain jitter; ``coarse``
    (fluo): :data:`COARSE_SHARE` of the patches rendered by :func:`coarsen`."""

    rng = np.random.default_rng(SEED)

    def augment(x: np.ndarray, y: np.ndarray):
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if coarse and kind == "fluo" and y.max() > 0 and rng.random() < COARSE_SHARE:
            x = coarsen(x, rng, nucleus_px=median_equivalent_diameter(y))
        if kind == "bf" and _looks_like_ihc(x):
            if rng.random() < IHC_RESTAIN_SHARE:
                x = restain_ihc(x, rng)
        elif kind == "bf" and rng.random() < HDAB_SHARE:
            x = render_hdab(x, y, rng)
        if kind == "bf":
            # Global stain strength (pale to dark), then per-channel jitter as for "he".
            od = -np.log(np.clip(x, 1 / 255, 1)) * rng.uniform(0.6, 1.3)
            od = od * rng.uniform(0.85, 1.15, size=3) + rng.uniform(-0.05, 0.05, size=3)
            x = np.exp(-np.clip(od, 0, None))
        elif kind == "he":
            # Stain jitter in optical density: scale and shift each RGB channel's OD.
            od = -np.log(np.clip(x, 1 / 255, 1))
            od = od * rng.uniform(0.8, 1.2, size=3) + rng.uniform(-0.05, 0.05, size=3)
            x = np.exp(-np.clip(od, 0, None))
        else:
            x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
        if kind == "bf":
            x = degrade(x, rng)
        x = x + rng.normal(0, 0.02, size=x.shape)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)

    return augment


def _looks_like_ihc(x: np.ndarray) -> bool:
    """Whether a brightfield patch is already hematoxylin + DAB (little eosin): its mean
    colour is not pink (red and blue above green by less than 0.05)."""
    mean = x.reshape(-1, 3).mean(axis=0)
    return bool(min(mean[0], mean[2]) - mean[1] < 0.05)


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


def retune_thresholds(folder: Path, root: Path) -> dict:
    """Tune an ``he`` model's thresholds again on ``he_tuned_split``'s tuning images (MoNuSeg
    training-set tiles), leaving its weights alone, and evaluate it again on its validation
    images; ``hccbio_model.json`` records both (``threshold_tune_images``,
    ``metrics_threshold_tune``, ``thresholds_before``).

    For models whose thresholds were first tuned on their validation images, which are also
    the accuracy report's MoNuSeg tiles: afterwards those figures are free of threshold tuning
    (the checkpoint was still chosen by the validation loss).
    """
    from stardist.models import StarDist2D

    meta_path = folder / "hccbio_model.json"
    meta = json.loads(meta_path.read_text())
    if meta["kind"] != "he":
        raise ValueError(f"{folder}: only he models are tuned again this way")
    _, tune = he_tuned_split(root)
    _, val = he_split(root)
    if [i.name for i in val] != meta["val_images"]:
        raise ValueError(f"{folder}: validation images differ from the recorded ones")
    model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
    before = json.loads((folder / "thresholds.json").read_text())
    model.optimize_thresholds([normalise(i.image, "he") for i in tune], [i.labels for i in tune])
    meta["thresholds_before"] = before
    meta["thresholds"] = json.loads((folder / "thresholds.json").read_text())
    meta["threshold_tune_images"] = [i.name for i in tune]
    meta["metrics_threshold_tune"] = evaluate(model, [normalise(i.image, "he") for i in tune],
                                              [i.labels for i in tune])
    meta["metrics_val"] = evaluate(model, [normalise(i.image, "he") for i in val],
                                   [i.labels for i in val])
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    (folder / "MODEL_CARD.md").write_text(render_card(folder))
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["he", "fluo", "bf"])
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
    parser.add_argument("--finalize", action="store_true",
                        help="no training: tune thresholds and write the card for the weights "
                        "already in --out (e.g. a run stopped after its last checkpoint); "
                        "--steps then states how many steps those weights had")
    parser.add_argument("--ihc-repeats", type=int, default=IHC_REPEATS,
                        help="bf: how many times each real IHC training tile counts among the "
                        "images (StarDist samples images uniformly)")
    parser.add_argument("--retune-thresholds", action="store_true",
                        help="he: no training; tune --out's thresholds again on the MoNuSeg "
                        "training-set tuning tiles (not its validation images) and re-evaluate")
    parser.add_argument("--coarse", action="store_true",
                        help="fluo: also train and tune on low-resolution count renderings "
                        "(imaging mass cytometry, MIBI; models/train.py:coarsen)")
    parser.add_argument("--train-seconds", type=float, default=None,
                        help="with --finalize: how long the stopped run trained (for the card)")
    args = parser.parse_args(argv)

    import tensorflow as tf
    from stardist.models import Config2D, StarDist2D

    np.random.seed(SEED)  # noqa: NPY002 - StarDist samples patches from the global RNG
    tf.keras.utils.set_random_seed(SEED)
    root = shared_data()
    if args.retune_thresholds:
        meta = retune_thresholds(args.out, root)
        print(json.dumps({k: meta[k] for k in ("thresholds_before", "thresholds",
                                               "metrics_threshold_tune", "metrics_val")},
                         indent=2))
        return 0
    if args.kind == "bf":
        train, val = bf_split(root, args.ihc_repeats)
    else:
        train, val = {"he": he_tuned_split, "fluo": fluo_split}[args.kind](root)
    brightfield = args.kind in ("he", "bf")
    n_channel = 3 if brightfield else 1
    x_train = [normalise(i.image, args.kind) for i in train]
    y_train = [i.labels for i in train]
    x_val = [normalise(i.image, args.kind) for i in val]
    y_val = [i.labels for i in val]
    if args.kind == "bf":
        # Tune on both stains: the tuning H&E tiles and seeded H-DAB renderings of them.
        rng = np.random.default_rng(SEED + 1)
        x_val += [render_hdab(x, y, rng).astype(np.float32)
                  for x, y in zip(x_val, y_val, strict=True)]
        y_val += y_val
    if args.kind == "fluo" and args.coarse:
        # Tune on both: the validation images and seeded low-resolution renderings of them.
        rng = np.random.default_rng(SEED + 1)
        x_val += [coarsen(x, rng, nucleus_px=median_equivalent_diameter(y))
                  for x, y in zip(x_val, y_val, strict=True)]
        y_val += y_val
    patch = args.patch
    # Images smaller than a patch (rescaled DSB2018 histology) are padded with background
    # (white glass / dark field, label 0) so that every image yields full patches.
    x_train, y_train = zip(*(pad_to(x, y, patch, args.kind)
                             for x, y in zip(x_train, y_train, strict=True)), strict=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    previous: dict = {}
    if args.finalize:
        model = StarDist2D(None, name=args.out.name, basedir=str(args.out.parent))
        previous = json.loads((args.out / "hccbio_model.json").read_text()) if (
            args.out / "hccbio_model.json").is_file() else {}
        train_seconds = (args.train_seconds if args.train_seconds is not None
                         else float(previous.get("train_seconds", 0.0)))
    else:
        config = Config2D(
            n_rays=32, grid=(2, 2), n_channel_in=n_channel, unet_n_depth=3,
            unet_n_filter_base=args.filters, net_conv_after_unet=args.head,
            train_patch_size=(patch, patch),
            train_batch_size=args.batch, train_epochs=max(1, args.steps // args.steps_per_epoch),
            train_steps_per_epoch=args.steps_per_epoch, train_learning_rate=3e-4,
            train_tensorboard=False,
            train_reduce_lr={"factor": 0.5, "patience": 10, "min_delta": 0},
        )
        model = StarDist2D(config, name=args.out.name, basedir=str(args.out.parent))
        if args.init is not None:
            model.keras_model.load_weights(str(args.init / "weights_best.h5"))
        model.train(x_train, y_train, validation_data=(x_val, y_val),
                    augmenter=augmenter(args.kind, coarse=args.coarse))
        train_seconds = time.time() - started
    model.optimize_thresholds(x_val, y_val)
    coarse_metrics = None
    if args.kind == "fluo" and len(x_val) > len(val):  # --coarse: native and coarse apart
        coarse_metrics = evaluate(model, x_val[len(val):], y_val[len(val):])
        x_val, y_val = x_val[:len(val)], y_val[:len(val)]
    metrics = evaluate(model, x_val, y_val)
    baseline = watershed_baseline([i.image for i in val], y_val[:len(val)])

    meta = {
        "kind": args.kind,
        "axes": "YXC" if n_channel == 3 else "YX",
        "mpp": WORKING_MPP if brightfield else None,
        "normalization": ({"method": "fixed", "low": 0.0, "high": 255.0} if brightfield
                          else {"method": "percentile", "low": 1.0, "high": 99.8}),
        "train_images": list(dict.fromkeys(i.name for i in train)),
        "steps": args.steps + args.previous_steps,
        **({"ihc_repeats": args.ihc_repeats} if args.kind == "bf" else {}),
        "patch": patch, "batch": args.batch,
        "seed": SEED,
        "train_seconds": round(train_seconds, 1),
        "thresholds": json.loads((args.out / "thresholds.json").read_text()),
        "versions": {"tensorflow": tf.__version__, "stardist": __import__("stardist").__version__},
    }
    if args.init is not None:
        meta["init"] = args.init.name
    if args.kind in ("bf", "he"):
        # the commands that made these weights, stage by stage (the card's "Reproduce")
        init_meta = (json.loads((args.init / "hccbio_model.json").read_text())
                     if args.init is not None and (args.init / "hccbio_model.json").is_file()
                     else {})
        # a bf model started from an H&E one lists its own stages; the H&E card has the rest
        earlier = init_meta.get("stages", []) if init_meta.get("kind") == args.kind else []
        stage = {"init": args.init.name if args.init is not None else None,
                 "steps": args.steps,
                 **({"ihc_repeats": args.ihc_repeats} if args.kind == "bf" else {})}
        meta["stages"] = (previous.get("stages", []) if args.finalize
                          else [*earlier, stage])
    if brightfield:
        # Thresholds and early stopping saw the tuning split only; accuracy is reported on other
        # images by benchmarks/accuracy.py through the slide pipeline.
        meta.update({"tune_images": [i.name for i in val], "metrics_tune": metrics,
                     "watershed_tune": baseline,
                     "report_images": [i.name for i in he_split(root)[1]]
                     + [i.name for i in load_deepliif(root / "ihc" / "deepliif", "test")]})
    else:
        meta.update({"val_images": [i.name for i in val],
                     "val_sources": sorted({i.source for i in val}),
                     "metrics_val": metrics, "watershed_val": baseline})
        if coarse_metrics is not None:
            meta.update({"coarse": {"share": COARSE_SHARE, "nucleus_px": [5, 10],
                                    "peak_counts": [3, 30]},
                         "metrics_val_coarse": coarse_metrics})
    (args.out / "hccbio_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    (args.out / "MODEL_CARD.md").write_text(render_card(args.out))
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
