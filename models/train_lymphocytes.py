"""Train the H&E lymphocyte classifier on CRCHistoPhenotypes and write its model card.

Nuclei are segmented (``--segmenter stardist``: the pipeline's default brightfield StarDist
model, or another with ``--model``; ``--segmenter watershed``: classical watershed,
``pathology.watershed``), measured with
``pathology.cells.measure_labels`` (the cells.parquet columns), and matched to the annotated
centroids: a nucleus takes the class of the nearest annotated point within ``MATCH_UM``.
"inflammatory" is the positive class. Images are split by image (``TEST_IMAGES`` never seen in
training); the threshold is tuned by grouped cross-validation on the training images only.

Usage: ``python models/train_lymphocytes.py [--data ../shared/data] [--segmenter stardist]
[--model models/he_nuclei_fast]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pathology.cells import measure_labels  # noqa: E402
from pathology.config import SegmentationSection  # noqa: E402
from pathology.lymphocytes import (  # noqa: E402
    MODEL_FILE,
    LymphocyteClassifier,
    lymphocyte_features,
)

DEFAULT_SEGMENTATION_MODEL = SegmentationSection().brightfield_model
MPP = 0.55  # CRCHistoPhenotypes: 20x, about 0.55 um/px (SOURCE.txt)
MATCH_UM = 4.0
CLASSES = ("epithelial", "fibroblast", "inflammatory", "others")
TEST_IMAGES = ("img2", "img29", "img51", "img67")  # fixed held-out images (every 4th, sorted)
FEATURES = ("log_area", "perimeter_um", "eccentricity", "solidity", "major_axis_um",
            "minor_axis_um", "roundness", "axis_ratio", "nucleus_hematoxylin_od",
            "nucleus_eosin_od", "ring_hematoxylin_od", "ring_eosin_od", "h_contrast",
            "e_contrast")
OUT = ROOT / "models" / "lymphocyte_classifier"


def load_image(folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One CRCHistoPhenotypes image and its annotated centroids (x, y px) per class."""
    from scipy.io import loadmat
    from skimage.io import imread

    name = folder.name
    image = imread(folder / f"{name}.bmp")[..., :3]
    points = {}
    for cls in CLASSES:
        path = folder / f"{name}_{cls}.mat"
        points[cls] = (np.asarray(loadmat(path)["detection"], dtype=np.float64).reshape(-1, 2)
                       if path.is_file() else np.zeros((0, 2)))
    return image, points


def segment(image: np.ndarray, segmenter: str, model_spec: str = "") -> np.ndarray:
    """Nucleus labels of one image."""
    if segmenter == "watershed":
        from pathology.watershed import segment_nuclei_watershed

        return segment_nuclei_watershed(image, min_distance_px=4, min_area_px=15)
    from pathology.nuclei import load_model, normalization_range, segment_tile

    model = load_model(model_spec or DEFAULT_SEGMENTATION_MODEL)
    norm = normalization_range(model, image.reshape(-1))
    return segment_tile(model, image, norm).labels


def nucleus_table(folder: Path, *, segmenter: str, model_spec: str = "") -> pd.DataFrame:
    """Measured nuclei of one image with their matched class (unmatched: class '')."""
    from scipy.spatial import cKDTree

    image, points = load_image(folder)
    labels = segment(image, segmenter, model_spec)
    cells = measure_labels(labels, image, kind="brightfield", mpp=MPP,
                           ring_width_um=2.0).to_pandas()
    xy = np.concatenate([points[c] for c in CLASSES]) * MPP
    classes = np.concatenate([[c] * len(points[c]) for c in CLASSES]).astype(object)
    cls = np.full(len(cells), "", dtype=object)
    if len(xy) and len(cells):
        # x, y of annotated points are 1-based MATLAB pixel coordinates of the centre
        distance, index = cKDTree(xy - 0.5 * MPP).query(
            cells[["x_um", "y_um"]].to_numpy(), k=1, distance_upper_bound=MATCH_UM)
        matched = np.isfinite(distance)
        cls[matched] = classes[index[matched]]
    cells["cls"] = cls
    cells["image"] = folder.name
    return cells


