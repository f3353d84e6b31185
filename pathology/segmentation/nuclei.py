"""StarDist nucleus segmentation: model loading, normalisation, and one tile at a time.

A model is a folder (``config.json``, ``weights_best.h5``, ``thresholds.json`` and hccbio's
``hccbio_model.json`` that states the normalisation it was trained with) or a registered
pretrained name (``2D_versatile_he``, ``2D_versatile_fluo``), loaded with
``StarDist2D.from_pretrained`` when a network is there.

The network runs through TensorFlow or, on CPUs, through OpenVINO (``segmentation.backend``;
:mod:`pathology.segmentation.backends`); everything after it is the same code for both. A model
folder whose network OpenVINO has already converted (cached by the weights' SHA-256) is used without
importing TensorFlow at all: the StarDist model (Keras) is loaded only when TensorFlow runs the
network or a conversion is needed, which keeps a worker's memory to what OpenVINO needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from pathology.config import PROJECT_ROOT

PRETRAINED = {
    # name: normalisation those models were trained with (per-image percentiles)
    "2D_versatile_he": {"method": "percentile", "low": 1.0, "high": 99.8},
    "2D_versatile_fluo": {"method": "percentile", "low": 1.0, "high": 99.8},
    "2D_paper_dsb2018": {"method": "percentile", "low": 1.0, "high": 99.8},
}
log = logging.getLogger("hccbio.pathology")
CANDIDATE_BORDER = 2  # grid cells; StarDist's own default (b=2)
Backend = Literal["auto", "tensorflow", "openvino"]
Precision = Literal["float32", "int8"]
STARDIST_DEFAULT_THRESHOLDS = {"prob": 0.5, "nms": 0.4}  # StarDist2D's when no thresholds.json


class ModelError(ValueError):
    """A segmentation model cannot be found or loaded; the message says which and why."""


@dataclass
class NucleusModel:
    """A loaded StarDist model with the facts needed to use and trace it.

    ``config`` is StarDist's configuration (``config.json``: grid, rays, U-Net); the StarDist
    model itself (``model``, with its Keras network) is loaded on first use, so that a network
    run by OpenVINO from its cache never loads TensorFlow.
    """

    name: str
    config: Any  # stardist Config2D, or config.json as a namespace
    normalization: dict[str, float | str]
    n_channel_in: int
    prob_thresh: float
    nms_thresh: float
    mpp: float | None
    sha256: str
    source: str
    folder: Path | None = None  # the weights' folder (None: unknown)
    backend: str = "tensorflow"  # what runs the network: tensorflow | openvino
    precision: str = "float32"  # float32 | int8 (OpenVINO only)
    extra: dict[str, Any] = field(default_factory=dict)
    loader: Callable[[], Any] | None = field(default=None, repr=False)
    _stardist: Any = field(default=None, repr=False)

    @property
    def model(self) -> Any:
        """The ``stardist.models.StarDist2D`` (loaded with TensorFlow on first use).

        Raises
        ------
        ModelError
            StarDist cannot load the model folder.
        """
        if self._stardist is None:
            if self.loader is None:
                raise ModelError(f"{self.source}: no StarDist model to load")
            self._stardist = self.loader()
        return self._stardist

    @property
    def stardist_loaded(self) -> bool:
        """Whether the StarDist (Keras) model is loaded in this process."""
        return self._stardist is not None

    def describe(self) -> dict[str, Any]:
        """Provenance record for run.json and features.json (the backend included)."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "normalization": self.normalization, "prob_thresh": self.prob_thresh,
                "nms_thresh": self.nms_thresh, "mpp": self.mpp, "backend": self.backend,
                "backend_version": _backend_version(self.backend),
                "precision": self.precision,
                **({"int8": self.extra["int8_record"]} if self.precision == "int8" else {})}


def _backend_version(backend: str) -> str:
    if backend == "openvino":
        from pathology.segmentation.backends import openvino_version

        return openvino_version()
    return str(import_tensorflow().__version__)


def import_tensorflow() -> Any:
    """TensorFlow, set up on first import: quiet logs, the process's thread limit
    (``TF_NUM_INTRAOP_THREADS``, one per Dask worker) and GPU memory growth."""
    first = "tensorflow" not in sys.modules
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if first:
        threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
        if threads.isdigit():
            try:
                tf.config.threading.set_intra_op_parallelism_threads(int(threads))
                tf.config.threading.set_inter_op_parallelism_threads(int(threads))
            except RuntimeError:  # already initialised in this process
                pass
        allow_gpu_memory_growth()
    return tf


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


