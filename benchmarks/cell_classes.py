"""H&E nucleus classes across organs: the lymphocyte call per organ, three approaches compared.

Every BRCA-M2C tile (breast) and CRCHistoPhenotypes image (colon) goes once through
``hccbio slides run`` with the nucleus-class network configured
(``phenotypes.lymphocyte_model``), so each detected nucleus carries both its shape and stain
columns and the network's class probabilities. Nuclei are matched one-to-one to the annotated
points within ``MATCH_UM``; scores are on matched nuclei of the **report** images, which no
approach trained or tuned on (the splits of ``models/train_cell_classes.py``):

- ``patch_cnn``: the pipeline's own lymphocyte call with the network (the shipped default);
- ``features_two_organs``: the logistic regression on shape and stain columns
  (:func:`pathology.cells.lymphocytes.lymphocyte_features`) refitted here on the same
  training images of both organs, its threshold chosen on the same tune images;
- ``features_colon``: the previous default, the logistic model trained on colon only
  (``models/lymphocyte_classifier``).

Per organ: lymphocyte precision / recall / F1, the share of tumour (and stromal) nuclei called
lymphocytes, and per report image (the dense infiltrate of CRC img29 among them). Written to
``benchmarks/results/cell_classes.json`` and as a table into benchmarks/README.md.

Usage: ``python -m benchmarks.cell_classes [--model models/he_cell_classes]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reports import save_report, write_block  # noqa: E402
from hcccore.atomic import write_text as atomic_write_text  # noqa: E402
from models.train_cell_classes import choose_threshold, split_images  # noqa: E402
from pathology.cells.nucleus_classes import CELL_CLASSES, MODEL_FILE  # noqa: E402
from pathology.evaluation.annotations import AnnotatedPoints, shared_data_folder  # noqa: E402
from pathology.evaluation.harness import (  # noqa: E402
    annotated_tile_config,
    detection_scores,
    match_centroids,
    run_pipeline,
)

MATCH_UM = 4.0
RESULT = ROOT / "benchmarks" / "results" / "cell_classes.json"
TARGET_F1, TARGET_TUMOUR_SHARE = 0.75, 0.05
DEFAULT_MODEL = "models/he_cell_classes"
COLON_MODEL = "models/lymphocyte_classifier"


def matched_cells(items: list[AnnotatedPoints], results) -> pd.DataFrame:
    """The pipeline's nuclei matched to annotated points, with the point's class (``truth``)
    and the image name."""
    tables = []
    for item, result in zip(items, results, strict=True):
        xy, classes = item.centroids_um()
        cells = result.cells
        t_idx, p_idx = match_centroids(xy, cells[["x_um", "y_um"]].to_numpy(), MATCH_UM)
        table = cells.iloc[p_idx].copy()
        table["truth"] = classes[t_idx]
        table["image"] = item.name
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def call_scores(truth: np.ndarray, called: np.ndarray) -> dict:
    """Lymphocyte precision / recall / F1 and the share of each other class called
    lymphocyte."""
    is_lym = truth == "lymphocyte"
    scores = detection_scores(int(is_lym.sum()), int(called.sum()), int((is_lym & called).sum()))
    for cls in ("tumour", "stromal", "other"):
        mask = truth == cls
        scores[f"{cls}_called_lymphocyte"] = float(called[mask].mean()) if mask.any() else None
    scores["n_matched"] = int(len(truth))
    return scores


def features_model(train: pd.DataFrame, tune: dict[str, pd.DataFrame]):
    """Logistic regression on the shape and stain columns, fitted on ``train``, its
    lymphocyte threshold chosen on the tune tables of both organs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pathology.cells.lymphocytes import lymphocyte_features

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=0))
    model.fit(lymphocyte_features(train).to_numpy(), train["truth"].to_numpy().astype(str))
    order = [list(model.classes_).index(c) if c in model.classes_ else None
             for c in CELL_CLASSES]

    def probabilities(cells: pd.DataFrame) -> np.ndarray:
        p = model.predict_proba(lymphocyte_features(cells).to_numpy())
        return np.stack([p[:, k] if k is not None else np.zeros(len(p)) for k in order], 1)

    truth_index = {o: np.array([CELL_CLASSES.index(c) for c in t["truth"]])
                   for o, t in tune.items()}
    threshold = choose_threshold({o: (probabilities(t), truth_index[o])
                                  for o, t in tune.items()})
    lym = CELL_CLASSES.index("lymphocyte")
    return (lambda cells: probabilities(cells)[:, lym] >= threshold), threshold


