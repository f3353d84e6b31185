"""What ``segmentation.backend: auto`` runs on a CPU: measured once per CPU model, then cached.

Which backend is faster depends on the CPU and the network: on the 2-core AMD EPYC (AVX-512)
development VM TensorFlow 2.21 runs the segmentation network as fast as OpenVINO, while
OpenVINO runs the H&E nucleus-class CNN 1.3-1.4x faster (and, converted naively, had run it
1.4x slower); a rule from one CPU does not hold on the next. So ``auto`` on a machine without a GPU
times one tile's networks on both backends the first time it meets a CPU model and a pair of
networks: the segmentation network on a read box of the configured tile size, plus the
nucleus-class network (H&E) on ``PATCHES_PER_TILE`` patches. OpenVINO is kept unless
TensorFlow is at least ``SWITCH_MARGIN`` faster (OpenVINO workers import no TensorFlow and use
less memory). The choice and its seconds are cached in ``$HCCBIO_CACHE/backend-choice.json``
(default ``~/.cache/hccbio``), keyed by CPU model, vector extensions and the networks'
SHA-256, so that every later process, Dask worker or SLURM job on such a CPU reads it.

``slides run`` resolves the choice in the main process before it starts a local cluster, so
that its workers do not all measure at once; a SLURM job on a CPU model not yet in the cache
measures on its node. ``HCCBIO_AUTO_BACKEND=openvino`` (or ``tensorflow``) skips the
measurement: for a site that has measured its nodes, or wants the same backend everywhere (the
two backends' nuclei agree to rounding, not bit for bit).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("hccbio.pathology")

CHOICE_FILE = "backend-choice.json"
CHOICE_ENV = "HCCBIO_AUTO_BACKEND"
SWITCH_MARGIN = 1.10  # TensorFlow must be 10 % faster per tile to be chosen over OpenVINO
PATCHES_PER_TILE = 512  # about the nuclei in a 1024 px H&E tile at 0.5 um/px
REPEATS = 2  # timed calls per network and backend, after one warm-up; the fastest counts


def available_cores() -> int:
    """The CPU cores this process may use (its affinity mask, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The CPU of this machine: model, the vector extensions that matter to the network
    (AVX2, AVX-512) and the cores this process may use.

    Parameters
    ----------
    cpuinfo
        Text of ``/proc/cpuinfo`` (None: read it; empty where there is none).

    Returns
    -------
    dict
        ``model``, ``avx2``, ``avx512`` (the ``avx512*`` flags), ``cores``, ``vector``
        (``AVX-512``, ``AVX2`` or ``no AVX2``), ``label``.

    Examples
    --------
    >>> cpu = cpu_description("model name\\t: Some CPU\\nflags\\t\\t: sse avx2 avx512f\\n")
    >>> cpu["avx2"], cpu["avx512"], cpu["vector"]
    (True, ['avx512f'], 'AVX-512')
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    cores = available_cores()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return {"model": model, "avx2": "avx2" in flags, "avx512": avx512, "cores": cores,
            "vector": vector, "label": f"{model}, {vector}, {cores} cores"}


def choice_key(cpu: dict, segmentation_sha256: str, classifier_sha256: str | None) -> str:
    """The cache key of a choice: CPU model and vector extensions, and the networks' weights.

    Examples
    --------
    >>> choice_key({"model": "AMD EPYC", "vector": "AVX-512"}, "ab" * 32, None)
    'AMD EPYC|AVX-512|abababababababab|-'
    """
    return "|".join([cpu["model"], cpu["vector"], segmentation_sha256[:16],
                     (classifier_sha256 or "-")[:16]])


def choose(seconds: dict[str, float]) -> str:
    """``tensorflow`` when it is at least :data:`SWITCH_MARGIN` faster per tile, else
    ``openvino``.

    Examples
    --------
    >>> choose({"openvino": 1.0, "tensorflow": 0.95}), choose({"openvino": 1.2, "tensorflow": 1.0})
    ('openvino', 'tensorflow')
    """
    return "tensorflow" if seconds["tensorflow"] * SWITCH_MARGIN <= seconds["openvino"] \
        else "openvino"


def _cache_path() -> Path:
    from pathology.segmentation.backends import user_cache_dir

    return user_cache_dir() / CHOICE_FILE


def read_choices() -> dict[str, dict]:
    """Every cached choice (key -> record); empty when there is no readable cache."""
    path = _cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as error:
        log.warning("%s: unreadable backend choices (%s); measuring again", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def _save_choice(key: str, record: dict) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        choices = {**read_choices(), key: record}  # another process may have added one
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(choices, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as error:
        log.warning("backend choice not cached at %s (%s): measured again in every process",
                    path, error)


def _best_seconds(function, argument) -> float:
    function(argument)  # warm-up: compilation, first-call allocation
    best = float("inf")
    for _ in range(REPEATS):
        began = time.perf_counter()
        function(argument)
        best = min(best, time.perf_counter() - began)
    return best


def measure(segmentation_spec: str, classifier_spec: str | None, *, box_px: int,
            prob_thresh: float | None = None, nms_thresh: float | None = None
            ) -> dict[str, dict[str, float]]:
    """Seconds per tile of each backend: the segmentation network on one ``box_px`` read box,
    and the nucleus-class network on :data:`PATCHES_PER_TILE` patches (when given).

    Returns
    -------
    dict
        ``{"openvino": {"segmentation": s, "classes": s, "tile": s}, "tensorflow": {...}}``.
    """
    from pathology.cells.nucleus_classes import load_patch_classifier
    from pathology.segmentation.nuclei import load_model, predict_tiles

    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {}
    for backend in ("openvino", "tensorflow"):
        model = load_model(segmentation_spec, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                           backend=backend)
        box = rng.integers(0, 256, (box_px, box_px, model.n_channel_in), dtype=np.uint8)
        seconds = {"segmentation": _best_seconds(
            lambda image, m=model: predict_tiles(m, [image], (0.0, 255.0)), box)}
        if classifier_spec is not None:
            classifier = load_patch_classifier(classifier_spec).on_backend(backend)
            patches = rng.integers(0, 256, (PATCHES_PER_TILE, classifier.patch_px,
                                            classifier.patch_px, 3), dtype=np.uint8)
            seconds["classes"] = _best_seconds(classifier.probabilities, patches)
        seconds["tile"] = sum(seconds.values())
        result[backend] = {k: round(v, 4) for k, v in seconds.items()}
    return result


def auto_backend(segmentation_spec: str, classifier_spec: str | None, *, box_px: int,
                 prob_thresh: float | None = None, nms_thresh: float | None = None,
                 measure_missing: bool = True) -> str | None:
    """What runs the networks under ``segmentation.backend: auto`` on this CPU.

    ``tensorflow`` when TensorFlow sees a GPU or OpenVINO is not installed; otherwise
    ``$HCCBIO_AUTO_BACKEND`` when set, else the cached choice for this CPU model and these
    networks, measured now (:func:`measure`) when there is none.

    Parameters
    ----------
    segmentation_spec
        The segmentation model (folder or pretrained name).
    classifier_spec
        The H&E nucleus-class network's folder, or None.
    box_px
        Read box side in pixels (``tiling.tile_size + 2 * tiling.halo``).
    measure_missing
        False: return None instead of measuring when nothing is cached.

    Returns
    -------
    str or None
        ``openvino`` or ``tensorflow``.

    Raises
    ------
    ValueError
        ``$HCCBIO_AUTO_BACKEND`` is neither ``openvino`` nor ``tensorflow``.
    """
    from pathology.cells.nucleus_classes import load_patch_classifier
    from pathology.segmentation import backends
    from pathology.segmentation.nuclei import describe_model, gpu_available

    if not backends.openvino_available() or gpu_available():
        return "tensorflow"
    pinned = os.environ.get(CHOICE_ENV, "").strip().lower()
    if pinned:
        if pinned not in ("openvino", "tensorflow"):
            raise ValueError(f"${CHOICE_ENV}={pinned!r}: expected openvino or tensorflow")
        return pinned
    cpu = cpu_description()
    segmentation_sha = describe_model(segmentation_spec).get("sha256") or ""
    classifier_sha = (load_patch_classifier(classifier_spec).sha256
                      if classifier_spec is not None else None)
    if not segmentation_sha or segmentation_sha == "unknown":
        return "openvino"  # nothing to key a measurement by: the rule for most CPUs
    key = choice_key(cpu, segmentation_sha, classifier_sha)
    cached = read_choices().get(key)
    if cached and cached.get("backend") in ("openvino", "tensorflow"):
        return cached["backend"]
    if not measure_missing:
        return None
    log.info("measuring OpenVINO against TensorFlow on this CPU (%s), once", cpu["label"])
    seconds = measure(segmentation_spec, classifier_spec, box_px=box_px,
                      prob_thresh=prob_thresh, nms_thresh=nms_thresh)
    choice = choose({backend: s["tile"] for backend, s in seconds.items()})
    _save_choice(key, {"backend": choice, "seconds_per_tile": seconds, "cpu": cpu["label"],
                       "box_px": box_px, "segmentation": str(segmentation_spec),
                       "classes": classifier_spec, "threads": _threads(),
                       "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    log.info("segmentation.backend auto: %s on %s (s per tile: %s)", choice, cpu["label"],
             {b: s["tile"] for b, s in seconds.items()})
    return choice


def _threads() -> Any:
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return int(threads) if threads.isdigit() else "all"
