"""Benchmark: slide features (phenotypes, regions, densities, Ripley K/L, cross-L, nearest
neighbours, Morisita-Horn, Gi*) for a synthetic slide of one million cells.

Usage: ``python benchmarks/spatial.py [--quick] [--out benchmarks/spatial.json]``.
:func:`run` returns ``{"spatial_1m_cells_s": seconds, ...}`` for the lead's benchmark runner.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pathology.config import PathologyConfig, PhenotypesSection  # noqa: E402
from pathology.features import compute_slide_features  # noqa: E402

MASK_MPP = 8.0


def synthetic_slide(folder: Path, n_cells: int, *, seed: int = 0) -> None:
    """A CD8 IHC slide: a round tissue section, a tumour nodule of clustered large nuclei,
    CD8+ cells denser at the tumour border, and other cells at random."""
    rng = np.random.default_rng(seed)
    density = 2500.0  # cells per mm^2
    radius_um = np.sqrt(n_cells / density / np.pi) * 1000
    size = int(np.ceil(2 * radius_um / MASK_MPP)) + 2
    yy, xx = np.mgrid[:size, :size]
    centre = size / 2
    mask = np.hypot(yy + 0.5 - centre, xx + 0.5 - centre) * MASK_MPP < radius_um

    def uniform_in_disk(n: int, r: float, cx: float, cy: float) -> np.ndarray:
        angle, rad = rng.uniform(0, 2 * np.pi, n), r * np.sqrt(rng.random(n))
        return np.column_stack([cx + rad * np.cos(angle), cy + rad * np.sin(angle)])

    c = centre * MASK_MPP
    n_tumour, n_cd8 = int(0.5 * n_cells), int(0.1 * n_cells)
    tumour = uniform_in_disk(n_tumour, 0.55 * radius_um, c, c)
    border = uniform_in_disk(n_cd8, 0.7 * radius_um, c, c)
    other = uniform_in_disk(n_cells - n_tumour - n_cd8, radius_um * 0.999, c, c)
    xy = np.concatenate([tumour, border, other])
    area = np.r_[np.full(n_tumour, 60.0), np.full(n_cells - n_tumour, 22.0)]
    dab = np.r_[np.full(n_tumour, 0.02), np.full(n_cd8, 0.7),
                np.full(n_cells - n_tumour - n_cd8, 0.03)]
    cells = pd.DataFrame({"cell_id": np.arange(n_cells), "x_um": xy[:, 0], "y_um": xy[:, 1],
                          "area_um2": area})
    for compartment in ("nucleus", "ring"):
        cells[f"{compartment}_hematoxylin_od"] = np.float32(0.3)
        cells[f"{compartment}_eosin_od"] = np.float32(-0.05)
        cells[f"{compartment}_dab_od"] = dab.astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    cells.to_parquet(folder / "cells.parquet")
    group = zarr.open_group(str(folder / "store.zarr"), mode="w")
    array = group.create_array("tissue_mask", shape=mask.shape, dtype="uint8")
    array[...] = mask.astype(np.uint8)
    array.attrs["mpp"] = MASK_MPP
    (folder / "features.json").write_text(json.dumps({"n_nuclei": n_cells}))


def run(quick: bool = False) -> dict:
    """Time features for 1 million cells (100,000 with ``quick``).

    Returns
    -------
    dict
        ``spatial_1m_cells_s`` (seconds, scaled linearly from the quick size when quick),
        ``n_cells``, ``seconds``, ``features_traced_peak_mb`` (peak of numpy / Python
        allocations during the features, by tracemalloc), ``process_peak_rss_mb`` (the whole
        process, synthetic-slide generation included) and ``n_features``.
    """
    n_cells = 100_000 if quick else 1_000_000
    config = PathologyConfig(phenotypes=PhenotypesSection(
        panels_dir=str(ROOT / "configs" / "panels")))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        synthetic_slide(out / "slides" / "bench", n_cells)
        started = time.perf_counter()
        row = compute_slide_features(out / "slides" / "bench", modality="ihc", stain="CD8",
                                     config=config)
        seconds = time.perf_counter() - started
        tracemalloc.start()  # a second, traced run: peak of numpy / Python allocations
        compute_slide_features(out / "slides" / "bench", modality="ihc", stain="CD8", config=config)
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"spatial_1m_cells_s": seconds * 1_000_000 / n_cells, "n_cells": n_cells,
            "seconds": seconds, "features_traced_peak_mb": traced_peak,
            "process_peak_rss_mb": peak_mb, "n_features": len(row) - 3,
            "immune_class": row.get("ihc_cd8_immune_class"), "quick": quick}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args.quick)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
