"""Train the H&E nucleus classifier (four CRCHistoPhenotypes classes; lymphocyte call) and write
its model card.

Nuclei come from ``hccbio slides run`` itself (:func:`pathology.evaluation.harness.run_pipeline`:
the images are read, resampled to 0.5 um/px, segmented by the pipeline's brightfield model, or
``--model``, and measured exactly as any slide), and each takes the class of the annotated
centroid it is matched to one-to-one within ``MATCH_UM`` (epithelial, fibroblast,
inflammatory, others; unmatched nuclei are not used). A multinomial logistic regression is
fitted on the training images; the lymphocyte call is "probability of inflammatory >=
threshold", the threshold chosen on leave-images-out predictions of the training images to
maximise F0.5 (precision weighs twice recall: TIL densities must not count tumour nuclei).
``TEST_IMAGES`` are never seen in training or tuning.

Stain batches differ: the 14 images are one colorectal batch, and a slide stained darker or
paler shifts every optical-density feature. The training images are therefore also rendered
at other stain strengths (``STAIN_SHIFTS``, :func:`pathology.segmentation.stains.rescale_stains`:
each image's hematoxylin and eosin optical densities scaled), segmented again through the pipeline
and added to the training nuclei; the held-out images are scored at the original and at each
shifted strength. ``--stain-shifts none`` trains on the original images only.

Usage: ``python models/train_lymphocytes.py [--data ../shared/data] [--model models/bf_nuclei]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pathology.cells.lymphocytes import (  # noqa: E402
    MODEL_FILE,
    LymphocyteClassifier,
    lymphocyte_features,
)
from pathology.config import SegmentationSection  # noqa: E402
from pathology.evaluation.annotations import (  # noqa: E402
    CRC_CLASSES,
    load_crchistophenotypes,
    shared_data_folder,
    stain_shift_key,
)
from pathology.evaluation.harness import (  # noqa: E402
    annotated_tile_config,
    match_centroids,
    run_pipeline,
)

DEFAULT_SEGMENTATION_MODEL = SegmentationSection().brightfield_model
MATCH_UM = 4.0
CLASSES = CRC_CLASSES
POSITIVE = "inflammatory"
BETA = 0.5  # F-beta of the lymphocyte call used to choose its threshold
TEST_IMAGES = ("img2", "img29", "img51", "img67")  # fixed held-out images (every 4th, sorted)
FEATURES = ("log_area", "perimeter_um", "eccentricity", "solidity", "major_axis_um",
            "minor_axis_um", "roundness", "axis_ratio", "nucleus_hematoxylin_od",
            "nucleus_eosin_od", "ring_hematoxylin_od", "ring_eosin_od", "h_contrast",
            "e_contrast")
OUT = ROOT / "models" / "lymphocyte_classifier"
# (hematoxylin, eosin) optical-density factors: paler, darker, hematoxylin-heavy. MoNuSeg's
# TCGA tiles have 1.2-2.6 times these images' median nuclear hematoxylin density.
STAIN_SHIFTS: tuple[tuple[float, float], ...] = ((0.7, 0.8), (1.5, 1.5), (2.0, 1.0))


def dataset(data: Path, *, model_spec: str, images: tuple[str, ...] | None = None,
            stain: tuple[float, float] = (1.0, 1.0)) -> pd.DataFrame:
    """The pipeline's nuclei of every (or the named) CRCHistoPhenotypes image, with the class
    of their matched annotation (``cls``, '' when unmatched), the image name and the
    ``stain`` (hematoxylin, eosin) factors the image was re-rendered with (``stain_shift``)."""
    items = load_crchistophenotypes(data / "nuclei" / "crchistophenotypes")
    if images is not None:
        items = [i for i in items if i.name in images]
    shown = [i.restained(*stain) for i in items] if stain != (1.0, 1.0) else items
    with tempfile.TemporaryDirectory(prefix="hccbio-lymphocytes-") as work:
        results = run_pipeline(shown, Path(work), modality="he",
                               config=annotated_tile_config(model_spec))
    tables = []
    for item, result in zip(items, results, strict=True):
        cells = result.cells.copy()
        xy, classes = item.centroids_um()
        t_idx, p_idx = match_centroids(xy, cells[["x_um", "y_um"]].to_numpy(), MATCH_UM)
        cls = np.full(len(cells), "", dtype=object)
        cls[p_idx] = classes[t_idx]
        cells["cls"] = cls
        cells["image"] = item.name
        cells["stain_shift"] = stain_shift_key(*stain)
        tables.append(cells)
    return pd.concat(tables, ignore_index=True)


def parse_shifts(text: str) -> tuple[tuple[float, float], ...]:
    """``"0.7:0.8,1.5:1.5"`` -> ``((0.7, 0.8), (1.5, 1.5))``; ``"none"`` -> ``()``."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        shifts = tuple(tuple(float(v) for v in part.split(":")) for part in text.split(","))
    except ValueError as error:
        raise SystemExit(f"--stain-shifts {text!r}: expected h:e pairs ({error})") from error
    if any(len(s) != 2 or min(s) <= 0 for s in shifts):
        raise SystemExit(f"--stain-shifts {text!r}: expected positive h:e pairs")
    return shifts


