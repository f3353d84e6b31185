"""H&E nucleus classes and lymphocytes: logistic regression on nuclear morphology and stain.

The shipped model (``models/lymphocyte_classifier/model.json``) is plain JSON: feature names,
standardisation, the classes (CRCHistoPhenotypes' epithelial, fibroblast, inflammatory,
others), one row of coefficients per class (multinomial) and the probability of the
lymphocyte class at and above which a nucleus is called a lymphocyte. It is trained by
``models/train_lymphocytes.py`` and described in its MODEL_CARD.md. Features come from
cells.parquet alone, so a slide can be re-classified without re-segmenting. A file with one
coefficient row and no classes is a binary (lymphocyte vs rest) model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pathology.config import PROJECT_ROOT

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
    """A fitted (multinomial or binary) logistic regression stored as JSON.

    Attributes
    ----------
    features
        Feature names, in coefficient order.
    mean, scale
        Standardisation.
    coef, intercept
        Logistic-regression parameters: ``(K, F)`` and ``(K,)`` for ``K`` classes, or
        ``(F,)`` and a scalar for a binary model.
    threshold
        Probability of the lymphocyte class at and above which a nucleus is a lymphocyte.
    meta
        Provenance (training images, scores on held-out images, segmentation used).
    classes
        Class names in coefficient-row order (empty for a binary model).
    positive_class
        The class called "lymphocyte".
    """

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray | float
    threshold: float
    meta: dict
    classes: tuple[str, ...] = ()
    positive_class: str = "inflammatory"

    def _standardised(self, cells: pd.DataFrame) -> np.ndarray:
        table = lymphocyte_features(cells)
        return (table.loc[:, list(self.features)].to_numpy() - self.mean) / self.scale

    def probabilities(self, cells: pd.DataFrame) -> np.ndarray:
        """``(n, K)`` class probabilities (softmax); a binary model gives ``(n, 2)``:
        rest, lymphocyte."""
        x = self._standardised(cells)
        if not self.classes:
            p = 1.0 / (1.0 + np.exp(-(x @ self.coef + self.intercept)))
            return np.stack([1 - p, p], axis=1)
        z = x @ np.asarray(self.coef).T + np.asarray(self.intercept)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def probability(self, cells: pd.DataFrame) -> np.ndarray:
        """Probability that each nucleus is a lymphocyte."""
        column = self.classes.index(self.positive_class) if self.classes else 1
        return self.probabilities(cells)[:, column]

    def predict_class(self, cells: pd.DataFrame) -> np.ndarray:
        """The most probable class of each nucleus (object array of class names)."""
        names = np.asarray(self.classes or ("other", self.positive_class), dtype=object)
        return names[np.argmax(self.probabilities(cells), axis=1)] if len(cells) else (
            np.zeros(0, dtype=object))

    def predict(self, cells: pd.DataFrame) -> np.ndarray:
        """Boolean lymphocyte call per nucleus."""
        return self.probability(cells) >= self.threshold

    def to_json(self) -> dict:
        """JSON-serialisable parameters."""
        data = {"features": list(self.features), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": np.asarray(self.coef).tolist(),
                "intercept": np.asarray(self.intercept).tolist(),
                "threshold": float(self.threshold), "meta": self.meta}
        if self.classes:
            data.update({"classes": list(self.classes), "positive_class": self.positive_class})
        return data


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
        classes = tuple(data.get("classes", ()))
        coef = np.asarray(data["coef"], dtype=np.float64)
        intercept = np.asarray(data["intercept"], dtype=np.float64)
        n_features = len(data["features"])
        expected = (len(classes), n_features) if classes else (n_features,)
        if coef.shape != expected or intercept.shape != expected[:-1]:
            raise ValueError(f"coefficients of shape {coef.shape}, expected {expected}")
        positive = str(data.get("positive_class", "inflammatory"))
        if classes and positive not in classes:
            raise ValueError(f"positive class {positive!r} is not among {classes}")
        return LymphocyteClassifier(tuple(data["features"]), np.asarray(data["mean"]),
                                    np.asarray(data["scale"]), coef,
                                    intercept if classes else float(intercept),
                                    float(data["threshold"]), dict(data.get("meta", {})),
                                    classes, positive)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise LymphocyteModelError(f"{path}: malformed classifier ({error})") from error
