"""OpenVINO inference of a StarDist network: conversion, the converted network's cache, compiling.

The Keras network of a loaded model is converted once with ``openvino.convert_model`` (any
batch, height and width) and saved as OpenVINO IR named by the SHA-256 of the weights:
``<model folder>/openvino/<sha256>.xml`` and ``.bin`` when the model folder is writable, else
``$HCCBIO_CACHE/openvino/`` (default ``~/.cache/hccbio/openvino/``). Later loads read the IR
(about a second) instead of converting again (several seconds); beside the weights, the IR of
earlier weights (retrained in place) is removed when the new one is saved. The weights are
kept in 32-bit floating point, and the network is compiled for the CPU in 32-bit floating point
(never bf16, which OpenVINO would choose by itself on CPUs that have it) with as many threads as
``TF_NUM_INTRAOP_THREADS`` allows (one per Dask worker), so that it gives TensorFlow's numbers
to within rounding.

Which backend runs the network is decided in :func:`pathology.segmentation.nuclei.load_model`
(``segmentation.backend``); stardist's non-maximum suppression and hccbio's measurements
do not depend on it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("hccbio.pathology")

IR_FOLDER = "openvino"  # beside the weights, and inside the user cache folder
CACHE_ENV = "HCCBIO_CACHE"


def openvino_available() -> bool:
    """Whether the ``openvino`` package is installed (it is not imported here)."""
    return importlib.util.find_spec("openvino") is not None


def user_cache_dir() -> Path:
    """hccbio's cache folder for this user: ``$HCCBIO_CACHE``, else ``~/.cache/hccbio``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "hccbio"


def ir_paths(weights_folder: Path | None, sha256: str) -> list[Path]:
    """Where the converted network of the weights ``sha256`` is looked for and saved, in order
    of preference (the ``.xml`` file; its ``.bin`` sits beside it).

    Examples
    --------
    >>> [p.as_posix() for p in ir_paths(Path("models/m"), "ab12")][0]
    'models/m/openvino/ab12.xml'
    """
    name = f"{sha256}.xml"
    paths = [weights_folder / IR_FOLDER / name] if weights_folder is not None else []
    return paths + [user_cache_dir() / IR_FOLDER / name]


def convert_network(keras_model: Any, n_channel_in: int) -> Any:
    """The Keras network as an ``openvino.Model`` taking ``(B, H, W, C)`` of any B, H, W.

    Raises
    ------
    ValueError
        The converted network does not have StarDist's two outputs (probability with one
        channel first, then the ray distances).
    """
    import openvino as ov

    network = ov.convert_model(keras_model, input=[ov.PartialShape([-1, -1, -1, n_channel_in])])
    _check_outputs(network)
    return network


def _check_outputs(network: Any) -> None:
    outputs = network.outputs
    last = [o.get_partial_shape()[-1] for o in outputs]
    if len(outputs) < 2 or not last[0].is_static or last[0].get_length() != 1:
        raise ValueError(f"expected StarDist's outputs (probability, distances), got "
                         f"{[str(o.get_partial_shape()) for o in outputs]}")


def load_or_convert(keras_model: Any, n_channel_in: int, *, weights_folder: Path | None,
                    sha256: str, load_keras: Callable[[], Any] | None = None
                    ) -> tuple[Any, Path | None]:
    """The converted network, read from the cache or converted now and saved there.

    Parameters
    ----------
    keras_model
        The StarDist model's ``keras_model``, or None: ``load_keras`` gives it, called only
        when the cache has no converted network (a cached network needs no TensorFlow).
    n_channel_in
        Input channels.
    weights_folder
        The folder holding the weights (the first place the IR is looked for and saved);
        None: only the user cache.
    sha256
        SHA-256 of the weights file; ``"unknown"`` disables the cache.

    Returns
    -------
    tuple
        The ``openvino.Model`` and the IR file it was read from or saved to (None when it
        could be saved nowhere).
    """
    import openvino as ov

    core = ov.Core()
    paths = ir_paths(weights_folder, sha256) if sha256 and sha256 != "unknown" else []
    for xml in paths:
        if xml.is_file() and xml.with_suffix(".bin").is_file():
            try:
                network = core.read_model(xml)
                _check_outputs(network)
                return network, xml
            except (RuntimeError, ValueError) as error:
                log.warning("%s: unreadable converted network (%s); converting again", xml,
                            " ".join(str(error).split())[:200])
    if keras_model is None:
        if load_keras is None:
            raise ValueError(f"no converted network cached for weights {sha256} and no Keras "
                             "model to convert")
        keras_model = load_keras()
    network = convert_network(keras_model, n_channel_in)
    for xml in paths:
        try:
            save_ir(network, xml)
            if weights_folder is not None and xml.parent == weights_folder / IR_FOLDER:
                _remove_stale(xml)
            return network, xml
        except (OSError, RuntimeError) as error:
            log.debug("cannot cache the converted network at %s: %s", xml, error)
    if paths:
        log.warning("the converted network could not be cached (tried %s); it is converted "
                    "again in every process", ", ".join(str(p.parent) for p in paths))
    return network, None