def f1_score(truth: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the positive class."""
    tp = float(np.sum(truth & predicted))
    fp = float(np.sum(~truth & predicted))
    fn = float(np.sum(truth & ~predicted))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def f_beta(truth: np.ndarray, predicted: np.ndarray, beta: float = BETA) -> float:
    """F-beta of the positive class (beta < 1 weighs precision more)."""
    tp = float(np.sum(truth & predicted))
    fp = float(np.sum(~truth & predicted))
    fn = float(np.sum(truth & ~predicted))
    b2 = beta * beta
    return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp) if tp else 0.0


def fit(train: pd.DataFrame, *, seed: int = 0) -> LymphocyteClassifier:
    """Multinomial logistic regression; the lymphocyte threshold is chosen on leave-images-out
    predictions of the training images (F0.5)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = lymphocyte_features(train).loc[:, list(FEATURES)].to_numpy()
    y = train["cls"].to_numpy().astype(str)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000,
                                                               random_state=seed))
    oof = cross_val_predict(model, x, y, groups=train["image"], cv=GroupKFold(5),
                            method="predict_proba")
    classes = sorted(set(y))
    p_positive = oof[:, classes.index(POSITIVE)]
    truth = y == POSITIVE
    grid = np.linspace(0.2, 0.9, 71)
    scores = [f_beta(truth, p_positive >= t) for t in grid]
    threshold = float(grid[int(np.argmax(scores))])
    called = p_positive >= threshold
    model.fit(x, y)
    scaler, logistic = model[0], model[1]
    assert list(logistic.classes_) == classes  # sklearn sorts class labels
    return LymphocyteClassifier(
        FEATURES, scaler.mean_, scaler.scale_, logistic.coef_, logistic.intercept_, threshold,
        {"cv_f_beta_train": float(max(scores)), "cv_f1_train": f1_score(truth, called),
         "beta": BETA}, tuple(classes), POSITIVE)