def describe_model(spec: str) -> dict:
    """What a ``segmentation`` setting names, without loading a network: the folder, what
    the model was trained for and at which pixel size, its tuned thresholds, whether an int8
    network made from these very weights is shipped beside them, and its model card.

    Returns
    -------
    dict
        ``spec``, ``found`` and, for a folder, ``folder``, ``kind``, ``mpp``, ``prob``,
        ``nms``, ``steps``, ``int8`` (``"yes"``, ``"none"`` or ``"stale"``: quantised from
        other weights), ``card`` (path or None), ``sha256``; for a registered pretrained name
        ``pretrained: True``; otherwise ``problem``.

    Examples
    --------
    >>> describe_model("no/such/model")["found"]
    False
    """
    import json

    from pathology.segmentation.backends import int8_paths

    folder = resolve_model_path(spec)
    if folder is None:
        if spec in PRETRAINED:
            return {"spec": spec, "found": True, "pretrained": True}
        return {"spec": spec, "found": False,
                "problem": "neither a model folder (with config.json) nor a pretrained name "
                           f"({', '.join(PRETRAINED)})"}
    weights = folder / "weights_best.h5"
    if not weights.is_file():
        return {"spec": spec, "found": False, "folder": str(folder),
                "problem": "model folder has no weights_best.h5"}
    meta = _read_json(folder / "hccbio_model.json", {})
    thresholds = {**STARDIST_DEFAULT_THRESHOLDS, **_read_json(folder / "thresholds.json", {})}
    sha = file_sha256(weights)
    xml, record = int8_paths(folder)
    int8 = "none"
    if xml.is_file() and record.is_file():
        stated = json.loads(record.read_text()).get("weights_sha256")
        int8 = "yes" if stated == sha else "stale"
    card = folder / "MODEL_CARD.md"
    return {"spec": spec, "found": True, "folder": str(folder), "kind": meta.get("kind"),
            "mpp": meta.get("mpp"), "prob": float(thresholds["prob"]),
            "nms": float(thresholds["nms"]), "steps": meta.get("steps"), "int8": int8,
            "card": str(card) if card.is_file() else None, "sha256": sha}


def load_model(spec: str, *, prob_thresh: float | None = None,
               nms_thresh: float | None = None, backend: Backend = "auto",
               precision: Precision = "float32") -> NucleusModel:
    """Load a StarDist 2D model from a folder or by pretrained name.

    Parameters
    ----------
    spec
        A model folder (absolute, or relative to the current folder or the project root) or a
        registered pretrained name such as ``2D_versatile_he``.
    prob_thresh, nms_thresh
        Overrides of the model's tuned thresholds.
    backend
        What runs the network (``segmentation.backend``): ``tensorflow``; ``openvino`` (on
        the CPU); ``auto``: OpenVINO when it is installed, TensorFlow sees no GPU and the
        network converts, else TensorFlow. See :func:`select_backend`.
    precision
        ``float32``, or ``int8``: the quantised network shipped in the model folder's
        ``int8/`` (``models/quantize.py``), run by OpenVINO.

    Raises
    ------
    ModelError
        Unknown name or folder, missing weights, or a pretrained model that cannot be
        downloaded (no network); ``backend="openvino"`` without OpenVINO installed; ``int8``
        without OpenVINO, without a quantised network, or with one quantised from other
        weights.
    """
    folder = resolve_model_path(spec)
    stardist = None
    if folder is not None:
        weights = folder / "weights_best.h5"
        if not weights.is_file():
            raise ModelError(f"{folder}: model folder has no weights_best.h5")
        meta = _read_json(folder / "hccbio_model.json", {})
        normalization = meta.get("normalization", {"method": "percentile", "low": 1.0,
                                                   "high": 99.8})
        config = SimpleNamespace(**_read_json(folder / "config.json", None))
        thresholds = {**STARDIST_DEFAULT_THRESHOLDS,
                      **_read_json(folder / "thresholds.json", {})}
        source, sha, mpp = str(folder), file_sha256(weights), meta.get("mpp")
    elif spec in PRETRAINED:
        stardist = _load_pretrained(spec)
        config, folder = stardist.config, Path(stardist.logdir)
        thresholds = {"prob": stardist.thresholds.prob, "nms": stardist.thresholds.nms}
        normalization, source, mpp = PRETRAINED[spec], f"pretrained:{spec}", None
        weights = folder / "weights_best.h5"
        sha = file_sha256(weights) if weights.is_file() else "unknown"
    else:
        raise ModelError(f"segmentation model {spec!r} is neither a model folder (with "
                         f"config.json) nor a pretrained name ({', '.join(PRETRAINED)})")
    try:
        n_channel_in = int(config.n_channel_in)
    except (AttributeError, TypeError, ValueError) as error:
        raise ModelError(f"{source}: config.json has no valid n_channel_in ({error})") from error
    loaded = NucleusModel(
        name=Path(spec).name, config=config, normalization=dict(normalization),
        n_channel_in=n_channel_in,
        prob_thresh=float(prob_thresh if prob_thresh is not None else thresholds["prob"]),
        nms_thresh=float(nms_thresh if nms_thresh is not None else thresholds["nms"]),
        mpp=mpp, sha256=sha, source=source, folder=folder,
        loader=None if stardist is not None else _folder_loader(folder),
        _stardist=stardist,
    )
    if precision == "int8":
        _load_int8(loaded, backend)
        return loaded
    loaded.backend = select_backend(loaded, backend)
    if loaded.backend == "tensorflow":
        loaded.model  # noqa: B018 - load now, so that a broken folder fails here, not mid-slide
    return loaded