def _remove_stale(current: Path) -> None:
    """Beside the weights, IR of earlier weights (other SHA-256) is stale: remove it."""
    for path in current.parent.iterdir():
        if (path.suffix in (".xml", ".bin") and path.stem != current.stem
                and len(path.stem) == 64 and not path.name.startswith(".")):
            path.unlink(missing_ok=True)


def save_ir(network: Any, xml: Path) -> None:
    """Write ``network`` as ``xml`` and its ``.bin`` atomically (under temporary names, then
    renamed: a process reading the cache never sees half a file), weights in float32."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.xml")
    try:
        ov.save_model(network, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)


@dataclass
class OpenVinoNetwork:
    """A network compiled for the CPU, called like the traced TensorFlow function.

    One inference request, reused; calls from several threads take turns.
    """

    compiled: Any  # openvino.CompiledModel
    ir_path: Path | None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _request: Any = field(default=None, repr=False)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``prob`` ``(B, h, w)`` and ``dist`` ``(B, h, w, n_rays)`` of a float32 batch
        ``(B, H, W, C)`` (sizes multiple of the network's divisor)."""
        with self._lock:
            if self._request is None:
                self._request = self.compiled.create_infer_request()
            result = self._request.infer({0: batch})  # outputs are copied out of the request
        return result[self.compiled.output(0)][..., 0], result[self.compiled.output(1)]


def compile_network(network: Any, *, ir_path: Path | None = None,
                    threads: int | None = None) -> OpenVinoNetwork:
    """Compile ``network`` for the CPU in float32 (a quantised network keeps its int8
    operations; the rest runs in float32).

    Parameters
    ----------
    network
        From :func:`load_or_convert`.
    ir_path
        Where it was read from or saved (provenance).
    threads
        CPU threads for inference; None: ``TF_NUM_INTRAOP_THREADS`` if set (Dask workers set
        it to 1), else OpenVINO's choice (all cores).
    """
    import openvino as ov

    if threads is None and os.environ.get("TF_NUM_INTRAOP_THREADS", "").isdigit():
        threads = int(os.environ["TF_NUM_INTRAOP_THREADS"])
    # f32 also for int8 networks: it applies to the operations left in floating point
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(network, "CPU", config)
    return OpenVinoNetwork(compiled, ir_path)


INT8_FOLDER = "int8"  # in the model folder: network.xml / .bin and quantization.json
INT8_NETWORK = "network.xml"
INT8_RECORD = "quantization.json"


def int8_paths(model_folder: Path) -> tuple[Path, Path]:
    """The quantised network (``.xml``; its ``.bin`` beside it) and its record in
    ``model_folder``.

    Examples
    --------
    >>> [p.as_posix() for p in int8_paths(Path("models/m"))]
    ['models/m/int8/network.xml', 'models/m/int8/quantization.json']
    """
    folder = model_folder / INT8_FOLDER
    return folder / INT8_NETWORK, folder / INT8_RECORD


def load_int8(model_folder: Path | None, sha256: str) -> tuple[Any, dict]:
    """The int8 network shipped in ``model_folder`` (``models/quantize.py`` writes it) and
    its record, checked against the weights it was quantised from.

    Raises
    ------
    FileNotFoundError
        No quantised network in the folder.
    ValueError
        It was quantised from other weights (the model was retrained since), or it is
        unreadable.
    """
    import json

    import openvino as ov

    if model_folder is None:
        raise FileNotFoundError("no model folder: a pretrained model has no int8 network")
    xml, record_path = int8_paths(model_folder)
    if not (xml.is_file() and xml.with_suffix(".bin").is_file() and record_path.is_file()):
        raise FileNotFoundError(f"{xml.parent}: no int8 network (network.xml, network.bin, "
                                f"{INT8_RECORD}); make one with python models/quantize.py "
                                f"{model_folder}")
    record = json.loads(record_path.read_text())
    if record.get("weights_sha256") != sha256:
        raise ValueError(f"{xml}: quantised from other weights (sha256 "
                         f"{str(record.get('weights_sha256'))[:12]}..., the folder's are "
                         f"{sha256[:12]}...); quantise again with python models/quantize.py "
                         f"{model_folder}")
    try:
        network = ov.Core().read_model(xml)
        _check_outputs(network)
    except RuntimeError as error:
        raise ValueError(f"{xml}: unreadable int8 network ({' '.join(str(error).split())[:200]})"
                         ) from error
    return network, record


def openvino_version() -> str:
    """The installed OpenVINO's version (for provenance)."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return "unknown"
