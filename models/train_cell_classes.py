"""Train the H&E nucleus-class network (lymphocyte, tumour, stromal, other) on patches of two
organs: colorectal (CRCHistoPhenotypes) and breast (BRCA-M2C).

Patches of ``PATCH_PX`` pixels at 0.5 um/px are cut around every annotated nucleus point
(:func:`pathology.cells.nucleus_classes.extract_patches`, the function the pipeline uses on detected
nuclei), from a larger window so that augmentation can zoom and shift: stain strength and hue
(colour deconvolution, hematoxylin and eosin scaled independently), scale 0.8-1.25, centre
shifts of a few pixels (a detected centroid is not the annotator's point), blur, brightness,
flips and rotations.

Splits (fixed, by image): reported images are never trained or tuned on.

- breast: BRCA-M2C ``val`` (10 tiles) is the report set; of its ``train`` tiles every 8th
  (sorted) is the tune set, the rest train.
- colon: CRCHistoPhenotypes ``REPORT_CRC`` (the lymphocyte classifier's held-out images) is the
  report set; ``TUNE_CRC`` tune; the rest train (oversampled, the set is small).

The checkpoint with the best tune-set macro F1 is kept, and the lymphocyte threshold is chosen
on the tune set (F1 of lymphocyte vs rest, averaged over the two organs so that neither
dominates). Checkpoints go to ``--work`` so that a stopped run resumes (``--resume``).

Usage: ``python models/train_cell_classes.py --epochs 30 [--out models/he_cell_classes]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pathology.cells.nucleus_classes import (  # noqa: E402
    CELL_CLASSES,
    KIND,
    MODEL_FILE,
    NETWORK_FILE,
    PATCH_MPP,
    PATCH_PX,
    extract_patches,
)
from pathology.evaluation.annotations import (  # noqa: E402
    AnnotatedPoints,
    load_brca_m2c,
    load_crchistophenotypes,
    shared_data_folder,
)

WINDOW_PX = 96  # source window: room for zoom and shift augmentation
REPORT_CRC = ("img2", "img29", "img51", "img67")
TUNE_CRC = ("img41", "img58")
CRC_TO_CELL = {"inflammatory": "lymphocyte", "epithelial": "tumour", "fibroblast": "stromal",
               "others": "other"}
CRC_OVERSAMPLE = 6
SEED = 0
BETA = 0.5  # F-beta of the lymphocyte call behind its threshold: TIL densities must not count
# tumour or stromal nuclei, so precision weighs twice recall (as the logistic model's did)


def resampled(item: AnnotatedPoints, mpp: float = PATCH_MPP) -> AnnotatedPoints:
    """The image at ``mpp`` (points scaled with it), as the pipeline reads slides."""
    from skimage.transform import rescale

    factor = item.mpp / mpp
    if abs(factor - 1.0) < 1e-3:
        return item
    image = rescale(item.image, factor, channel_axis=-1, order=1, anti_aliasing=factor < 1,
                    preserve_range=True).round().clip(0, 255).astype(np.uint8)
    points = {cls: (xy + 0.5) * factor - 0.5 for cls, xy in item.points.items()}
    return AnnotatedPoints(item.name, image, points, mpp, item.source)


def split_images(data: Path) -> dict[str, dict[str, list[AnnotatedPoints]]]:
    """Train / tune / report images per organ (colon classes renamed to
    :data:`pathology.cells.nucleus_classes.CELL_CLASSES`): the one definition of the splits, used by
    this script and by ``benchmarks/cell_classes.py``."""
    crc = [AnnotatedPoints(i.name, i.image, {CRC_TO_CELL[c]: xy for c, xy in i.points.items()},
                           i.mpp, i.source)
           for i in load_crchistophenotypes(data / "nuclei" / "crchistophenotypes")]
    brca = load_brca_m2c(data / "nuclei" / "brca-m2c", "train")
    return {
        "breast": {"train": [i for n, i in enumerate(brca) if n % 8], "tune": brca[::8],
                   "report": load_brca_m2c(data / "nuclei" / "brca-m2c", "val")},
        "colon": {"train": [i for i in crc if i.name not in REPORT_CRC + TUNE_CRC],
                  "tune": [i for i in crc if i.name in TUNE_CRC],
                  "report": [i for i in crc if i.name in REPORT_CRC]},
    }


def windows(items: list[AnnotatedPoints]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``WINDOW_PX`` windows around every point, their class index and their image index."""
    xs, ys, groups = [], [], []
    for number, item in enumerate(items):
        item = resampled(item)
        for cls, xy in item.points.items():
            if not len(xy):
                continue
            xs.append(extract_patches(item.image, xy[:, 1], xy[:, 0], size=WINDOW_PX))
            ys.append(np.full(len(xy), CELL_CLASSES.index(cls), dtype=np.int32))
            groups.append(np.full(len(xy), number, dtype=np.int32))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)