def _load_int8(model: NucleusModel, backend: Backend) -> None:
    """Compile the model folder's int8 network for the CPU (no fallback: int8 was asked)."""
    from pathology.segmentation import backends

    if backend == "tensorflow":
        raise ModelError("precision int8 runs on OpenVINO, not segmentation.backend tensorflow")
    if not backends.openvino_available():
        raise ModelError("precision int8 needs OpenVINO (pip install openvino)")
    try:
        network, record = backends.load_int8(model.folder, model.sha256)
    except (FileNotFoundError, ValueError) as error:
        raise ModelError(f"{model.source}: {error}") from error
    xml = backends.int8_paths(model.folder)[0]  # type: ignore[arg-type]
    model.extra["openvino"] = backends.compile_network(network, ir_path=xml)
    model.extra["int8_record"] = {  # provenance; the calibration images are in the record
        "quantized_from_sha256": record.get("weights_sha256"),
        "calibration_crops": record.get("calibration", {}).get("crops"),
        "nncf": record.get("nncf", {}).get("version"), "date": record.get("date")}
    model.backend, model.precision = "openvino", "int8"


def _read_json(path: Path, default: dict | None) -> dict:
    """A model folder's JSON file; ``default`` when it is absent (None: it is required)."""
    if not path.is_file():
        if default is None:
            raise ModelError(f"{path}: required model file not found")
        return default
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: not readable JSON ({error})") from error
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return value


def _folder_loader(folder: Path) -> Callable[[], Any]:
    """Load the StarDist model of ``folder`` (with TensorFlow) when called."""

    def load() -> Any:
        import_tensorflow()
        from stardist.models import StarDist2D

        try:
            with contextlib.redirect_stdout(io.StringIO()) as printed:  # stardist prints
                model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
            log.debug("%s: %s", folder, " ".join(printed.getvalue().split()))
        except Exception as error:
            raise ModelError(f"{folder}: StarDist could not load this model: {error}") from error
        return model

    return load


def _load_pretrained(spec: str) -> Any:
    """A registered pretrained StarDist model (``StarDist2D.from_pretrained``)."""
    import_tensorflow()
    from stardist.models import StarDist2D

    try:
        model = StarDist2D.from_pretrained(spec)
    except Exception as error:
        raise ModelError(f"pretrained StarDist model {spec!r} could not be loaded ({error}); "
                         "without a network use a model folder such as models/he_nuclei"
                         ) from error
    if model is None:
        raise ModelError(f"pretrained StarDist model {spec!r} is not registered")
    return model


