"""StarDist nucleus segmentation: model loading, normalisation, and one tile at a time.

A model is a folder (``config.json``, ``weights_best.h5``, ``thresholds.json`` and hccbio's
``hccbio_model.json`` that states the normalisation it was trained with) or a registered
pretrained name (``2D_versatile_he``, ``2D_versatile_fluo``), loaded with
``StarDist2D.from_pretrained`` when a network is there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PRETRAINED = {
    # name: normalisation those models were trained with (per-image percentiles)
    "2D_versatile_he": {"method": "percentile", "low": 1.0, "high": 99.8},
    "2D_versatile_fluo": {"method": "percentile", "low": 1.0, "high": 99.8},
    "2D_paper_dsb2018": {"method": "percentile", "low": 1.0, "high": 99.8},
}
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ModelError(ValueError):
    """A segmentation model cannot be found or loaded; the message says which and why."""


@dataclass
class NucleusModel:
    """A loaded StarDist model with the facts needed to use and trace it."""

    name: str
    model: Any  # stardist.models.StarDist2D
    normalization: dict[str, float | str]
    n_channel_in: int
    prob_thresh: float
    nms_thresh: float
    mpp: float | None
    sha256: str
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Provenance record for run.json."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "normalization": self.normalization, "prob_thresh": self.prob_thresh,
                "nms_thresh": self.nms_thresh, "mpp": self.mpp}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_model_path(spec: str) -> Path | None:
    """The model folder that ``spec`` names, or None if ``spec`` is not a folder."""
    candidate = Path(spec)
    for path in ([candidate] if candidate.is_absolute() else
                 [Path.cwd() / candidate, PROJECT_ROOT / candidate]):
        if (path / "config.json").is_file():
            return path
    return None


def load_model(spec: str, *, prob_thresh: float | None = None,
               nms_thresh: float | None = None) -> NucleusModel:
    """Load a StarDist 2D model from a folder or by pretrained name.

    Parameters
    ----------
    spec
        A model folder (absolute, or relative to the current folder or the project root) or a
        registered pretrained name such as ``2D_versatile_he``.
    prob_thresh, nms_thresh
        Overrides of the model's tuned thresholds.

    Raises
    ------
    ModelError
        Unknown name or folder, missing weights, or a pretrained model that cannot be
        downloaded (no network).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from stardist.models import StarDist2D

    folder = resolve_model_path(spec)
    if folder is not None:
        weights = folder / "weights_best.h5"
        if not weights.is_file():
            raise ModelError(f"{folder}: model folder has no weights_best.h5")
        meta_path = folder / "hccbio_model.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        normalization = meta.get("normalization", {"method": "percentile", "low": 1.0,
                                                   "high": 99.8})
        try:
            model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
        except Exception as error:
            raise ModelError(f"{folder}: StarDist could not load this model: {error}") from error
        source, sha, mpp = str(folder), file_sha256(weights), meta.get("mpp")
    elif spec in PRETRAINED:
        try:
            model = StarDist2D.from_pretrained(spec)
        except Exception as error:
            raise ModelError(f"pretrained StarDist model {spec!r} could not be loaded ({error}); "
                             "without a network use a model folder such as models/he_nuclei"
                             ) from error
        if model is None:
            raise ModelError(f"pretrained StarDist model {spec!r} is not registered")
        normalization, source, mpp = PRETRAINED[spec], f"pretrained:{spec}", None
        weights = Path(model.logdir) / "weights_best.h5"
        sha = file_sha256(weights) if weights.is_file() else "unknown"
    else:
        raise ModelError(f"segmentation model {spec!r} is neither a model folder (with "
                         f"config.json) nor a pretrained name ({', '.join(PRETRAINED)})")
    thresholds = model.thresholds
    return NucleusModel(
        name=Path(spec).name, model=model, normalization=dict(normalization),
        n_channel_in=int(model.config.n_channel_in),
        prob_thresh=float(prob_thresh if prob_thresh is not None else thresholds.prob),
        nms_thresh=float(nms_thresh if nms_thresh is not None else thresholds.nms),
        mpp=mpp, sha256=sha, source=source,
    )


def normalization_range(model: NucleusModel, sample: np.ndarray) -> tuple[float, float]:
    """The (low, high) intensities that map to 0 and 1 for this slide.

    Fixed ranges come from the model; percentile normalisation is computed once per slide
    (on ``sample``, e.g. the tissue pixels of the overview), never per tile, so that a nucleus
    gets the same input whichever tile it is cut from.
    """
    norm = model.normalization
    if norm["method"] == "fixed":
        return float(norm["low"]), float(norm["high"])
    values = sample.astype(np.float32).ravel()
    if values.size == 0:
        raise ValueError("cannot compute percentile normalisation on an empty sample")
    low, high = np.percentile(values, [float(norm["low"]), float(norm["high"])])
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


@dataclass(frozen=True)
class TileNuclei:
    """Nuclei found in a tile read box: labels plus one record per label."""

    labels: np.ndarray  # int32, 0 = background, i + 1 = record i
    points: np.ndarray  # (n, 2) star-convex centres (row, col) in read-box pixels
    prob: np.ndarray  # (n,)
    coord: np.ndarray  # (n, 2, n_rays) polygon vertices (row, col) in read-box pixels


def segment_tile(model: NucleusModel, image: np.ndarray,
                 norm_range: tuple[float, float]) -> TileNuclei:
    """Run StarDist on one tile read box.

    Parameters
    ----------
    model
        From :func:`load_model`.
    image
        ``(H, W, C)`` pixels at the model's resolution; ``C`` must match the model input.
    norm_range
        From :func:`normalization_range`.

    Returns
    -------
    TileNuclei
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] != model.n_channel_in:
        raise ValueError(f"model {model.name} expects {model.n_channel_in} channel(s), the tile "
                         f"has {image.shape[2]}")
    low, high = norm_range
    x = (image.astype(np.float32) - low) / (high - low)
    if model.n_channel_in == 1:
        x = x[..., 0]
    labels, details = model.model.predict_instances(
        x, prob_thresh=model.prob_thresh, nms_thresh=model.nms_thresh, show_tile_progress=False,
        verbose=False)
    n_rays = int(model.model.config.n_rays)
    prob = np.asarray(details["prob"], dtype=np.float32).reshape(-1)
    return TileNuclei(labels.astype(np.int32),
                      np.asarray(details["points"]).reshape(len(prob), 2),
                      prob, np.asarray(details["coord"], dtype=np.float32).reshape(
                          len(prob), 2, n_rays))