def splits(data: Path) -> dict[str, dict]:
    """Windows of every split per organ, and the image names."""
    images = split_images(data)
    return {organ: {**{split: windows(items) for split, items in parts.items()},
                    "images": {split: [i.name for i in items] for split, items in parts.items()}}
            for organ, parts in images.items()}


# Ruifrok-Johnston hematoxylin / eosin / DAB optical-density vectors (scikit-image's rgb_from_hed)
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
                        dtype=np.float32)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
RGB_FROM_HED[2] = np.cross(RGB_FROM_HED[0], RGB_FROM_HED[1])
RGB_FROM_HED[2] /= np.linalg.norm(RGB_FROM_HED[2])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


def build_augment(tf, *, train: bool):
    """A tf.data map from uint8 windows to float patches in [0, 1] (augmented when training)."""
    size, window = PATCH_PX, WINDOW_PX
    hed_from_rgb = tf.constant(HED_FROM_RGB)
    rgb_from_hed = tf.constant(RGB_FROM_HED)
    blur_kernels = []
    for sigma in (0.6, 1.0, 1.5):
        r = np.arange(-3, 4, dtype=np.float32)
        k = np.exp(-r**2 / (2 * sigma**2))
        k2 = np.outer(k, k) / np.outer(k, k).sum()
        blur_kernels.append(np.repeat(k2[:, :, None, None], 3, axis=2))
    blur_kernels = tf.constant(np.stack(blur_kernels))

    def center(x, y):
        start = (window - size) // 2
        x = tf.cast(x[:, start:start + size, start:start + size], tf.float32) / 255.0
        return x, y

    def augment(x, y):
        n = tf.shape(x)[0]
        x = tf.cast(x, tf.float32) / 255.0
        # stain: deconvolve, scale hematoxylin / eosin, perturb the stain vectors slightly;
        # one patch in five keeps its own stain, so that unaltered slides are in distribution
        # (negative densities are kept: clipping them shifts every patch's hue, and the
        # network's normalisation statistics with it)
        od = -tf.math.log(tf.clip_by_value(x, 1.0 / 255.0, 1.0))
        stains = tf.einsum("bhwc,cd->bhwd", od, hed_from_rgb)
        keep = tf.cast(tf.random.uniform((n, 1, 1, 1)) < 0.2, tf.float32)
        scale = tf.exp(tf.random.uniform((n, 1, 1, 3), np.log(0.45), np.log(1.8)))
        scale = tf.concat([scale[..., :2], tf.ones((n, 1, 1, 1))], axis=-1)
        scale = keep + (1.0 - keep) * scale
        jitter = tf.random.uniform((n, 3, 3), -0.05, 0.05) * (1.0 - keep[:, :, :, 0])
        od = tf.einsum("bhwd,bdc->bhwc", stains * scale, rgb_from_hed[None] + jitter)
        x = tf.exp(-od)
        # zoom and shift: crop a box of 64 * zoom around a shifted centre, resize to 64
        zoom = tf.exp(tf.random.uniform((n,), np.log(0.8), np.log(1.25)))
        shift = tf.random.uniform((n, 2), -3.0, 3.0)
        half = size * zoom / 2.0 / window
        cy = 0.5 + shift[:, 0] / window
        cx = 0.5 + shift[:, 1] / window
        boxes = tf.stack([cy - half, cx - half, cy + half, cx + half], axis=1)
        x = tf.image.crop_and_resize(x, boxes, tf.range(n), (size, size))
        # blur (a third of the batch), brightness and contrast
        which = tf.random.uniform((), 0, 3, dtype=tf.int32)
        blurred = tf.nn.depthwise_conv2d(x, blur_kernels[which], [1, 1, 1, 1], "SAME")
        x = tf.where(tf.random.uniform((n, 1, 1, 1)) < 0.33, blurred, x)
        x = x * tf.random.uniform((n, 1, 1, 1), 0.85, 1.1) + tf.random.uniform(
            (n, 1, 1, 1), -0.05, 0.05)
        x = tf.image.random_flip_left_right(tf.image.random_flip_up_down(x))
        x = tf.where(tf.random.uniform((n, 1, 1, 1)) < 0.5, tf.transpose(x, (0, 2, 1, 3)), x)
        return tf.clip_by_value(x, 0.0, 1.0), y

    return augment if train else center