def select_backend(model: NucleusModel, requested: Backend) -> str:
    """Decide what runs ``model``'s network and prepare it (once per process).

    ``openvino``: the network is converted (or read from the cache beside the weights, see
    :mod:`pathology.segmentation.backends`) and compiled for the CPU; the compiled network is kept
    in ``model.extra``. ``auto`` chooses OpenVINO when it is installed and TensorFlow sees no GPU
    (on a GPU, TensorFlow is the faster). A network that OpenVINO cannot convert or compile
    is run by TensorFlow, with a warning.

    Returns
    -------
    str
        ``tensorflow`` or ``openvino``.

    Raises
    ------
    ModelError
        ``openvino`` requested but not installed, or an unknown backend.
    """
    from pathology.segmentation import backends

    if requested not in ("auto", "tensorflow", "openvino"):
        raise ModelError(f"segmentation.backend {requested!r}: expected auto, tensorflow or "
                         "openvino")
    if requested == "tensorflow":
        return "tensorflow"
    if not backends.openvino_available():
        if requested == "openvino":
            raise ModelError("segmentation.backend openvino: OpenVINO is not installed "
                             "(pip install openvino), or set segmentation.backend to auto or "
                             "tensorflow")
        log.debug("OpenVINO is not installed; TensorFlow runs the network")
        return "tensorflow"
    if requested == "auto" and gpu_available():
        return "tensorflow"
    try:
        network, ir_path = backends.load_or_convert(
            None, model.n_channel_in, weights_folder=model.folder, sha256=model.sha256,
            load_keras=lambda: model.model.keras_model)
        model.extra["openvino"] = backends.compile_network(network, ir_path=ir_path)
    except ModelError:
        raise  # the model folder itself is broken: no backend can run it
    except Exception as error:  # any conversion or compilation failure: TensorFlow runs it
        log.warning("%s: OpenVINO could not convert or compile the network (%s); TensorFlow "
                    "runs it", model.source, " ".join(str(error).split())[:300])
        return "tensorflow"
    log.debug("%s: OpenVINO runs the network (%s)", model.source, ir_path)
    return "openvino"


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


@dataclass(frozen=True)
class Prediction:
    """The network's dense output for one image, at the model's grid resolution."""

    shape: tuple[int, int]  # (H, W) of the image before padding
    prob: np.ndarray  # (H', W') object probability
    dist: np.ndarray  # (H', W', n_rays) ray lengths in pixels


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU (it then runs the network there by itself).

    Without an NVIDIA driver (``/proc/driver/nvidia/gpus``, ``nvidia-smi``) TensorFlow is not
    asked, so that a CPU machine never imports it just to learn there is no GPU.
    """
    if "tensorflow" not in sys.modules and not _nvidia_driver_present():
        return False
    return bool(import_tensorflow().config.list_physical_devices("GPU"))


def _nvidia_driver_present() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or shutil.which("nvidia-smi") is not None


def allow_gpu_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it rather than all of it at start, so that
    several processes (Dask workers, QC) can share a GPU. No effect once TensorFlow has used
    the GPU in this process."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # already initialised
            pass


def network_input(model: NucleusModel, image: np.ndarray,
                  norm_range: tuple[float, float]) -> np.ndarray:
    """Normalise ``image`` and pad it at the end (reflect, as StarDist does) to the size the
    network divides by (grid x pool^depth).

    Returns
    -------
    numpy.ndarray
        ``(H', W', C)`` float32 with ``H'``, ``W'`` multiples of the network's divisor.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] != model.n_channel_in:
        raise ValueError(f"model {model.name} expects {model.n_channel_in} channel(s), the tile "
                         f"has {image.shape[2]}")
    low, high = norm_range
    # (x - low) / (high - low) in float32, in place: the same numbers without temporaries.
    x = image.astype(np.float32)
    if low:
        np.subtract(x, np.float32(low), out=x)
    np.divide(x, np.float32(high - low), out=x)
    divisor = _divisor(model)
    pad = [(0, (-size) % div) for size, div in zip(x.shape[:2], divisor, strict=True)] + [(0, 0)]
    return np.pad(x, pad, mode="reflect") if any(p[1] for p in pad) else x


def _divisor(model: NucleusModel) -> tuple[int, int]:
    config = model.config
    pool = tuple(config.unet_pool) if config.backbone == "unet" else (1, 1)
    depth = int(config.unet_n_depth) if config.backbone == "unet" else 0
    return tuple(int(g) * int(p) ** depth for g, p in zip(config.grid, pool, strict=True))


def _forward_function(model: NucleusModel):
    """The network as one callable on a float32 batch (any batch and image size).

    TensorFlow: the Keras network as one traced TensorFlow function; calling it directly skips
    ``keras.Model.predict``'s per-call data-pipeline set-up, with the same numbers (tested bit
    for bit). OpenVINO: the network compiled in :func:`select_backend`.
    """
    if model.backend == "openvino":
        return model.extra["openvino"]
    function = model.extra.get("forward")
    if function is None:
        tf = import_tensorflow()
        network = model.model.keras_model
        spec = tf.TensorSpec([None, None, None, model.n_channel_in], tf.float32)
        function = tf.function(lambda x: network(x, training=False), input_signature=[spec],
                               reduce_retracing=True)
        model.extra["forward"] = function
    return function


