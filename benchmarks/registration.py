"""Registration accuracy on ANHIR's rat kidney (H&E vs pan-cytokeratin IHC, 69 landmarks).

    python -m benchmarks.registration [--data ../shared/data] [--out benchmarks/results/...]

rTRE (ANHIR's relative target registration error) = distance between a landmark of the IHC
mapped onto the H&E and the H&E's landmark of the same index, divided by the diagonal of the
H&E image; median and maximum over the landmarks, unregistered, after the affine stage and
after the full method. The full method is what ``hccbio slides register`` runs
(:func:`pathology.registration.register_images`, default configuration); the affine figure is
the same run's affine stage (its transform without the B-spline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pathology.evaluation.annotations import shared_data_folder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = shared_data_folder(must_exist=False)
PAIR = Path("registration") / "anhir-rat-kidney"
TARGET_MEDIAN = 0.005


def rtre(mapped: np.ndarray, target: np.ndarray, size: tuple[int, int]) -> dict:
    """Median and maximum rTRE of mapped points against their targets."""
    error = np.hypot(*(np.asarray(mapped) - np.asarray(target)).T) / np.hypot(*size)
    return {"median": round(float(np.median(error)), 5), "max": round(float(error.max()), 5),
            "mean": round(float(error.mean()), 5)}


def run(data: Path, *, config_updates: dict | None = None) -> dict:
    """Register the pair and measure rTRE at every stage."""
    from skimage import io as skio

    from pathology.config import PathologyConfig
    from pathology.registration import register_images

    folder = data / PAIR
    moving, fixed = folder / "Rat-Kidney_PanCytokeratin.jpg", folder / "Rat-Kidney_HE.jpg"
    config = PathologyConfig.model_validate({"registration": config_updates or {}})
    landmarks = pd.read_csv(folder / "Rat-Kidney_PanCytokeratin.csv", index_col=0)
    targets = pd.read_csv(folder / "Rat-Kidney_HE.csv", index_col=0)
    common = landmarks.index.intersection(targets.index)
    points = landmarks.loc[common, ["X", "Y"]].to_numpy(float)
    target = targets.loc[common, ["X", "Y"]].to_numpy(float)
    size = skio.imread(fixed).shape[1::-1]
    started = time.perf_counter()
    result = register_images(moving, fixed, config=config)
    seconds = time.perf_counter() - started
    stages = {}
    for stage in result.alignment.stages:
        stages[stage.name] = {"rtre": rtre(stage.transform.map_level0(points), target, size),
                              **stage.to_json()}
    affine = result.alignment.stage("affine")
    return {
        "pair": str(PAIR), "landmarks": int(len(common)), "fixed_size": list(size),
        "unregistered": rtre(points, target, size),
        "affine": rtre(affine.transform.map_level0(points), target, size),
        "full": rtre(result.transform.map_level0(points), target, size),
        "full_method": ("affine + B-spline" if result.transform.field is not None
                        else "affine (B-spline tried, not kept)"
                        if result.alignment.stage("nonrigid") else "affine"),
        "status": result.status, "seconds": round(seconds, 2), "stages": stages,
        "settings": result.settings, "target_median": TARGET_MEDIAN,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "registration-latest.json")
    args = parser.parse_args()
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"python": platform.python_version(),
                          "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count()},
              "default": run(args.data),
              "affine_only": run(args.data, config_updates={"nonrigid": False})}
    from importlib import metadata

    report["machine"]["SimpleITK"] = metadata.version("SimpleITK")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    d = report["default"]
    print(f"rTRE median / max: unregistered {d['unregistered']['median']:.4f} / "
          f"{d['unregistered']['max']:.4f}, affine {d['affine']['median']:.4f} / "
          f"{d['affine']['max']:.4f}, full ({d['full_method']}) {d['full']['median']:.4f} / "
          f"{d['full']['max']:.4f}; {d['seconds']:.1f} s; status {d['status']}; "
          f"target median <= {TARGET_MEDIAN}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
