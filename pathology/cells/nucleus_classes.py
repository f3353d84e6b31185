"""H&E nucleus classes from nucleus-centred patches: a small convolutional network.

Shape and stain features of a nucleus saw one organ's scale and colour; a patch around the
nucleus (``PATCH_PX`` pixels at the working resolution, 0.5 um/px: about 32 um) shows its
chromatin texture, its cytoplasm and its neighbours, which is what a pathologist looks at. The
network is trained by ``models/train_cell_classes.py`` on colorectal and breast tiles with
stain, scale and blur augmentation and stored as a model folder::

    model.keras     Keras 3 network: (n, PATCH_PX, PATCH_PX, 3) RGB in [0, 1] -> class softmax
    model.json      {"kind": "patch_cnn", "classes": [...], "patch_px": 64, "mpp": 0.5,
                     "positive_class": "lymphocyte", "threshold": 0.5, "meta": {...}}

The class vocabulary (:data:`CELL_CLASSES`) and the cells.parquet columns holding the
probabilities (:func:`probability_column`) are defined here once, for the pipeline, the
phenotype step and the training script.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pathology.config import PROJECT_ROOT

log = logging.getLogger(__name__)

CELL_CLASSES = ("lymphocyte", "tumour", "stromal", "other")
PATCH_PX = 64
PATCH_MPP = 0.5
MODEL_FILE = "model.json"
NETWORK_FILE = "model.keras"
KIND = "patch_cnn"
PREDICT_BATCH = 256


class NucleusClassModelError(ValueError):
    """The patch classifier folder is missing or invalid."""


def probability_column(cls: str) -> str:
    """The cells.parquet column holding the probability of ``cls`` (``p_lymphocyte``)."""
    return f"p_{cls}"


def extract_patches(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, *,
                    size: int = PATCH_PX) -> np.ndarray:
    """Square patches of ``image`` centred on each ``(row, col)``, reflected at the border.

    Parameters
    ----------
    image
        ``(H, W, 3)`` RGB image.
    rows, cols
        Patch centres in pixels (rounded to the nearest pixel).
    size
        Patch side in pixels.

    Returns
    -------
    numpy.ndarray
        ``(n, size, size, 3)``, the dtype of ``image``.

    Examples
    --------
    >>> image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    >>> extract_patches(image, np.array([2]), np.array([2]), size=3)[0, :, :, 0]
    array([[18, 21, 24],
           [33, 36, 39],
           [48, 51, 54]], dtype=uint8)
    """
    half = size // 2
    padded = np.pad(image[..., :3], ((half, size), (half, size), (0, 0)), mode="reflect")
    r = np.rint(np.asarray(rows, dtype=np.float64)).astype(np.int64)
    c = np.rint(np.asarray(cols, dtype=np.float64)).astype(np.int64)
    r = np.clip(r, 0, image.shape[0] - 1)
    c = np.clip(c, 0, image.shape[1] - 1)
    offsets = np.arange(size)
    # padded[r + k] is image[r + k - half]: the patch spans r - half .. r - half + size - 1
    return padded[(r[:, None, None] + offsets[None, :, None]),
                  (c[:, None, None] + offsets[None, None, :])]


@dataclass(frozen=True)
class PatchClassifier:
    """A patch network and what it was trained for.

    Attributes
    ----------
    folder
        The model folder.
    classes
        Output classes in network order.
    patch_px, mpp
        Patch side in pixels and the pixel size it was trained at.
    positive_class, threshold
        The lymphocyte call: probability of ``positive_class`` at or above ``threshold``.
    meta
        Provenance and measured accuracy.
    """

    folder: Path
    classes: tuple[str, ...]
    patch_px: int
    mpp: float
    positive_class: str
    threshold: float
    sha256: str = ""
    meta: dict = field(default_factory=dict, compare=False)
    backend: str = "tensorflow"

    def describe(self) -> dict[str, Any]:
        """Provenance record for run.json and features.json."""
        return {"name": str(self.folder.name), "kind": KIND, "sha256": self.sha256,
                "classes": list(self.classes), "patch_px": self.patch_px, "mpp": self.mpp,
                "positive_class": self.positive_class, "threshold": self.threshold,
                "backend": self.backend}

    def on_backend(self, backend: str) -> PatchClassifier:
        """This classifier run by ``backend`` (``tensorflow`` or ``openvino``): the pipeline
        follows the segmentation network's backend, so that an OpenVINO worker never imports
        TensorFlow (once the network is converted and cached beside the weights)."""
        if backend not in ("tensorflow", "openvino"):
            raise ValueError(f"unknown backend {backend!r}; expected tensorflow or openvino")
        return replace(self, backend=backend)

    def network(self) -> Any:
        """A function from a float32 batch ``(B, P, P, 3)`` to ``(B, K)`` probabilities
        (loaded, or converted and cached, once per process)."""
        return _load_network(str(self.folder / NETWORK_FILE), self.backend, self.sha256,
                             self.patch_px)

    def probabilities(self, patches: np.ndarray) -> np.ndarray:
        """``(n, K)`` class probabilities of uint8 RGB patches."""
        if not len(patches):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        network = self.network()
        out = []
        for start in range(0, len(patches), PREDICT_BATCH):
            batch = patches[start:start + PREDICT_BATCH].astype(np.float32) / 255.0
            out.append(np.asarray(network(batch), dtype=np.float32))
        return np.concatenate(out)

    def classify(self, image: np.ndarray, rows: np.ndarray, cols: np.ndarray
                 ) -> dict[str, np.ndarray]:
        """Class probabilities of the nuclei centred at ``(rows, cols)`` of ``image``.

        ``image`` must be RGB at the classifier's pixel size (the pipeline's working
        resolution). Returns one float32 array per class, keyed by its cells.parquet column.
        """
        probs = self.probabilities(extract_patches(image, rows, cols, size=self.patch_px))
        return {probability_column(cls): probs[:, k] for k, cls in enumerate(self.classes)}


@lru_cache(maxsize=4)
def _load_network(path: str, backend: str, sha256: str, patch_px: int) -> Any:
    if backend == "openvino":
        return _openvino_network(Path(path), sha256, patch_px)
    network = _keras_network(path)
    return lambda batch: network(batch, training=False)


def _keras_network(path: str) -> Any:
    from pathology.segmentation.nuclei import import_tensorflow

    keras = import_tensorflow().keras
    return keras.models.load_model(path, compile=False)


# The converted network's cache name: weights SHA-256 + this tag. ov.convert_model spells Keras'
# GroupNormalization as transposes, reductions and element-wise products (three quarters of
# the time per patch, and slower than TensorFlow); the graph built here normalises each group
# with OpenVINO's MVN operation, 2x faster. (OpenVINO's GroupNormalization operation is as
# fast, but its sums depend on the thread count: a one-thread worker and a sync process gave
# probabilities 1e-6 apart.) A new tag leaves networks converted otherwise unused.
IR_TAG = "mvn-groupnorm"


def _openvino_network(path: Path, sha256: str, patch_px: int) -> Any:
    """The network compiled by OpenVINO; its converted form is read from
    ``openvino/<sha256>.<IR_TAG>.xml`` beside the weights or in the user cache (built once from
    the Keras model, then saved there)."""
    import openvino as ov

    from pathology.segmentation.backends import ir_paths, save_ir

    core = ov.Core()
    paths = ir_paths(path.parent, f"{sha256}.{IR_TAG}") if sha256 else []
    network = next((core.read_model(xml) for xml in paths
                    if xml.is_file() and xml.with_suffix(".bin").is_file()), None)
    keep_alive = None
    if network is None:
        keras_model = _keras_network(str(path))
        try:
            # the weights are copied into the graph's constants: nothing points into Keras
            network = openvino_graph(keras_model, patch_px)
        except ValueError as error:
            log.info("%s: %s; converting with ov.convert_model", path, error)
            # convert_model's weights share memory with the Keras model (garbage once that is
            # collected: every patch came out 'lymphocyte'): keep it alive until saved and read
            keep_alive = keras_model
            network = ov.convert_model(keras_model,
                                       input=[ov.PartialShape([-1, patch_px, patch_px, 3])])
        for xml in paths:
            try:
                save_ir(network, xml)
                network, keep_alive = core.read_model(xml), None
                break
            except (OSError, RuntimeError):
                continue
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    if threads.isdigit():  # Dask workers set it to 1, as for the segmentation network
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(network, "CPU", config)
    request, lock = compiled.create_infer_request(), threading.Lock()

    def run(batch: np.ndarray) -> np.ndarray:
        with lock:
            return np.array(request.infer({0: batch})[compiled.output(0)])

    run.keep_alive = keep_alive  # type: ignore[attr-defined]
    return run


def openvino_graph(keras_model: Any, patch_px: int) -> Any:
    """The patch network as an ``openvino.Model`` built layer by layer from its Keras weights,
    with OpenVINO's own operations (group normalisation as ``MVN`` over each group: the same
    numbers whatever the number of threads).

    Covers the layers :func:`models.train_cell_classes.build_network` uses: 3x3 ``Conv2D``
    (same padding, stride 1, no bias), ``GroupNormalization``, ReLU ``Activation``,
    ``MaxPooling2D`` (2x2), ``GlobalAveragePooling2D``, ``Dropout`` (inactive at inference)
    and a softmax ``Dense``. Input ``(B, patch_px, patch_px, 3)`` in [0, 1], as Keras.

    Raises
    ------
    ValueError
        A layer or setting outside that list: the caller converts with ``ov.convert_model``.
    """
    import openvino as ov
    import openvino.opset13 as ops

    def weights(layer) -> list[np.ndarray]:
        return [np.ascontiguousarray(np.asarray(w), dtype=np.float32) for w in layer.get_weights()]

    patches = ops.parameter([-1, patch_px, patch_px, 3], np.float32, name="patches")
    x = ops.transpose(patches, ops.constant(np.array([0, 3, 1, 2], dtype=np.int64)))  # NCHW
    for layer in keras_model.layers:
        kind, config = type(layer).__name__, layer.get_config()
        if kind in ("InputLayer", "Dropout"):
            continue
        if kind == "Conv2D":
            if (tuple(config["strides"]) != (1, 1) or config["padding"] != "same"
                    or tuple(config["dilation_rate"]) != (1, 1) or config["use_bias"]
                    or config["activation"] != "linear" or config.get("groups", 1) != 1
                    or any(k % 2 == 0 for k in config["kernel_size"])):
                raise ValueError(f"layer {layer.name}: Conv2D settings {config!r}")
            kernel = weights(layer)[0]  # (kh, kw, in, out) -> (out, in, kh, kw)
            pad = [k // 2 for k in config["kernel_size"]]
            x = ops.convolution(x, ops.constant(kernel.transpose(3, 2, 0, 1).copy()),
                                [1, 1], pad, pad, [1, 1])
        elif kind == "GroupNormalization":
            if (config["axis"] not in (-1, 3) or not config["center"] or not config["scale"]):
                raise ValueError(f"layer {layer.name}: GroupNormalization settings")
            gamma, beta = weights(layer)
            shape = ops.shape_of(x)
            grouped = ops.reshape(x, ops.constant(np.array([0, int(config["groups"]), -1],
                                                           dtype=np.int64)), True)
            grouped = ops.mvn(grouped, ops.constant(np.array([2], dtype=np.int64)), True,
                              float(config["epsilon"]), "inside_sqrt")
            x = ops.add(ops.multiply(ops.reshape(grouped, shape, False),
                                     ops.constant(gamma.reshape(1, -1, 1, 1))),
                        ops.constant(beta.reshape(1, -1, 1, 1)))
        elif kind == "Activation" and config["activation"] == "relu":
            x = ops.relu(x)
        elif kind == "MaxPooling2D":
            if (tuple(config["pool_size"]) != (2, 2) or tuple(config["strides"]) != (2, 2)
                    or config["padding"] != "valid"):
                raise ValueError(f"layer {layer.name}: MaxPooling2D settings")
            x = ops.max_pool(x, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2]).output(0)
        elif kind == "GlobalAveragePooling2D":
            x = ops.reduce_mean(x, ops.constant(np.array([2, 3], dtype=np.int64)), False)
        elif kind == "Dense" and config["activation"] == "softmax" and config["use_bias"]:
            kernel, bias = weights(layer)
            x = ops.softmax(ops.add(ops.matmul(x, ops.constant(kernel), False, False),
                                    ops.constant(bias)), 1)
        else:
            raise ValueError(f"layer {layer.name}: {kind} is not built natively")
    return ov.Model([x], [patches], "patch_cnn")


def is_patch_model(spec: str | Path) -> bool:
    """Whether the model folder holds a patch classifier (``kind: patch_cnn``)."""
    path = _folder(spec) / MODEL_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == KIND
    except (json.JSONDecodeError, AttributeError):
        return False


def _folder(spec: str | Path) -> Path:
    folder = Path(spec)
    return folder if folder.is_absolute() else PROJECT_ROOT / folder


def load_patch_classifier(spec: str | Path) -> PatchClassifier:
    """Read a patch classifier folder (relative paths: to the project root).

    Raises
    ------
    NucleusClassModelError
        Missing files, another kind of model, or malformed fields.
    """
    folder = _folder(spec)
    path = folder / MODEL_FILE
    if not path.is_file() or not (folder / NETWORK_FILE).is_file():
        raise NucleusClassModelError(f"{folder}: no patch classifier ({MODEL_FILE} and "
                                     f"{NETWORK_FILE}); train one with "
                                     "models/train_cell_classes.py")
    try:
        data = json.loads(path.read_text())
        if data.get("kind") != KIND:
            raise ValueError(f"kind {data.get('kind')!r}, expected {KIND!r}")
        classes = tuple(str(c) for c in data["classes"])
        unknown = [c for c in classes if c not in CELL_CLASSES]
        if unknown:
            raise ValueError(f"classes {unknown} are not among {CELL_CLASSES}")
        positive = str(data.get("positive_class", "lymphocyte"))
        if positive not in classes:
            raise ValueError(f"positive class {positive!r} is not among {classes}")
        from pathology.segmentation.nuclei import file_sha256

        return PatchClassifier(folder, classes, int(data["patch_px"]), float(data["mpp"]),
                               positive, float(data["threshold"]),
                               file_sha256(folder / NETWORK_FILE), dict(data.get("meta", {})))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise NucleusClassModelError(f"{path}: malformed patch classifier ({error})") from error