def forward_pass(model: NucleusModel, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network alone on a batch of prepared inputs of one size.

    Parameters
    ----------
    batch
        ``(B, H', W', C)`` from :func:`network_input`.

    Returns
    -------
    tuple of numpy.ndarray
        ``prob`` ``(B, h, w)`` and ``dist`` ``(B, h, w, n_rays)`` at grid resolution.
    """
    x = np.ascontiguousarray(batch, dtype=np.float32)
    if model.backend == "openvino":
        return _forward_function(model)(x)
    prob, dist = _forward_function(model)(x)[:2]
    return prob.numpy()[..., 0], dist.numpy()


def predict_tiles(model: NucleusModel, images: list[np.ndarray],
                  norm_range: tuple[float, float], *, batch_size: int = 1) -> list[Prediction]:
    """Run the network on several tiles, stacking up to ``batch_size`` tiles of equal size
    into one forward pass (on a GPU this keeps it busy; on a CPU 1 is as fast).

    A tile's prediction does not depend on the others in its batch: each is padded alone,
    exactly as it would be on its own.
    """
    prepared = [network_input(model, image, norm_range) for image in images]
    out: list[Prediction | None] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, x in enumerate(prepared):
        by_shape.setdefault(x.shape, []).append(index)
    batch_size = max(1, batch_size)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            for i, (prob, dist) in zip(chunk, _forward_halving(model, [prepared[i] for i in chunk]),
                                       strict=True):
                out[i] = Prediction(tuple(images[i].shape[:2]), prob, dist)
    return out  # type: ignore[return-value]


def _forward_halving(model: NucleusModel, inputs: list[np.ndarray]
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """One forward pass over ``inputs``; a batch that does not fit in (GPU) memory is split in
    halves until it does (a single tile that does not fit is an error). TensorFlow only:
    OpenVINO on the CPU raises no out-of-memory error to catch."""
    if model.backend == "openvino":
        prob, dist = forward_pass(model, np.stack(inputs))
        return [(prob[k], dist[k]) for k in range(len(inputs))]
    tf = import_tensorflow()
    try:
        prob, dist = forward_pass(model, inputs[0][None] if len(inputs) == 1 else
                                  np.stack(inputs))
    except tf.errors.ResourceExhaustedError:
        if len(inputs) == 1:
            raise
        half = len(inputs) // 2
        log.warning("out of memory for %d tiles in one forward pass; trying %d", len(inputs),
                    half)
        return _forward_halving(model, inputs[:half]) + _forward_halving(model, inputs[half:])
    return [(prob[k], dist[k]) for k in range(len(inputs))]


def instances_from_prediction(model: NucleusModel, prediction: Prediction) -> TileNuclei:
    """Non-maximum suppression and label rendering, as ``StarDist2D.predict_instances`` does
    them (sparse candidates above the probability threshold, away from the padded border),
    through stardist's public ``non_maximum_suppression_sparse``, ``polygons_to_label`` and
    ``dist_to_coord``.
    """
    from stardist.geometry import dist_to_coord, polygons_to_label
    from stardist.nms import non_maximum_suppression_sparse

    grid = np.asarray(model.config.grid, dtype=np.int64)
    n_rays = int(model.config.n_rays)
    prob, dist = prediction.prob, np.maximum(np.float32(1e-3), prediction.dist)
    candidates = prob > model.prob_thresh
    # Like StarDist, no candidate within 2 grid cells of the (padded) border.
    candidates[:CANDIDATE_BORDER] = candidates[-CANDIDATE_BORDER:] = False
    candidates[:, :CANDIDATE_BORDER] = candidates[:, -CANDIDATE_BORDER:] = False
    points = np.stack(np.nonzero(candidates), axis=1) * grid.reshape(1, 2)
    inside = np.all(points < np.asarray(prediction.shape).reshape(1, 2), axis=1)
    points = points[inside]
    scores = prob[candidates][inside]
    rays = dist[candidates][inside].reshape(-1, n_rays)
    if len(scores):
        points, scores, rays, _ = non_maximum_suppression_sparse(
            rays, scores, points, nms_thresh=model.nms_thresh)
    labels = polygons_to_label(rays, points, prob=scores, shape=prediction.shape)
    coord = dist_to_coord(rays, points) if len(scores) else np.zeros((0, 2, n_rays))
    n = len(scores)
    return TileNuclei(labels.astype(np.int32), np.asarray(points).reshape(n, 2),
                      np.asarray(scores, dtype=np.float32).reshape(n),
                      np.asarray(coord, dtype=np.float32).reshape(n, 2, n_rays))


def segment_tile(model: NucleusModel, image: np.ndarray,
                 norm_range: tuple[float, float]) -> TileNuclei:
    """Run StarDist on one tile read box.

    The same nuclei as ``StarDist2D.predict_instances`` on the normalised image (tested), with
    the network called directly.

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
    (prediction,) = predict_tiles(model, [image], norm_range)
    return instances_from_prediction(model, prediction)


def network_box(read_y: int, read_x: int, height: int, width: int, *,
                scale: float) -> tuple[int, int, int, int]:
    """The box of the network-resolution image that covers a working-resolution read box.

    When the nuclear channel is segmented at a finer pixel size than the working resolution
    (a multiplex panel's ``nuclei_mpp``: IMC and MIBI nuclei are 5-10 px across, the
    fluorescence model was trained on nuclei of about 20 px), ``scale`` = working um/px /
    network um/px (> 1) and the box is read from the slide at the network pixel size.

    Returns
    -------
    tuple of int
        ``(y0, x0, height, width)`` in network pixels.

    Examples
    --------
    >>> network_box(10, 20, 100, 50, scale=1.5)
    (15, 30, 150, 75)
    """
    y0, x0 = int(math.floor(read_y * scale)), int(math.floor(read_x * scale))
    y1 = int(math.ceil((read_y + height) * scale))
    x1 = int(math.ceil((read_x + width) * scale))
    return y0, x0, y1 - y0, x1 - x0


def nuclei_to_working(nuclei: TileNuclei, *, scale: float, read_origin: tuple[int, int],
                      network_origin: tuple[int, int], shape: tuple[int, int]) -> TileNuclei:
    """Nuclei found at the network resolution mapped back onto the working-resolution read box.

    Pixel centres map as ``(u + 0.5) * scale = v + 0.5`` (global working pixel ``u``, global
    network pixel ``v``): centres and polygon vertices are scaled, and the label image is
    sampled at the working pixels' centres (nearest network pixel), so every nucleus keeps its
    id and record; a nucleus too small to cover a working pixel centre keeps its record but
    has no pixels (it is then not measured).

    Parameters
    ----------
    nuclei
        From :func:`instances_from_prediction` on the network-resolution box.
    scale
        Working um/px divided by network um/px.
    read_origin, network_origin
        ``(row, col)`` of the two boxes' top-left pixels, each in its own resolution.
    shape
        ``(H, W)`` of the working-resolution read box.

    Returns
    -------
    TileNuclei
        In working-resolution read-box pixels.

    Examples
    --------
    >>> labels = np.zeros((6, 6), np.int32); labels[2:4, 2:4] = 1
    >>> found = TileNuclei(labels, np.array([[2.5, 2.5]]), np.array([0.9], np.float32),
    ...                    np.zeros((1, 2, 4), np.float32))
    >>> back = nuclei_to_working(found, scale=2.0, read_origin=(0, 0), network_origin=(0, 0),
    ...                          shape=(3, 3))
    >>> back.labels.tolist(), back.points.tolist()
    ([[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[1.0, 1.0]])
    """
    offset = np.array([(network_origin[0] + 0.5) / scale - 0.5 - read_origin[0],
                       (network_origin[1] + 0.5) / scale - 0.5 - read_origin[1]])
    rows = (np.arange(shape[0]) + read_origin[0] + 0.5) * scale - 0.5 - network_origin[0]
    cols = (np.arange(shape[1]) + read_origin[1] + 0.5) * scale - 0.5 - network_origin[1]
    rows = np.clip(np.rint(rows).astype(np.int64), 0, nuclei.labels.shape[0] - 1)
    cols = np.clip(np.rint(cols).astype(np.int64), 0, nuclei.labels.shape[1] - 1)
    labels = nuclei.labels[np.ix_(rows, cols)]
    points = nuclei.points / scale + offset.reshape(1, 2)
    coord = nuclei.coord / scale + offset.reshape(1, 2, 1)
    return TileNuclei(np.ascontiguousarray(labels, dtype=np.int32),
                      points.astype(np.float64), nuclei.prob, coord.astype(np.float32))