def evaluate(model: LymphocyteClassifier, table: pd.DataFrame) -> dict:
    """Lymphocyte call (inflammatory vs rest) and per-class precision and recall, on matched
    nuclei."""
    truth = (table["cls"] == POSITIVE).to_numpy()
    predicted = model.predict(table)
    tp = int(np.sum(truth & predicted))
    classes = model.predict_class(table)
    per_class = {}
    for name in model.classes:
        t, p = table["cls"].to_numpy() == name, classes == name
        hit = int(np.sum(t & p))
        per_class[name] = {"precision": hit / max(int(p.sum()), 1),
                           "recall": hit / max(int(t.sum()), 1), "n": int(t.sum())}
    return {"f1": f1_score(truth, predicted),
            "precision": tp / max(int(predicted.sum()), 1),
            "recall": tp / max(int(truth.sum()), 1), "n_nuclei": int(len(table)),
            "n_inflammatory": int(truth.sum()),
            "accuracy_4class": float(np.mean(classes == table["cls"].to_numpy())),
            "per_class": per_class}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data_folder(must_exist=False))
    parser.add_argument("--model", default=DEFAULT_SEGMENTATION_MODEL,
                        help="StarDist model that segments (folder or name)")
    parser.add_argument("--stain-shifts", default=",".join(f"{h:g}:{e:g}" for h, e in STAIN_SHIFTS),
                        help="(hematoxylin:eosin) factors the training images are also rendered "
                             "with, comma-separated, or 'none' (default: %(default)s)")
    args = parser.parse_args(argv)
    shifts = parse_shifts(args.stain_shifts)
    tables = [dataset(args.data, model_spec=args.model)]
    tables += [dataset(args.data, model_spec=args.model, stain=shift) for shift in shifts]
    table = pd.concat(tables, ignore_index=True)
    matched = table[table["cls"] != ""]
    test_mask = matched["image"].isin(TEST_IMAGES)
    original = matched["stain_shift"] == "1,1"
    train, test = matched[~test_mask], matched[test_mask & original]
    model = fit(train)
    metrics_test = evaluate(model, test)
    metrics_train = evaluate(model, train[train["stain_shift"] == "1,1"])
    shifted = {name: evaluate(model, group)
               for name, group in matched[test_mask & ~original].groupby("stain_shift")}
    n_points = {"nuclei_detected": int((table["stain_shift"] == "1,1").sum()),
                "nuclei_matched": int(original.sum())}
    meta = {**model.meta, "segmenter": "stardist", "segmentation_model": args.model,
            "nuclei_from": "hccbio slides run (pathology.evaluation.harness.run_pipeline)",
            "match_um": MATCH_UM, "stain_shifts": [list(s) for s in shifts],
            "train_images": sorted(set(train["image"])), "test_images": list(TEST_IMAGES),
            "test": metrics_test, "train": metrics_train, "test_stain_shifts": shifted,
            **n_points,
            "data": "CRCHistoPhenotypes (Sirinukunwattana et al., IEEE TMI 2016), 14 images"}
    model = LymphocyteClassifier(model.features, model.mean, model.scale, model.coef,
                                 model.intercept, model.threshold, meta, model.classes,
                                 model.positive_class)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / MODEL_FILE).write_text(json.dumps(model.to_json(), indent=2) + "\n")
    (OUT / "MODEL_CARD.md").write_text(card(model))
    print(json.dumps(meta, indent=2))