def measure(data: Path, model: str, work: Path) -> dict:
    """Run the pipeline over every image and score the three approaches per organ."""
    from pathology.cells.lymphocytes import load_lymphocyte_model

    sets = split_images(data)
    config = annotated_tile_config("models/he_nuclei")
    config["phenotypes"] = {"lymphocyte_model": model}
    tables: dict[str, dict[str, pd.DataFrame]] = {}
    for organ, splits in sets.items():
        tables[organ] = {}
        for split, items in splits.items():
            results = run_pipeline(items, work / f"{organ}_{split}", modality="he",
                                   config=config)
            tables[organ][split] = matched_cells(items, results)
    train = pd.concat([tables[o]["train"] for o in tables], ignore_index=True)
    refitted, refit_threshold = features_model(train, {o: tables[o]["tune"] for o in tables})
    colon_model = load_lymphocyte_model(COLON_MODEL)
    approaches = {
        "patch_cnn": lambda cells: cells["lymphocyte_pos"].to_numpy().astype(bool),
        "features_two_organs": refitted,
        "features_colon": colon_model.predict,
    }
    report: dict = {"approaches": {}, "images": {o: {s: [i.name for i in items]
                                                      for s, items in splits.items()}
                                                 for o, splits in sets.items()},
                    "features_two_organs_threshold": refit_threshold}
    for name, call in approaches.items():
        per_organ = {}
        for organ in tables:
            report_table = tables[organ]["report"]
            called = call(report_table)
            truth = report_table["truth"].to_numpy()
            scores = call_scores(truth, called)
            scores["per_image"] = {
                image: call_scores(truth[mask], called[mask])
                for image in sorted(set(report_table["image"]))
                for mask in [report_table["image"].to_numpy() == image]}
            per_organ[organ] = scores
        report["approaches"][name] = per_organ
    return report


def table(report: dict) -> str:
    """Markdown table: one row per approach and organ, with the targets."""
    lines = ["| approach | organ (report images) | lymphocyte F1 | precision | recall | "
             "tumour called lymphocyte | stromal called lymphocyte | matched nuclei |",
             "|---|---|---|---|---|---|---|---|"]
    for name, organs in report["approaches"].items():
        for organ, s in organs.items():
            n_images = len(report["images"][organ]["report"])
            stromal = s["stromal_called_lymphocyte"]
            lines.append(f"| {name} | {organ} ({n_images}) | {s['f1']:.3f} | "
                         f"{s['precision']:.3f} | {s['recall']:.3f} | "
                         f"{s['tumour_called_lymphocyte']:.1%} | "
                         f"{'-' if stromal is None else f'{stromal:.1%}'} | "
                         f"{s['n_matched']} |")
    shipped = report["approaches"]["patch_cnn"]
    lines.append("")
    for organ, s in shipped.items():
        f1_met = "met" if s["f1"] >= TARGET_F1 else "not met"
        share_met = ("met" if s["tumour_called_lymphocyte"] <= TARGET_TUMOUR_SHARE
                     else "not met")
        lines.append(f"- patch_cnn, {organ}: lymphocyte F1 {s['f1']:.3f} against >= "
                     f"{TARGET_F1} ({f1_met}); tumour nuclei called lymphocytes "
                     f"{s['tumour_called_lymphocyte']:.1%} against <= "
                     f"{TARGET_TUMOUR_SHARE:.0%} ({share_met}).")
    dense = shipped["colon"]["per_image"].get("img29")
    if dense is not None:
        lines.append(f"- dense infiltrate (colon img29, {dense['n_true']} annotated "
                     f"lymphocytes matched): recall {dense['recall']:.3f}, precision "
                     f"{dense['precision']:.3f}.")
    return "\n".join(lines)


