"""Speed and memory benchmarks of the slide pipeline; writes ``benchmarks/results/latest.json``.

Usage::

    python -m benchmarks.run            # 10k and 40k slides for memory, 2 x 2048^2 tiles speed
    python -m benchmarks.run --quick    # smaller slides (4k, 8k); same keys

All figures are measured in one run on the same tiles of a real slide (CMU-1-Small-Region, H&E,
from ``$HCCBIO_SHARED_DATA``); the large slides are built from that real tissue
(:mod:`benchmarks.synthetic_slide`). Targets (issue 5) are recorded beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "models/he_nuclei"
FAST_MODEL = "models/he_nuclei_fast"
FAST_KEYS = ("model", "n_nuclei", "pipeline_s", "raw_forward_s", "predict_instances_big_s",
             "nuclei_per_s", "nuclei_per_s_per_core", "vs_raw_forward",
             "vs_predict_instances_big", "stage_s")
TARGETS = {"vs_raw_forward": ">= 0.9", "vs_predict_instances_big": ">= 1.0",
           "nuclei_per_s_per_core": ">= 2000", "peak_rss_gb_large": "< 2.5 and < 1.2 x small",
           "scaling_2_workers": ">= 1.7"}


def _shared_data() -> Path:
    from pathology.evaluation.annotations import shared_data_folder

    try:
        return shared_data_folder()
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None


def _config(tile_size: int, brightfield_model: str = DEFAULT_MODEL, backend: str = "auto",
            tiles_per_forward: int | None = None, tiles_per_task: int = 1):
    from pathology.config import (
        BatchSection,
        PathologyConfig,
        SegmentationSection,
        TilingSection,
    )

    return PathologyConfig(tiling=TilingSection(tile_size=tile_size, halo=64),
                           segmentation=SegmentationSection(brightfield_model=brightfield_model,
                                                            backend=backend),
                           batch=BatchSection(tiles_per_task=tiles_per_task,
                                              tiles_per_forward=tiles_per_forward))


def write_report(path: Path, results: dict) -> None:
    """Write a benchmark report as JSON atomically (and print it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    print(json.dumps(results, indent=2))


def _real_region(size: int) -> np.ndarray:
    """A ``size`` x ``size`` region of CMU-1-Small-Region at 0.5 um/px, centred on the same
    tissue whatever its size (2048: the region read from (100, 600), as always)."""
    from pathology.io.slide import Slide

    x, y = max(0, 1124 - size // 2), max(0, 1624 - size // 2)
    with Slide(_shared_data() / "slides" / "pathml-testdata" / "small_HE.svs") as slide:
        return slide.read_region_at(x, y, size, size, mpp=0.5)


def bench_segmentation(work: Path, region_path: Path, tile_size: int,
                       brightfield_model: str = DEFAULT_MODEL, *, backend: str = "auto",
                       per_forward: int | None = None,
                       predict_instances_big: bool = True) -> dict:
    """Pipeline vs raw network forward pass vs stardist's predict_instances_big (optional),
    with the network run by ``backend`` (``segmentation.backend``)."""
    from pathology.io.slide import Slide
    from pathology.run.pipeline import (
        ModelCache,
        SlideJob,
        prepare_slide,
        process_tiles,
        tiles_per_forward,
    )
    from pathology.segmentation.nuclei import forward_pass, network_input

    config = _config(tile_size, brightfield_model, backend, per_forward)
    models = ModelCache(config)
    model = models.get("brightfield")
    job = SlideJob("bench", region_path, "he")
    plan = prepare_slide(job, work / "seg", config, models)
    # Warm-up (graph tracing) on one tile, in another folder, not timed.
    warm_plan = prepare_slide(job, work / "warm", config, models)
    process_tiles(warm_plan, work / "warm", config, models, [warm_plan.tiles[0].index])

    started = time.perf_counter()
    process_tiles(plan, work / "seg", config, models)
    pipeline_s = time.perf_counter() - started
    import pyarrow.parquet as pq

    store_parts = sorted((work / "seg" / "slides" / "bench" / "cell_parts").glob("*.parquet"))
    n_nuclei = sum(pq.read_metadata(p).num_rows for p in store_parts)

    with Slide(region_path) as slide:
        boxes = [slide.read_region_at(t.read_x, t.read_y, t.read_width, t.read_height, mpp=0.5)
                 for t in plan.tiles]
        whole = slide.read_region_at(0, 0, *slide.working_shape(0.5)[::-1], mpp=0.5)
    # The network alone, called the fastest way (one traced function or the compiled OpenVINO
    # network, inputs prepared beforehand), on the same read boxes, batched as the pipeline
    # batches them (tiles_per_forward tiles of one size per pass).
    per_pass = tiles_per_forward(config)
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for box in boxes:
        x = network_input(model, box, plan.norm_range)
        by_shape.setdefault(x.shape, []).append(x)
    inputs = [np.stack(same[i:i + per_pass]) for same in by_shape.values()
              for i in range(0, len(same), per_pass)]
    started = time.perf_counter()
    for x in inputs:
        forward_pass(model, x)
    forward_s = time.perf_counter() - started
    low, high = plan.norm_range

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results = {
        "model": brightfield_model, "backend": model.backend,
        "tiles_per_forward": tiles_per_forward(config),
        "stage_s": _stage_seconds(model, plan, boxes),
        "region_px": list(whole.shape[:2]), "tile_size": tile_size, "n_tiles": len(plan.tiles),
        "n_nuclei": n_nuclei, "pipeline_s": round(pipeline_s, 2),
        "raw_forward_s": round(forward_s, 2),
        "nuclei_per_s": round(n_nuclei / pipeline_s, 1),
        "nuclei_per_s_per_core": round(n_nuclei / pipeline_s / cores, 1),
        "cores": cores,
        # tissue of the region at 0.5 um/px (the tiles' tissue mask), pipeline only
        "tissue_area_mm2": round(plan.tissue_area_mm2, 4),
        "s_per_mm2": round(pipeline_s / plan.tissue_area_mm2, 3),
        "vs_raw_forward": round(forward_s / pipeline_s, 3),
    }
    if predict_instances_big:
        x = (whole.astype(np.float32) - low) / (high - low)
        started = time.perf_counter()
        labels, _ = model.model.predict_instances_big(
            x, axes="YXC", block_size=tile_size, min_overlap=64, context=64,
            prob_thresh=model.prob_thresh, nms_thresh=model.nms_thresh, show_progress=False)
        big_s = time.perf_counter() - started
        results.update({"predict_instances_big_s": round(big_s, 2),
                        "predict_instances_big_nuclei": int(labels.max()),
                        "vs_predict_instances_big": round(big_s / pipeline_s, 3)})
    return results


def _stage_seconds(model, plan, boxes: list[np.ndarray]) -> dict:
    """Where the pipeline's time goes: each stage run alone, one after the other, on the
    same read boxes (the pipeline overlaps reading and the network with the rest)."""
    from pathology.cells.measure import measure_tile
    from pathology.segmentation.nuclei import instances_from_prediction, predict_tiles

    seconds = {"forward_with_input": 0.0, "nms_and_labels": 0.0, "measure": 0.0}
    for tile, box in zip(plan.tiles, boxes, strict=True):
        started = time.perf_counter()
        (prediction,) = predict_tiles(model, [box], plan.norm_range)
        seconds["forward_with_input"] += time.perf_counter() - started
        started = time.perf_counter()
        nuclei = instances_from_prediction(model, prediction)
        seconds["nms_and_labels"] += time.perf_counter() - started
        started = time.perf_counter()
        measure_tile(tile, nuclei, box, kind="brightfield", working_mpp=0.5, level0_mpp=0.5,
                     channels=("R", "G", "B"))
        seconds["measure"] += time.perf_counter() - started
    return {key: round(value, 2) for key, value in seconds.items()}


def bench_tissue(slide_path: Path) -> dict:
    """Tissue detection throughput over a whole (large) slide."""
    from pathology.config import TissueSection
    from pathology.io.slide import Slide
    from pathology.tissue.detect import detect_tissue

    started = time.perf_counter()
    with Slide(slide_path) as slide:
        overview = slide.read_overview(8.0)
        width, height = slide.info.dimensions
    detect_tissue(overview, kind="brightfield", mpp=8.0, config=TissueSection())
    seconds = time.perf_counter() - started
    return {"tissue_mpx_per_s": round(width * height / 1e6 / seconds, 1),
            "tissue_slide_px": [height, width], "tissue_s": round(seconds, 2)}


def bench_end_to_end(slide_path: Path, work: Path, backend: str = "auto",
                     workers: int | None = None) -> dict:
    """One whole slide through ``run_slides`` as a lab runs it: default configuration (but
    ``segmentation.backend``), a Dask LocalCluster with one worker per core (or ``workers``);
    tissue,
    segmentation, cells, phenotypes, regions, spatial features, QC and the run tables, cluster
    and model start-up included."""
    from pathology.config import PathologyConfig, SegmentationSection
    from pathology.io.slide import Slide
    from pathology.run.batch import run_slides
    from pathology.run.pipeline import SlideJob

    with Slide(slide_path) as slide:
        height, width = slide.working_shape(0.5)
    config = PathologyConfig(segmentation=SegmentationSection(backend=backend))
    started = time.perf_counter()
    (row,) = run_slides([SlideJob("e2e", slide_path, "he")], work, config,
                        scheduler=f"local:{workers}" if workers else "local")
    seconds = time.perf_counter() - started
    if row.status != "done":
        raise RuntimeError(f"end-to-end benchmark slide failed: {row.reason}")
    features = json.loads((work / "slides" / "e2e" / "features.json").read_text())
    tissue_mm2 = features["tissue_area_mm2"]["value"]
    return {"end_to_end_s": round(seconds, 1), "end_to_end_slide_px": [height, width],
            "end_to_end_cells": row.cells, "end_to_end_backend": features["model"]["backend"],
            "end_to_end_tissue_mm2": round(tissue_mm2, 2),
            "end_to_end_s_per_mm2": round(seconds / tissue_mm2, 2),
            "end_to_end_mm2_per_hour": round(height * width * 0.25e-6 / seconds * 3600, 1)}


def own_peak_rss_gb() -> float:
    """This process's peak resident memory (GB) since it started its program: ``VmHWM``
    where ``/proc`` has it (Linux), else ``getrusage`` (which may include a parent's).

    Examples
    --------
    >>> 0.0 < own_peak_rss_gb() < 1024
    True
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def bench_rss(slide_path: Path, work: Path, max_tiles: int, backend: str = "auto") -> float:
    """Peak RSS (GB) of a fresh process that prepares the slide and segments a few tiles
    (one worker's memory), the network run by ``backend``.

    The peak is the process's own high-water mark (``VmHWM`` of ``/proc/self/status``), not
    ``getrusage``'s ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``fork`` and ``exec``, so a
    child started by a large parent reports at least the parent's size (this made OpenVINO
    look 0.4-0.9 GB heavier inside the full benchmark run than alone).
    """
    code = (
        "import json, resource, sys; from pathlib import Path\n"
        "from benchmarks.run import _config, own_peak_rss_gb\n"
        "from pathology.run.pipeline import ModelCache, SlideJob, process_slide\n"
        f"config = _config(1024, backend={backend!r})\n"
        f"process_slide(SlideJob('rss', Path({str(slide_path)!r}), 'he'), Path({str(work)!r}),"
        f" config, ModelCache(config), max_tiles={max_tiles})\n"
        "print(json.dumps(own_peak_rss_gb()))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), check=True)
    return round(float(result.stdout.strip().splitlines()[-1]), 3)


def _load_models(config) -> None:
    """Load the worker's models (returns nothing: a loaded model does not pickle)."""
    from pathology.run.schedulers import worker_models

    worker_models(config)


def bench_scaling(region_path: Path, work: Path, backend: str = "auto",
                  workers_list: tuple[int, ...] = (1, 2), tiles_per_forward: int | None = None,
                  env: dict[str, str] | None = None) -> dict:
    """Tile throughput with two single-threaded Dask workers divided by one (or any worker
    counts: ``scaling_seconds`` has each), the network run by ``backend``. A task holds
    ``tiles_per_forward`` tiles (one forward pass)."""
    from distributed import Client, LocalCluster

    from pathology.run.pipeline import SlideJob
    from pathology.run.schedulers import SINGLE_THREAD_ENV, task_prepare, task_tiles

    per_task = tiles_per_forward or 1
    config = _config(512, backend=backend, tiles_per_forward=tiles_per_forward,
                     tiles_per_task=per_task)
    job = SlideJob("scale", region_path, "he")
    seconds = {}
    for workers in workers_list:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          env=env if env is not None else SINGLE_THREAD_ENV,
                          dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            out = work / f"scale{workers}"
            plan = client.submit(task_prepare, job, out, config).result()
            client.run(_load_models, config)  # load the model on every worker (not timed)
            addresses = sorted(client.scheduler_info()["workers"])
            for i, address in enumerate(addresses):  # trace the network on each worker
                warm_out = work / f"warm{workers}_{i}"
                warm_plan = client.submit(task_prepare, job, warm_out, config, pure=False,
                                          workers=[address]).result()
                client.submit(task_tiles, warm_plan, warm_out, config,
                              [warm_plan.tiles[0].index], pure=False,
                              workers=[address]).result()
            started = time.perf_counter()
            indices = [t.index for t in plan.tiles]
            futures = [client.submit(task_tiles, plan, out, config,
                                     indices[i:i + per_task], pure=False)
                       for i in range(0, len(indices), per_task)]
            client.gather(futures)
            seconds[workers] = time.perf_counter() - started
    result: dict = {"scaling_seconds": {str(k): round(v, 2) for k, v in seconds.items()}}
    if 1 in seconds and 2 in seconds:
        result["scaling_2_workers"] = round(seconds[1] / seconds[2], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller slides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "latest.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.synthetic_slide import write_large_slide
    from integration.demo import write_pyramidal_tiff

    small_size, large_size = (4096, 8192) if args.quick else (10240, 40960)
    region_size = 2048
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory(prefix="hccbio-bench-") as tmp:
        work = Path(tmp)
        region = _real_region(region_size)
        region_path = work / "region.tiff"
        write_pyramidal_tiff(region_path, region, mpp=0.5)
        print("segmentation ...", flush=True)
        results.update(bench_segmentation(work / "default", region_path, 1024))
        if (ROOT / FAST_MODEL).is_dir():
            print("segmentation, fast model ...", flush=True)
            fast = bench_segmentation(work / "fast", region_path, 1024, FAST_MODEL)
            results["fast_model"] = {key: fast[key] for key in FAST_KEYS}
        print("scaling ...", flush=True)
        results.update(bench_scaling(region_path, work))
        for name, size in (("small", small_size), ("large", large_size)):
            print(f"{name} slide {size} px ...", flush=True)
            path = write_large_slide(work / f"{name}.tiff", region, size, mpp=0.5)
            if name == "large":
                results.update(bench_tissue(path))
            else:
                print("end to end ...", flush=True)
                results.update(bench_end_to_end(path, work / "e2e"))
            results[f"peak_rss_gb_{name}"] = bench_rss(path, work / f"rss_{name}", 4)
            results[f"slide_px_{name}"] = size
            path.unlink()
        results["rss_growth_small_to_large"] = round(
            results["peak_rss_gb_large"] / results["peak_rss_gb_small"] - 1, 3)
    try:
        from benchmarks.spatial import run as spatial_run

        print("spatial ...", flush=True)
        results.update(spatial_run(quick=args.quick))
    except ImportError as error:
        results["spatial_1m_cells_s"] = None
        results["spatial_error"] = str(error)
    write_report(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