def card(model: LymphocyteClassifier) -> str:
    """MODEL_CARD.md text from the recorded facts."""
    m = model.meta
    test, train = m["test"], m["train"]
    rows = "\n".join(
        f"| {split} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
        f"{r['n_nuclei']} | {r['n_inflammatory']} |"
        for split, r in (("test (held-out images)", test), ("train", train)))
    shifted = m.get("test_stain_shifts", {})
    shift_rows = "\n".join(
        f"| test, hematoxylin x{name.split(',')[0]}, eosin x{name.split(',')[1]} | "
        f"{r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['n_nuclei']} | "
        f"{r['n_inflammatory']} |" for name, r in shifted.items())
    shifts = m.get("stain_shifts", [])
    stain_text = (
        "The training images were also re-rendered at "
        + ", ".join(f"hematoxylin x{h:g} / eosin x{e:g}" for h, e in shifts)
        + " (`pathology.segmentation.stains.rescale_stains`: colour deconvolution, each stain's "
        "optical density scaled) and segmented again through the pipeline, so that the call "
        "does not hinge on this one batch's stain strength; the held-out images are scored at each "
        "strength too (rows \"test, hematoxylin x...\")." if shifts else
        "Trained at this batch's stain strength only.")
    per_class = "\n".join(
        f"| {name} | {test['per_class'][name]['precision']:.3f} | "
        f"{test['per_class'][name]['recall']:.3f} | {test['per_class'][name]['n']} |"
        for name in model.classes)
    header = " | ".join(model.classes)
    weights = "\n".join(f"| {f} | " + " | ".join(f"{c:+.3f}" for c in model.coef[:, j]) + " |"
                        for j, f in enumerate(model.features))
    return f"""# H&E nucleus classifier and lymphocyte call (`models/lymphocyte_classifier`)

Multinomial logistic regression on nuclear morphology and stain features from cells.parquet
columns (`pathology.cells.lymphocytes.lymphocyte_features`), stored as plain JSON (`model.json`:
feature names, standardisation, classes, coefficients, lymphocyte threshold). Trained by
`models/train_lymphocytes.py`.

## Intended use
Tell lymphocytes (tumour-infiltrating lymphocytes) from other nuclei in H&E slides, for the
`he` panel (`configs/panels/he.yaml`): a nucleus is a lymphocyte when the probability of the
class "{model.positive_class}" is at least {model.threshold:.2f}. The four class probabilities
(epithelial, fibroblast, inflammatory, others) are available through
`LymphocyteClassifier.predict_class`. Not for IHC or fluorescence.

## Data
{m['data']}: colorectal adenocarcinoma H&E, 500x500 px at 20x (about 0.55 um/px), nucleus
centroids per class; "inflammatory" (lymphocytes, plasma cells, neutrophils, eosinophils) is
the lymphocyte class. Licence: research use only (not redistributed).

- Training images: {', '.join(m['train_images'])}
- Held-out test images (never seen in training or threshold tuning): {', '.join(m['test_images'])}

## Nuclei
From **{m['nuclei_from']}** with the segmentation model `{m['segmentation_model']}`: the same
reader, resampling to 0.5 um/px, segmentation and measurements as any slide. A nucleus takes
the class of the annotated centroid matched to it one-to-one within {m['match_um']} um;
{m['nuclei_matched']} of {m['nuclei_detected']} detected nuclei matched an annotation
(unmatched ones are not used).

## Accuracy: the lymphocyte call (matched nuclei, inflammatory vs rest)
| split | F1 | precision | recall | nuclei | inflammatory |
|---|---|---|---|---|---|
{rows}
{shift_rows}

{stain_text}

Threshold {model.threshold:.2f}, chosen on leave-images-out predictions of the training images
to maximise F{m['beta']:g} (precision weighed over recall; cross-validated F{m['beta']:g}
{m['cv_f_beta_train']:.3f}, F1 {m['cv_f1_train']:.3f}). `tests/pathology/test_lymphocytes.py`
recomputes the test figures from the shipped file, and `python -m benchmarks.accuracy` reports
the call through `hccbio slides run`, with the share of nuclei called lymphocytes on
carcinoma-rich MoNuSeg tiles as a specificity check.

## Accuracy: the four classes (held-out images, most probable class)
| class | precision | recall | nuclei |
|---|---|---|---|
{per_class}

Four-class accuracy {test['accuracy_4class']:.3f}.

## Coefficients (standardised features; one column per class)
| feature | {header} |
|---|{'---|' * len(model.classes)}
{weights}

## Limitations
Colorectal, not liver, tissue; one stain batch (other strengths simulated, not other
hues or scanners); no round non-lymphoid nuclei of other carcinomas among the training
classes, so on other tissue (MoNuSeg's lung and bladder tiles) some round carcinoma nuclei are
still called lymphocytes (the accuracy report's lymphocyte share per tile); 20x images
resampled to 0.5 um/px; the class "inflammatory" includes plasma cells and granulocytes;
nuclei missed by the segmenter are not scored. Retrain when the default StarDist model changes.
"""


if __name__ == "__main__":
    main()