def model_card(report: dict, folder: Path) -> str:
    """MODEL_CARD.md of the patch network in ``folder`` from its model.json and ``report``."""
    model = json.loads((folder / MODEL_FILE).read_text())
    meta, training = model["meta"], model["meta"]["training"]
    images = training["images"]
    split_lines = "\n".join(
        f"- {organ}: training {len(parts['train'])}, tuning {len(parts['tune'])} "
        f"(`{'`, `'.join(parts['tune'])}`), reporting {len(parts['report'])} "
        f"(`{'`, `'.join(parts['report'])}`)"
        for organ, parts in images.items())
    tune = meta.get("tune", {})
    rule = training.get("threshold_rule", "F1")
    tune_lines = "; ".join(f"{organ} {rule} {s.get('f_beta', s['f1']):.3f}, precision "
                           f"{s['precision']:.3f}, recall {s['recall']:.3f}"
                           for organ, s in tune.items())
    return f"""# Model card: `{folder.name}` (H&E nucleus classes from nucleus-centred patches)

**Intended use.** The class of every H&E nucleus that segmentation finds (lymphocyte,
tumour/epithelial, stromal, other) and the lymphocyte call behind TIL densities
(`configs/panels/he.yaml`, marker `lymphocyte`): a nucleus is a lymphocyte when the
probability of the class `{model['positive_class']}` is at least {model['threshold']:g}. The
network sees a {model['patch_px']} px patch at {model['mpp']} um/px (about
{model['patch_px'] * model['mpp']:.0f} um) centred on the nucleus, cut from the tile while it is
in memory (`pathology.cells.nucleus_classes`); the four probabilities are the `p_<class>` columns of
cells.parquet. Research use; not a medical device. Not for IHC or fluorescence.

## Data

Two organs, points with classes (no outlines):
- BRCA-M2C (Abousamra et al., ICCV 2021; TCGA breast carcinoma H&E at about 0.5 um/px;
  BSD-3-Clause): lymphocyte, tumour/epithelial, stromal.
- CRCHistoPhenotypes (Sirinukunwattana et al., IEEE TMI 2016; colorectal adenocarcinoma H&E,
  about 0.55 um/px, resampled to 0.5; research use only): inflammatory (as lymphocyte),
  epithelial (as tumour), fibroblast (as stromal), others.

Splits by image (`models/train_cell_classes.py:split_images`; the reporting images were never
used to train, to choose the checkpoint or the threshold):
{split_lines}

## Licence

Weights: BSD-3-Clause like the project code; CRCHistoPhenotypes is for research use only, so
the weights inherit that restriction in practice.

## Training

- Keras 3 on TensorFlow (CPU), a small VGG-like network with group normalisation (four
  blocks, 24-128 filters), softmax over the four classes; {training['epochs']} epochs, the
  checkpoint with the best tuning-set macro F1 (epoch {training['best_epoch']}), seed
  {training['seed']}
- Augmentation: stain strength and hue (colour deconvolution, hematoxylin and eosin
  x 0.45-1.8, stain vectors jittered; one patch in five unaltered), scale 0.8-1.25, centre
  shifts of 3 px, blur, brightness, flips and transpositions; the colon training patches
  repeated {training['crc_oversample']} times
- Lymphocyte threshold {model['threshold']:g}: the best mean {rule} of the two organs' tuning
  images, precision weighed over recall so that TIL densities do not count tumour or stromal
  nuclei ({tune_lines}; at the annotated points)

## Accuracy through `hccbio slides run`

From `benchmarks/results/cell_classes.json` ({report['date'][:10]}; `python -m
benchmarks.cell_classes` runs every image through the pipeline with the default segmentation
and matches nuclei to the annotated points within {report['match_um']:g} um). Reporting
images only; the other approaches are shape and stain logistic regressions (one refitted on
the same two-organ training images, one the colon-only default it replaces).

{table(report)}

## Limitations

Two organs, neither liver: hepatocytes and HCC cells were never seen, and plasma cells,
neutrophils and eosinophils count as lymphocytes (the colon set's "inflammatory"). The breast
report set is the 10 BRCA-M2C validation tiles (its 30-tile test split is not available here).
The classes follow the segmentation: a nucleus the model misses gets no class.

## Reproduce

```
{training['command']}
python -m benchmarks.cell_classes
```
"""


def update_readme(report: dict) -> None:
    """Replace this report's table in benchmarks/README.md."""
    write_block("cell-classes", heading="H&E nucleus classes across organs",
                date=report["date"], body=table(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="nucleus-class network folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hccbio-cell-classes-") as tmp:
        report = measure(shared_data_folder(), args.model, Path(tmp))
    report.update({"model": args.model, "match_um": MATCH_UM})
    report = save_report(report, args.out, started=started)
    print(table(report))
    if not args.no_readme:
        update_readme(report)
        folder = ROOT / args.model
        atomic_write_text(folder / "MODEL_CARD.md", model_card(report, folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
