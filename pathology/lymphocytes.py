"""H&E lymphocytes: a logistic-regression classifier on nuclear morphology and stain features.

The shipped model (``models/lymphocyte_classifier/model.json``) is plain JSON: feature names,
standardisation, coefficients and the decision threshold; it is trained by
``models/train_lymphocytes.py`` and described in its MODEL_CARD.md. Features come from
cells.parquet alone, so a slide can be re-classified without re-segmenting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pathology.panels import PROJECT_ROOT

MODEL_FILE = "model.json"
BASE_COLUMNS = ("area_um2", "perimeter_um", "eccentricity", "solidity", "major_axis_um",
                "minor_axis_um", "nucleus_hematoxylin_od", "nucleus_eosin_od",
                "ring_hematoxylin_od", "ring_eosin_od")


class LymphocyteModelError(ValueError):
    """The classifier file is missing or invalid, or the cells lack a needed column."""


def lymphocyte_features(cells: pd.DataFrame) -> pd.DataFrame:
    """Features of each nucleus for the classifier (all from cells.parquet columns).

    Morphology (area, perimeter, eccentricity, solidity, axes, roundness ``4 pi A / P^2``),
    hematoxylin and eosin optical density in the nucleus and its ring, and their contrast.

    Raises
    ------
    LymphocyteModelError
        A needed column is missing.
    """
    missing = [c for c in BASE_COLUMNS if c not in cells]
    if missing:
        raise LymphocyteModelError(f"cells table lacks {', '.join(missing)} (needed by the "
                                   "lymphocyte classifier; re-run slides with ring columns)")
    f = cells.loc[:, list(BASE_COLUMNS)].astype(np.float64).copy()
    f["ring_hematoxylin_od"] = f["ring_hematoxylin_od"].fillna(f["nucleus_hematoxylin_od"])
    f["ring_eosin_od"] = f["ring_eosin_od"].fillna(f["nucleus_eosin_od"])
    f["log_area"] = np.log(np.maximum(f["area_um2"], 1e-3))
    f["roundness"] = 4 * np.pi * f["area_um2"] / np.maximum(f["perimeter_um"], 1e-3) ** 2
    f["axis_ratio"] = f["minor_axis_um"] / np.maximum(f["major_axis_um"], 1e-3)
    f["h_contrast"] = f["nucleus_hematoxylin_od"] - f["ring_hematoxylin_od"]
    f["e_contrast"] = f["ring_eosin_od"] - f["nucleus_eosin_od"]
    return f.fillna(0.0)


@dataclass(frozen=True)
class LymphocyteClassifier:
    """A fitted logistic regression stored as JSON.

    Attributes
    ----------
    features
        Feature names, in coefficient order.
    mean, scale
        Standardisation.
    coef, intercept
        Logistic-regression parameters.
    threshold
        Probability at and above which a nucleus is a lymphocyte.
    meta
        Provenance (training images, F1 on held-out images, segmentation used).
    """

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float
    meta: dict

    def probability(self, cells: pd.DataFrame) -> np.ndarray:
        """Probability that each nucleus is a lymphocyte."""
        table = lymphocyte_features(cells)
        x = (table.loc[:, list(self.features)].to_numpy() - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(x @ self.coef + self.intercept)))

    def predict(self, cells: pd.DataFrame) -> np.ndarray:
        """Boolean lymphocyte call per nucleus."""
        return self.probability(cells) >= self.threshold

    def to_json(self) -> dict:
        """JSON-serialisable parameters."""
        return {"features": list(self.features), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": float(self.intercept), "threshold": float(self.threshold),
                "meta": self.meta}


def load_lymphocyte_model(spec: str | Path) -> LymphocyteClassifier:
    """Load the classifier from a folder holding ``model.json`` (relative to the project root).

    Raises
    ------
    LymphocyteModelError
        Missing or malformed file.
    """
    folder = Path(spec)
    folder = folder if folder.is_absolute() else PROJECT_ROOT / folder
    path = folder / MODEL_FILE if folder.suffix != ".json" else folder
    if not path.is_file():
        raise LymphocyteModelError(f"{path}: lymphocyte classifier not found (train it with "
                                   "models/train_lymphocytes.py)")
    try:
        data = json.loads(path.read_text())
        return LymphocyteClassifier(tuple(data["features"]), np.asarray(data["mean"]),
                                    np.asarray(data["scale"]), np.asarray(data["coef"]),
                                    float(data["intercept"]), float(data["threshold"]),
                                    dict(data.get("meta", {})))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise LymphocyteModelError(f"{path}: malformed classifier ({error})") from error
