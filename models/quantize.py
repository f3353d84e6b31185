"""Quantise a shipped StarDist model's network to int8 for OpenVINO (post-training, NNCF).

Usage (from the project root, inside the project's virtual environment)::

    python models/quantize.py models/he_nuclei [models/bf_nuclei ...]

The float32 network (OpenVINO's conversion of the Keras weights, as the pipeline runs it) is
calibrated on 256 px crops of *training* images only, normalised exactly as the pipeline
normalises tiles (``pathology.segmentation.nuclei.network_input``):

* brightfield models (``he``, ``bf``): the 30 MoNuSeg training-set tiles
  (``nuclei/monuseg-train``, 0.2527 um/px) at 0.5 um/px, and for ``bf`` also the two DeepLIIF
  Ki67 IHC training tiles; never the reporting images of ``benchmarks/accuracy.py``;
* fluorescence (``fluo``): the DSB2018 fluorescence training images (not every fifth).

Writes ``<model>/int8/network.xml`` + ``.bin`` and ``quantization.json`` (the SHA-256 of the
weights it was quantised from, the calibration images, NNCF and OpenVINO versions), replacing
an earlier int8 network atomically. ``segmentation.precision: int8`` runs it; the pipeline
refuses an int8 network quantised from other weights. Its accuracy beside float32 comes from
``python -m benchmarks.accuracy --precision int8``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pathology.evaluation.annotations import MONUSEG_MPP, load_deepliif, load_dsb2018  # noqa: E402
from pathology.segmentation import backends  # noqa: E402
from pathology.segmentation.nuclei import load_model, network_input, normalization_range  # noqa: E402

CROP = 256
MAX_CROPS = 300
WORKING_MPP = 0.5


def _rescale(image: np.ndarray, mpp: float) -> np.ndarray:
    from skimage.transform import rescale

    return rescale(image, mpp / WORKING_MPP, channel_axis=-1 if image.ndim == 3 else None,
                   preserve_range=True, anti_aliasing=True).astype(image.dtype)


def calibration_images(root: Path, kind: str) -> dict[str, np.ndarray]:
    """Training images (name -> pixels at the model's resolution) to calibrate ``kind`` on."""
    from skimage import io as skio

    if kind == "fluo":
        items = load_dsb2018(root / "nuclei" / "dsb2018", "fluorescence")
        return {item.name: item.image for index, item in enumerate(items) if index % 5}
    if kind not in ("he", "bf"):
        raise ValueError(f"unknown model kind {kind!r}")
    folder = root / "nuclei" / "monuseg-train" / "images"
    paths = sorted(folder.glob("*.tif"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no MoNuSeg training tiles")
    images = {p.stem: _rescale(skio.imread(p)[..., :3], MONUSEG_MPP) for p in paths}
    if kind == "bf":
        for item in load_deepliif(root / "ihc" / "deepliif", "train"):
            images[item.name] = _rescale(item.image, item.mpp)
    return images


def calibration_crops(model, images: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Non-overlapping ``CROP`` px network inputs from every image (at most ``MAX_CROPS``,
    spread evenly over the images)."""
    crops = []
    for image in images.values():
        norm = normalization_range(model, image)
        x = network_input(model, image, norm)
        for row in range(0, x.shape[0] - CROP + 1, CROP):
            for col in range(0, x.shape[1] - CROP + 1, CROP):
                crops.append(np.ascontiguousarray(x[row:row + CROP, col:col + CROP])[None])
    if len(crops) > MAX_CROPS:
        keep = np.linspace(0, len(crops) - 1, MAX_CROPS).round().astype(int)
        crops = [crops[i] for i in keep]
    return crops


def quantize(model_folder: Path, root: Path) -> Path:
    """Quantise one model folder's network; returns the int8 ``network.xml`` written."""
    import nncf
    import openvino as ov

    meta = json.loads((model_folder / "hccbio_model.json").read_text())
    model = load_model(str(model_folder), backend="openvino")
    if model.backend != "openvino":
        raise RuntimeError(f"{model_folder}: OpenVINO could not convert the network")
    float_network = ov.Core().read_model(model.extra["openvino"].ir_path)
    images = calibration_images(root, meta["kind"])
    crops = calibration_crops(model, images)
    started = time.perf_counter()
    quantised = nncf.quantize(float_network, nncf.Dataset(crops), subset_size=len(crops),
                              preset=nncf.QuantizationPreset.MIXED)
    seconds = time.perf_counter() - started
    xml, record_path = backends.int8_paths(model_folder)
    staging = model_folder / f".int8-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        ov.save_model(quantised, str(staging / backends.INT8_NETWORK), compress_to_fp16=False)
        record = {
            "weights_sha256": model.sha256,
            "calibration": {"images": sorted(images), "crops": len(crops), "crop_px": CROP,
                            "mpp": None if meta["kind"] == "fluo" else WORKING_MPP},
            "nncf": {"version": metadata.version("nncf"), "preset": "mixed",
                     "seconds": round(seconds, 1)},
            "openvino": backends.openvino_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / backends.INT8_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        previous = model_folder / f".int8-old-{uuid.uuid4().hex[:8]}"
        if xml.parent.exists():
            xml.parent.rename(previous)
        staging.rename(xml.parent)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return xml


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train import shared_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders")
    args = parser.parse_args(argv)
    root = shared_data()
    for folder in args.models:
        xml = quantize(folder, root)
        print(f"{folder}: {xml} ({xml.with_suffix('.bin').stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