def build_network(keras, n_classes: int):
    """A small VGG-like network (about 50 M multiply-adds per patch, so that it trains and runs
    on two CPU cores): one conv at full resolution, then pairs, group normalisation, global
    pooling, softmax."""
    layers = keras.layers
    inputs = keras.Input((PATCH_PX, PATCH_PX, 3))
    x = inputs
    for filters, convs in ((24, 1), (32, 2), (64, 2), (128, 2)):
        for _ in range(convs):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            # per-patch normalisation: batch statistics learnt on augmented patches did not
            # carry over to plain ones (tune-set scores swung from epoch to epoch)
            x = layers.GroupNormalization(groups=8)(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def lymphocyte_scores(probs: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1 of the lymphocyte call; share of tumour nuclei called lymphocyte."""
    lym = CELL_CLASSES.index("lymphocyte")
    called, true = probs[:, lym] >= threshold, truth == lym
    tp = int((called & true).sum())
    precision = tp / max(int(called.sum()), 1)
    recall = tp / max(int(true.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    b2 = BETA * BETA
    f_beta = (1 + b2) * precision * recall / max(b2 * precision + recall, 1e-9)
    tumour = truth == CELL_CLASSES.index("tumour")
    return {"precision": precision, "recall": recall, "f1": f1, "f_beta": f_beta,
            "tumour_called_lymphocyte": float(called[tumour].mean()) if tumour.any() else
            float("nan"), "n": int(len(truth)), "lymphocytes": int(true.sum())}


def macro_f1(probs: np.ndarray, truth: np.ndarray) -> float:
    """Macro F1 of the most probable class over the classes present in ``truth``."""
    predicted = probs.argmax(axis=1)
    scores = []
    for k in np.unique(truth):
        tp = np.sum((predicted == k) & (truth == k))
        scores.append(2 * tp / max(np.sum(predicted == k) + np.sum(truth == k), 1))
    return float(np.mean(scores))


def choose_threshold(tune: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """The lymphocyte threshold with the best mean tune-set F-beta (``BETA``) over the organs."""
    grid = np.round(np.arange(0.2, 0.951, 0.025), 3)
    means = [np.mean([lymphocyte_scores(p, y, t)["f_beta"] for p, y in tune.values()])
             for t in grid]
    return float(grid[int(np.argmax(means))])


def finish(network, sets: dict, predict) -> tuple[float, dict, dict]:
    """Threshold chosen on the tune images; scores at the annotated points of the tune and
    report images (the pipeline's figures come from benchmarks/cell_classes.py)."""
    tune = {organ: (predict(network, sets[organ]["tune"][0]), sets[organ]["tune"][1])
            for organ in ("breast", "colon")}
    threshold = choose_threshold(tune)
    report = {organ: lymphocyte_scores(predict(network, sets[organ]["report"][0]),
                                       sets[organ]["report"][1], threshold)
              for organ in ("breast", "colon")}
    print(json.dumps({"threshold": threshold, "report_patches_at_points": report}), flush=True)
    return threshold, {o: lymphocyte_scores(*tune[o], threshold) for o in tune}, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "he_cell_classes")
    parser.add_argument("--work", type=Path, default=ROOT / ".train" / "he_cell_classes")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threshold-only", action="store_true",
                        help="keep the network in --out; choose its threshold on the tune "
                        "images again (after a change of the rule) and rewrite model.json")
    args = parser.parse_args(argv)
    data = args.data or shared_data_folder()

    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(SEED)
    sets = splits(data)
    center = build_augment(tf, train=False)

    def predict(network, x: np.ndarray) -> np.ndarray:
        ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(256).map(center)
        return np.concatenate([network(b, training=False).numpy() for b, _ in ds])

    if args.threshold_only:
        model = json.loads((args.out / MODEL_FILE).read_text())
        network = keras.models.load_model(args.out / NETWORK_FILE)
        model["threshold"], model["meta"]["tune"], model["meta"]["report_patches_at_points"] = \
            finish(network, sets, predict)
        model["meta"]["training"]["threshold_rule"] = f"F{BETA:g}"
        (args.out / MODEL_FILE).write_text(json.dumps(model, indent=1) + "\n")
        return 0
    x_train = np.concatenate([sets["breast"]["train"][0]]
                             + [sets["colon"]["train"][0]] * CRC_OVERSAMPLE)
    y_train = np.concatenate([sets["breast"]["train"][1]]
                             + [sets["colon"]["train"][1]] * CRC_OVERSAMPLE)
    counts = np.bincount(y_train, minlength=len(CELL_CLASSES)).astype(float)
    weights = {k: float(np.sqrt(counts.max() / max(c, 1.0))) for k, c in enumerate(counts)}
    print(f"training windows {len(y_train)} per class {counts.tolist()} weights {weights}",
          flush=True)
    augment = build_augment(tf, train=True)
    train_ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                .shuffle(len(y_train), seed=SEED, reshuffle_each_iteration=True)
                .batch(args.batch).map(augment).prefetch(2))

    args.work.mkdir(parents=True, exist_ok=True)
    last, best_path = args.work / "last.keras", args.work / "best.keras"
    history_path = args.work / "history.json"
    network = build_network(keras, len(CELL_CLASSES))
    history: list[dict] = []
    start_epoch = 0
    if args.resume and last.is_file():
        network = keras.models.load_model(last)
        history = json.loads(history_path.read_text())
        start_epoch = len(history)
        print(f"resuming after epoch {start_epoch}", flush=True)
    else:
        steps = args.epochs * int(np.ceil(len(y_train) / args.batch))
        schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.02)
        network.compile(optimizer=keras.optimizers.Adam(schedule),
                        loss="sparse_categorical_crossentropy")
    best = max((h["tune_macro_f1"] for h in history), default=-1.0)
    for epoch in range(start_epoch, args.epochs):
        began = time.time()
        fit = network.fit(train_ds, epochs=1, class_weight=weights, verbose=0)
        tune = {organ: (predict(network, sets[organ]["tune"][0]), sets[organ]["tune"][1])
                for organ in ("breast", "colon")}
        score = float(np.mean([macro_f1(p, y) for p, y in tune.values()]))
        lym = {organ: lymphocyte_scores(p, y, 0.5)["f1"] for organ, (p, y) in tune.items()}
        record = {"epoch": epoch + 1, "loss": float(fit.history["loss"][-1]),
                  "tune_macro_f1": score, "tune_lymphocyte_f1_at_0.5": lym,
                  "seconds": round(time.time() - began, 1)}
        history.append(record)
        print(json.dumps(record), flush=True)
        network.save(last)
        if score > best:
            best = score
            network.save(best_path)
        history_path.write_text(json.dumps(history, indent=1))

    network = keras.models.load_model(best_path)
    threshold, tune, report = finish(network, sets, predict)
    best_epoch = max(history, key=lambda h: h["tune_macro_f1"])["epoch"]
    args.out.mkdir(parents=True, exist_ok=True)
    network.save(args.out / NETWORK_FILE)
    meta = {"training": {"command": "python models/train_cell_classes.py "
                         f"--epochs {args.epochs} --batch {args.batch}",
                         "epochs": args.epochs, "best_epoch": best_epoch, "seed": SEED,
                         "threshold_rule": f"F{BETA:g}",
                         "images": {o: sets[o]["images"] for o in ("breast", "colon")},
                         "crc_oversample": CRC_OVERSAMPLE, "class_weights": weights},
            "tune": tune, "report_patches_at_points": report}
    (args.out / MODEL_FILE).write_text(json.dumps(
        {"kind": KIND, "classes": list(CELL_CLASSES), "patch_px": PATCH_PX, "mpp": PATCH_MPP,
         "positive_class": "lymphocyte", "threshold": threshold, "meta": meta}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