def dataset(data: Path, *, segmenter: str, model_spec: str = "") -> pd.DataFrame:
    """Matched nuclei of every image."""
    root = data / "nuclei" / "crchistophenotypes"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{root}: no CRCHistoPhenotypes images")
    tables = [nucleus_table(f, segmenter=segmenter, model_spec=model_spec) for f in folders]
    return pd.concat(tables, ignore_index=True)


def centroid_coverage(data: Path, model_spec: str) -> dict[str, float]:
    """Share of CRCHistoPhenotypes' annotated nucleus centroids (all classes, 14 images) that
    fall inside a nucleus the StarDist model finds: a recall check on tissue (colorectal,
    0.55 um/px) that no StarDist model here was trained or tuned on."""
    root = data / "nuclei" / "crchistophenotypes"
    annotated = covered = detected = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        image, points = load_image(folder)
        labels = segment(image, "stardist", model_spec)
        xy = np.concatenate([points[c] for c in CLASSES])
        rows = np.clip(np.round(xy[:, 1]).astype(int), 0, labels.shape[0] - 1)
        cols = np.clip(np.round(xy[:, 0]).astype(int), 0, labels.shape[1] - 1)
        annotated += len(xy)
        covered += int(np.count_nonzero(labels[rows, cols]))
        detected += int(labels.max())
    return {"coverage": covered / annotated, "annotated": annotated, "detected": detected}


def f1_score(truth: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the positive class."""
    tp = float(np.sum(truth & predicted))
    fp = float(np.sum(~truth & predicted))
    fn = float(np.sum(truth & ~predicted))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def fit(train: pd.DataFrame, *, seed: int = 0) -> LymphocyteClassifier:
    """Logistic regression + threshold tuned by leave-one-image-out predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = lymphocyte_features(train).loc[:, list(FEATURES)].to_numpy()
    y = (train["cls"] == "inflammatory").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000,
                                                               random_state=seed))
    oof = cross_val_predict(model, x, y, groups=train["image"], cv=GroupKFold(5),
                            method="predict_proba")[:, 1]
    grid = np.linspace(0.2, 0.8, 61)
    scores = [f1_score(y, oof >= t) for t in grid]
    threshold = float(grid[int(np.argmax(scores))])
    model.fit(x, y)
    scaler, logistic = model[0], model[1]
    return LymphocyteClassifier(FEATURES, scaler.mean_, scaler.scale_, logistic.coef_[0],
                                float(logistic.intercept_[0]), threshold,
                                {"cv_f1_train": float(max(scores))})


def evaluate(model: LymphocyteClassifier, table: pd.DataFrame) -> dict:
    """F1, precision and recall of the inflammatory class on matched nuclei."""
    truth = (table["cls"] == "inflammatory").to_numpy()
    predicted = model.predict(table)
    tp = int(np.sum(truth & predicted))
    return {"f1": f1_score(truth, predicted),
            "precision": tp / max(int(predicted.sum()), 1),
            "recall": tp / max(int(truth.sum()), 1), "n_nuclei": int(len(table)),
            "n_inflammatory": int(truth.sum())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--segmenter", choices=("watershed", "stardist"), default="stardist")
    parser.add_argument("--model", default=DEFAULT_SEGMENTATION_MODEL,
                        help="StarDist model for --segmenter stardist (folder or name)")
    args = parser.parse_args(argv)
    table = dataset(args.data, segmenter=args.segmenter, model_spec=args.model)
    matched = table[table["cls"] != ""]
    test_mask = matched["image"].isin(TEST_IMAGES)
    train, test = matched[~test_mask], matched[test_mask]
    model = fit(train)
    metrics_test = evaluate(model, test)
    metrics_train = evaluate(model, train)
    n_points = {"nuclei_detected": int(len(table)), "nuclei_matched": int(len(matched))}
    meta = {**model.meta, "segmenter": args.segmenter,
            "segmentation_model": args.model if args.segmenter == "stardist" else None,
            "mpp": MPP, "match_um": MATCH_UM,
            "train_images": sorted(set(train["image"])), "test_images": list(TEST_IMAGES),
            "test": metrics_test, "train": metrics_train, **n_points,
            "data": "CRCHistoPhenotypes (Sirinukunwattana et al., IEEE TMI 2016), 14 images"}
    model = LymphocyteClassifier(model.features, model.mean, model.scale, model.coef,
                                 model.intercept, model.threshold, meta)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / MODEL_FILE).write_text(json.dumps(model.to_json(), indent=2) + "\n")
    (OUT / "MODEL_CARD.md").write_text(card(model))
    print(json.dumps(meta, indent=2))


