"""Every speed figure for each network backend side by side, in one run; writes
``benchmarks/results/backends-latest.json``.

Usage::

    python -m benchmarks.backends            # 2048^2 region, 1 vs 2 workers, 10k slide end to end
    python -m benchmarks.backends --quick    # the same with a 4k slide end to end
    python -m benchmarks.backends --region 512 --workers 1 --slide 0 --no-rss   # smoke test

For each backend (``segmentation.backend``: ``tensorflow``, and ``openvino`` when it is
installed), on the same read boxes of the same real H&E region (CMU-1-Small-Region at
0.5 um/px, from ``$HCCBIO_SHARED_DATA``): the network alone, the pipeline (``process_tiles``:
read, network, non-maximum suppression, measurements), nuclei/s, seconds per mm^2 of tissue,
the peak memory of one worker (a fresh process segmenting the region's first tiles), tile
throughput with 1 and 2 single-threaded Dask workers and, unless ``--slide 0``, a whole slide
end to end (``run_slides``, QC included) built from the same tissue. Then how far the
backends' cells agree (centroids matched one-to-one within 1 um) and the ratios that issue 17
targets. ``--tiles-per-forward 4 1 8`` repeats the pipeline and network figures for each
batch size, and ``--end-to-end-workers 1 2 4`` the whole slide for each worker count (GPU
runs: ``benchmarks/gpu.sh``). Speed figures exclude model loading, conversion and tracing
(warm-up on one tile first), except end to end, which includes everything.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.run import (
    DEFAULT_MODEL,
    ROOT,
    _real_region,
    bench_end_to_end,
    bench_rss,
    bench_scaling,
    bench_segmentation,
    write_report,
)

BACKENDS = ("tensorflow", "openvino")
# Issue 17, on the same machine in the same run (OpenVINO against TensorFlow).
TARGETS = {"network_speedup": ">= 1.5", "nuclei_per_s_speedup": ">= 1.3",
           "peak_rss_gb": "<= 1.6 per worker (today's TensorFlow figure)",
           "matched_within_1um": ">= 0.995", "count_difference": "<= 0.005"}


def available_backends() -> list[str]:
    """The backends this environment can run (OpenVINO only when it is installed)."""
    from pathology.segmentation.backends import openvino_available

    return [b for b in BACKENDS if b != "openvino" or openvino_available()]


def _machine() -> dict:
    machine = {"platform": platform.platform(), "processor": platform.processor(),
               "cpu_count": os.cpu_count(), "python": platform.python_version()}
    from importlib import metadata

    for package in ("tensorflow", "tensorflow-cpu", "openvino", "stardist"):
        try:
            machine[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    from pathology.segmentation.nuclei import gpu_available

    machine["tensorflow_sees_gpu"] = gpu_available()
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=30, check=False)
        machine["nvidia_smi"] = query.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        machine["nvidia_smi"] = None
    return machine


def _cells_xy(run_folder: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    parts = sorted((run_folder / "slides" / "bench" / "cell_parts").glob("*.parquet"))
    tables = [pq.read_table(p, columns=["x_um", "y_um"]).to_pandas() for p in parts]
    return np.concatenate([t.to_numpy() for t in tables]) if tables else np.zeros((0, 2))


def agreement(reference: np.ndarray, other: np.ndarray, *, max_distance_um: float = 1.0
              ) -> dict:
    """How far two backends' cells agree: counts, and the share of the larger set matched
    one-to-one within ``max_distance_um`` (centroids).

    Examples
    --------
    >>> agreement(np.array([[0.0, 0.0], [5.0, 5.0]]), np.array([[0.2, 0.0]]))["matched"]
    1
    """
    from pathology.evaluation.harness import match_centroids

    matched, _ = match_centroids(reference, other, max_distance_um)
    larger = max(len(reference), len(other), 1)
    return {"n_reference": int(len(reference)), "n_other": int(len(other)),
            "matched": int(len(matched)),
            "matched_within_1um": round(len(matched) / larger, 4),
            "count_difference": round(abs(len(other) - len(reference))
                                      / max(len(reference), 1), 4)}


def compare(work: Path, region_path: Path, *, backends: list[str], tile_size: int = 1024,
            workers: tuple[int, ...] = (1, 2), rss: bool = True, slide_path: Path | None = None,
            tiles_per_forward: tuple[int, ...] = (),
            end_to_end_workers: tuple[int, ...] = ()) -> dict:
    """Run every figure for each backend on the same region (and slide).

    Parameters
    ----------
    work
        An empty scratch folder.
    region_path
        The real region as a pyramidal TIFF at 0.5 um/px.
    backends
        ``segmentation.backend`` values to measure.
    tile_size
        Tile core size for the pipeline and network figures.
    workers
        Dask worker counts for the throughput figures (empty: none).
    rss
        Measure one worker's peak memory in a fresh process.
    slide_path
        A whole slide for the end-to-end figures (None: skipped).
    tiles_per_forward
        Batch sizes to repeat the pipeline figures with (empty: the default only); the
        worker figures use the first.
    end_to_end_workers
        Worker counts for the whole slide (empty: one per core), e.g. workers per GPU.

    Returns
    -------
    dict
        ``backends`` (figures per backend), ``agreement`` and ``openvino_vs_tensorflow``.
    """
    figures: dict[str, dict] = {}
    cells: dict[str, np.ndarray] = {}
    for backend in backends:
        print(f"{backend}: segmentation ...", flush=True)
        entry = bench_segmentation(work / backend, region_path, tile_size, DEFAULT_MODEL,
                                   backend=backend, predict_instances_big=False)
        if entry["backend"] != backend:
            raise RuntimeError(f"segmentation.backend {backend} fell back to "
                               f"{entry['backend']} (see the log); nothing to compare")
        cells[backend] = _cells_xy(work / backend / "seg")
        for per_forward in tiles_per_forward:
            print(f"{backend}: {per_forward} tiles per forward pass ...", flush=True)
            batched = bench_segmentation(work / f"{backend}_b{per_forward}", region_path,
                                         tile_size, DEFAULT_MODEL, backend=backend,
                                         per_forward=per_forward, predict_instances_big=False)
            entry.setdefault("by_tiles_per_forward", {})[str(per_forward)] = {
                key: batched[key] for key in ("pipeline_s", "raw_forward_s", "nuclei_per_s",
                                              "s_per_mm2", "n_nuclei")}
        if rss:
            print(f"{backend}: peak memory ...", flush=True)
            entry["peak_rss_gb"] = bench_rss(region_path, work / f"rss_{backend}", 4,
                                             backend=backend)
        if workers:
            print(f"{backend}: workers {workers} ...", flush=True)
            entry.update(bench_scaling(region_path, work / f"scale_{backend}", backend,
                                       workers_list=workers,
                                       tiles_per_forward=(tiles_per_forward or (None,))[0]))
        if slide_path is not None:
            for n in end_to_end_workers or (None,):
                print(f"{backend}: end to end, {n or 'one per core'} workers ...", flush=True)
                e2e = bench_end_to_end(slide_path, work / f"e2e_{backend}_{n}", backend, n)
                if n is None:
                    entry.update(e2e)
                else:
                    entry.setdefault("end_to_end_by_workers", {})[str(n)] = e2e
        figures[backend] = entry
    result: dict = {"backends": figures}
    if "tensorflow" in figures and "openvino" in figures:
        tf, ov = figures["tensorflow"], figures["openvino"]
        result["agreement"] = agreement(cells["tensorflow"], cells["openvino"])
        ratios = {"network_speedup": round(tf["raw_forward_s"] / ov["raw_forward_s"], 3),
                  "pipeline_speedup": round(tf["pipeline_s"] / ov["pipeline_s"], 3),
                  "nuclei_per_s_speedup": round(ov["nuclei_per_s"] / tf["nuclei_per_s"], 3)}
        if "peak_rss_gb" in tf and "peak_rss_gb" in ov:
            ratios["peak_rss_gb"] = {"tensorflow": tf["peak_rss_gb"],
                                     "openvino": ov["peak_rss_gb"]}
        if "end_to_end_s" in tf and "end_to_end_s" in ov:
            ratios["end_to_end_speedup"] = round(tf["end_to_end_s"] / ov["end_to_end_s"], 3)
            ratios["end_to_end_s_per_mm2"] = {"tensorflow": tf["end_to_end_s_per_mm2"],
                                              "openvino": ov["end_to_end_s_per_mm2"]}
        result["openvino_vs_tensorflow"] = ratios
    return result


def memory_only(work: Path, region_path: Path, backends: list[str], repeats: int = 2) -> dict:
    """One worker's peak memory (fresh process, four 1024-px tiles) per backend, measured
    ``repeats`` times in turns; ``peak_rss_gb`` is the largest."""
    runs: dict[str, list[float]] = {backend: [] for backend in backends}
    for repeat in range(repeats):
        for backend in backends:
            print(f"{backend}: peak memory ({repeat + 1} of {repeats}) ...", flush=True)
            runs[backend].append(bench_rss(region_path, work / f"rss_{backend}_{repeat}", 4,
                                           backend=backend))
    figures = {b: {"peak_rss_gb": max(r), "peak_rss_gb_runs": r} for b, r in runs.items()}
    result: dict = {"backends": figures}
    if "tensorflow" in figures and "openvino" in figures:
        result["openvino_vs_tensorflow"] = {"peak_rss_gb": {
            b: figures[b]["peak_rss_gb"] for b in ("tensorflow", "openvino")}}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4k slide end to end, not 10k")
    parser.add_argument("--region", type=int, default=2048, help="side of the real region (px)")
    parser.add_argument("--tile", type=int, default=1024, help="tile core size (px)")
    parser.add_argument("--slide", type=int, default=None,
                        help="side of the end-to-end slide (px); 0 = none")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                        help="Dask worker counts (none: skip)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory figure")
    parser.add_argument("--memory-only", action="store_true",
                        help="only one worker's peak memory per backend, twice each (a figure "
                        "that other jobs on the machine do not change, unlike the speeds)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                        help="default: every installed backend")
    parser.add_argument("--tiles-per-forward", type=int, nargs="*", default=[],
                        help="repeat the pipeline figures with these batch sizes")
    parser.add_argument("--end-to-end-workers", type=int, nargs="*", default=[],
                        help="worker counts for the whole slide (default: one per core)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "backends-latest.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.synthetic_slide import write_large_slide
    from integration.demo import write_pyramidal_tiff

    backends = args.backends or available_backends()
    slide_size = args.slide if args.slide is not None else (4096 if args.quick else 10240)
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "options": {"region_px": args.region, "tile_size": args.tile,
                    "memory_only": args.memory_only,
                    "slide_px": slide_size, "workers": args.workers, "rss": not args.no_rss,
                    "tiles_per_forward": args.tiles_per_forward,
                    "end_to_end_workers": args.end_to_end_workers, "model": DEFAULT_MODEL},
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory(prefix="hccbio-bench-backends-") as tmp:
        work = Path(tmp)
        region = _real_region(args.region)
        region_path = work / "region.tiff"
        write_pyramidal_tiff(region_path, region, mpp=0.5)
        if args.memory_only:
            results.update(memory_only(work, region_path, backends))
            write_report(args.out, results)
            return 0
        slide_path = (write_large_slide(work / "slide.tiff", region, slide_size, mpp=0.5)
                      if slide_size else None)
        results.update(compare(work, region_path, backends=backends, tile_size=args.tile,
                               workers=tuple(args.workers), rss=not args.no_rss,
                               slide_path=slide_path,
                               tiles_per_forward=tuple(args.tiles_per_forward),
                               end_to_end_workers=tuple(args.end_to_end_workers)))
    write_report(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