def card(model: LymphocyteClassifier) -> str:
    """MODEL_CARD.md text from the recorded facts."""
    m = model.meta
    test, train = m["test"], m["train"]
    segmenter = ("classical Otsu + distance-transform watershed, pathology.watershed: the "
                 "StarDist H&E model was still training" if m["segmenter"] == "watershed"
                 else "the shipped StarDist model "
                 f"{m.get('segmentation_model') or 'models/he_nuclei'}")
    rows = "\n".join(
        f"| {split} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
        f"{r['n_nuclei']} | {r['n_inflammatory']} |"
        for split, r in (("test (held-out images)", test), ("train", train)))
    weights = "\n".join(f"| {f} | {c:+.3f} |" for f, c in zip(model.features, model.coef,
                                                                strict=True))
    return f"""# H&E lymphocyte classifier (`models/lymphocyte_classifier`)

Logistic regression on nuclear morphology and stain features from cells.parquet columns
(`pathology.lymphocytes.lymphocyte_features`), stored as plain JSON (`model.json`: feature
names, standardisation, coefficients, threshold). Trained by `models/train_lymphocytes.py`.

## Intended use
Tell lymphocytes (tumour-infiltrating lymphocytes) from other nuclei in H&E slides, for the
`he` panel (`configs/panels/he.yaml`). Not for IHC or fluorescence.

## Data
{m['data']}: colorectal adenocarcinoma H&E, 500x500 px at 20x (about {m['mpp']} um/px),
nucleus centroids per class; "inflammatory" (lymphocytes, plasma cells, neutrophils,
eosinophils) is the positive class. Licence: research use only (not redistributed).

- Training images: {', '.join(m['train_images'])}
- Held-out test images (never seen in training or threshold tuning): {', '.join(m['test_images'])}

## Nuclei
Segmented with **{m['segmenter']}** ({segmenter}),
measured with `pathology.cells.measure_labels` (ring width 2 um). A nucleus takes the class of
the nearest annotated centroid within {m['match_um']} um; {m['nuclei_matched']} of
{m['nuclei_detected']} detected nuclei matched an annotation (unmatched ones are not used).

## Accuracy (matched nuclei, inflammatory vs rest)
| split | F1 | precision | recall | nuclei | inflammatory |
|---|---|---|---|---|---|
{rows}

Threshold {model.threshold:.2f}, tuned on leave-images-out predictions of the training images
(cross-validated F1 {m['cv_f1_train']:.3f}). `tests/pathology/test_lymphocytes.py` recomputes the
test F1 from the shipped file.

## Coefficients (standardised features)
| feature | coefficient |
|---|---|
{weights}

## Limitations
Colorectal, not liver, tissue; one stain batch; 20x images while slides run at 0.5 um/px;
the class "inflammatory" includes plasma cells and granulocytes; nuclei missed by the
segmenter are not scored. Retrain when the default StarDist model changes.
"""


if __name__ == "__main__":
    main()
