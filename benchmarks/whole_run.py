"""Whole slide runs against the network alone, on one machine in one run (issue 30); writes
``benchmarks/results/whole_run.json`` and the "Whole runs" block of benchmarks/README.md.

Usage::

    python -m benchmarks.whole_run            # 3 x 3 mosaic of CMU-1-Small-Region (about 8 min)
    python -m benchmarks.whole_run --quick    # 1 x 2 mosaic
    python -m benchmarks.whole_run --no-profile --no-tensorflow   # the default runs only

The slide is a mosaic of the real CMU-1-Small-Region H&E (``$HCCBIO_SHARED_DATA``), written
into a temporary folder as a tiled, JPEG-compressed pyramidal TIFF with its pixel size (the
data never enter the repository). On it, each in a fresh run folder:

- ``hccbio slides run`` itself (a subprocess, the installed CLI) with the default configuration
  (a local Dask cluster, one worker per two cores), then with ``--scheduler sync``;
- whole sync runs with ``segmentation.backend: openvino`` and ``tensorflow``;
- the network alone for the same read boxes as the run's tiles, at the CPU's best: the default
  model through OpenVINO compiled with the LATENCY hint on all cores
  (:func:`pathology.segmentation.backends.compile_network`), inputs prepared beforehand
  (:func:`pathology.segmentation.nuclei.network_input`, ``forward_pass``), after one warm-up;
  TensorFlow's traced network the same way, for reference;
- a cProfile of a sync run (``python -m cProfile -o``), summarised per step.

Every figure is stated with the CPU it came from (model, AVX2 / AVX-512, cores), beside the
targets of issue 30: the default run at most 2x the network alone, OpenVINO at least 1.3x
TensorFlow in a whole run. Seconds per mm^2 use the tissue area the run itself reports
(``features.json``). Each run's processes are sampled (psutil) for their peak resident memory.
"""

from __future__ import annotations

import argparse
import csv
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from benchmarks.reports import save_report, write_block
from pathology.run.auto_backend import cpu_description

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SOURCE = Path("slides") / "pathml-testdata" / "small_HE.svs"  # CMU-1-Small-Region
SAMPLE = "mosaic"
TILE = 512  # TIFF tile (px)
# Issue 30's targets, as (figure, comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "run_vs_network": ("<=", 2.0),  # the default run / the network alone
    "openvino_vs_tensorflow": (">=", 1.3),  # whole sync runs, TensorFlow s / OpenVINO s
}


# --------------------------------------------------------------------------------------
# the machine


# --------------------------------------------------------------------------------------
# the slide


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks (edges cropped to whole blocks)."""
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, -1)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def write_mosaic(path: Path, region: np.ndarray, *, rows: int, cols: int, mpp: float,
                 downsample: int = 4, quality: int = 90, tile: int = TILE) -> Path:
    """Write ``rows`` x ``cols`` copies of ``region`` side by side as a tiled, JPEG-compressed
    pyramidal TIFF with its pixel size (a generic pyramidal TIFF, as OpenSlide reads it).

    Parameters
    ----------
    path
        The TIFF to write.
    region
        ``(H, W, 3)`` uint8 RGB.
    rows, cols
        Copies down and across.
    mpp
        Pixel size of ``region`` (um/px), written as the resolution tags of every level.
    downsample
        Factor between pyramid levels; levels stop before one smaller than a TIFF tile.
    quality
        JPEG quality.
    tile
        TIFF tile side (px, a multiple of 16).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> tif = Path(tempfile.mkdtemp()) / "m.tif"
    >>> _ = write_mosaic(tif, np.zeros((300, 400, 3), np.uint8), rows=2, cols=3, mpp=0.5)
    >>> tifffile.TiffFile(tif).pages[0].shape
    (600, 1200, 3)
    """
    if region.ndim != 3 or region.shape[2] != 3 or region.dtype != np.uint8:
        raise ValueError(f"write_mosaic needs an (H, W, 3) uint8 RGB region, got "
                         f"{region.shape} {region.dtype}")
    level = np.tile(region, (rows, cols, 1))
    per_cm = 1e4 / mpp
    factor = 1
    with tifffile.TiffWriter(path, bigtiff=level.nbytes > 2**31) as tif:
        while True:
            tif.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg",
                      compressionargs={"level": quality},
                      resolution=(per_cm / factor, per_cm / factor),
                      resolutionunit="CENTIMETER", subfiletype=0 if factor == 1 else 1)
            if min(level.shape[:2]) // downsample < tile:
                break
            level, factor = _downsample(level, downsample), factor * downsample
    return path


def real_region() -> tuple[np.ndarray, float]:
    """CMU-1-Small-Region's full-resolution pixels and pixel size (um/px), read as the
    pipeline reads it (:class:`pathology.io.slide.Slide`)."""
    from pathology.evaluation.annotations import shared_data_folder
    from pathology.io.slide import Slide

    with Slide(shared_data_folder() / SOURCE) as slide:
        width, height = slide.info.dimensions
        mpp = slide.info.pixel_size.mpp
        region = slide.read_region_at(0, 0, width, height, mpp=mpp)
    return np.ascontiguousarray(region[..., :3]), float(mpp)


def write_manifest(folder: Path, slide: Path) -> Path:
    """A one-slide manifest (``samples.csv``) for ``slide`` (H&E)."""
    manifest = folder / "samples.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "timepoint", "sample_id", "modality", "stain", "path"])
        writer.writerow(["P1", "baseline", SAMPLE, "he", "HE", str(slide)])
    return manifest


# --------------------------------------------------------------------------------------
# whole runs


@dataclass
class PeakMemory:
    """Peak resident memory (bytes) of a process and its descendants, sampled."""

    peaks: dict[int, tuple[int, str]]

    def sample(self, pid: int) -> None:
        """Record the current resident memory of ``pid`` and every descendant."""
        import psutil

        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                rss = process.memory_info().rss
                name = " ".join(process.cmdline()[:4])[-80:]
            except psutil.Error:
                continue
            if rss > self.peaks.get(process.pid, (0, ""))[0]:
                self.peaks[process.pid] = (rss, name)

    def summary(self, main_pid: int) -> dict:
        """Main process's peak, and the largest and count of the others (the workers)."""
        main = self.peaks.get(main_pid, (0, ""))[0]
        # only processes of real size count as workers (not shells or resource trackers)
        others = [rss for pid, (rss, _) in self.peaks.items()
                  if pid != main_pid and rss > 200 * 2**20]
        return {"main_gb": round(main / 2**30, 2),
                "worker_max_gb": round(max(others) / 2**30, 2) if others else None,
                "n_workers_sampled": len(others)}


def hccbio_command() -> list[str]:
    """The installed CLI (``hccbio`` beside this Python), else ``python -m integration.cli``."""
    script = Path(sys.executable).parent / "hccbio"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "integration.cli"]


def run_slides_cli(manifest: Path, out: Path, *, config: dict | None = None,
                   scheduler: str | None = None, profile: Path | None = None,
                   interval_s: float = 0.5) -> dict:
    """Run ``hccbio slides run`` on ``manifest`` in a subprocess and read what it reports.

    Parameters
    ----------
    manifest
        One-slide manifest (:func:`write_manifest`).
    out
        A new run folder.
    config
        Pathology configuration overrides, by section (written as YAML beside ``out``);
        None: the defaults.
    scheduler
        ``--scheduler`` (None: the configuration's, ``local`` by default).
    profile
        Write a cProfile of the main process here (``python -m cProfile -o``).
    interval_s
        How often the processes' memory is sampled.

    Returns
    -------
    dict
        ``seconds`` (wall clock of the command), ``tissue_mm2``, ``s_per_mm2``, ``cells``,
        ``tiles``, ``backend``, ``scheduler``, ``peak_rss``.
    """
    import json

    import yaml

    command = hccbio_command()
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m",
                   "integration.cli"]
    command += ["slides", "run", str(manifest), "--out", str(out), "--quiet"]
    if config:
        path = out.with_name(out.name + ".yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        command += ["--config", str(path)]
    if scheduler:
        command += ["--scheduler", scheduler]
    memory = PeakMemory({})
    log = out.with_name(out.name + ".log")
    started = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        while process.poll() is None:
            memory.sample(process.pid)
            time.sleep(interval_s)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {log}:\n"
                           + log.read_text()[-3000:])
    folder = out / "slides" / SAMPLE
    features = json.loads((folder / "features.json").read_text())
    record = json.loads((out / "run.json").read_text())["pathology"]
    import pyarrow.parquet as pq

    tissue = float(features["tissue_area_mm2"]["value"])
    return {"seconds": round(seconds, 1),
            "slide_seconds": record["timings"][SAMPLE]["seconds"],
            "scheduler": record["scheduler"],
            "backend": features["model"].get("backend"),
            "tissue_mm2": round(tissue, 3),
            "s_per_mm2": round(seconds / tissue, 2),
            "cells": pq.read_metadata(folder / "cells.parquet").num_rows,
            "tiles": len(list((folder / "cell_parts").glob("*.parquet"))),
            "peak_rss": memory.summary(process.pid)}


# --------------------------------------------------------------------------------------
# the network alone


def network_alone(slide_path: Path, work: Path, *, backend: str, repeats: int = 1) -> dict:
    """The default model's network alone on the read boxes of the tiles the default run
    segments, called the fastest way: OpenVINO compiled with the LATENCY hint on every core
    (:func:`pathology.segmentation.backends.compile_network`), or TensorFlow's traced
    function; inputs prepared beforehand, one warm-up pass not timed.

    Parameters
    ----------
    slide_path
        The slide.
    work
        Scratch folder (its tissue mask and tile plan).
    backend
        ``openvino`` or ``tensorflow``.
    repeats
        Timed passes over all boxes; the fastest is reported.

    Returns
    -------
    dict
        ``seconds``, ``per_box_s``, ``boxes``, ``box_px``, ``backend``, ``threads``.
    """
    from pathology.config import PathologyConfig, SegmentationSection
    from pathology.io.slide import Slide
    from pathology.run.pipeline import ModelCache, SlideJob, prepare_slide
    from pathology.segmentation.nuclei import forward_pass, network_input

    config = PathologyConfig(segmentation=SegmentationSection(backend=backend))
    models = ModelCache(config)
    model = models.get("he")
    if model.backend != backend:
        raise RuntimeError(f"segmentation.backend {backend} gave {model.backend}")
    cores = cpu_description()["cores"]
    if backend == "openvino":  # recompiled explicitly: LATENCY on all cores
        import openvino as ov

        from pathology.segmentation.backends import compile_network

        ir_path = model.extra["openvino"].ir_path
        model.extra["openvino"] = compile_network(ov.Core().read_model(str(ir_path)),
                                                  ir_path=ir_path, threads=cores)
    plan = prepare_slide(SlideJob(SAMPLE, slide_path, "he"), work, config, models)
    mpp = config.slide.working_mpp
    with Slide(slide_path) as slide:
        inputs = [network_input(model, slide.read_region_at(
            t.read_x, t.read_y, t.read_width, t.read_height, mpp=mpp), plan.norm_range)[None]
            for t in plan.tiles]
    forward_pass(model, inputs[0])  # warm-up: compilation, tracing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for x in inputs:
            forward_pass(model, x)
        best = min(best, time.perf_counter() - started)
    shapes = sorted({x.shape[1:3] for x in inputs})
    return {"backend": backend, "threads": cores if backend == "openvino" else "TensorFlow's",
            "hint": "LATENCY" if backend == "openvino" else None,
            "seconds": round(best, 2), "boxes": len(inputs),
            "per_box_s": round(best / len(inputs), 3),
            "box_px": [list(s) for s in shapes[-1:]]}


# --------------------------------------------------------------------------------------
# the profile


# (step, source file ending, function): cumulative seconds of these in the profile
PROFILE_STEPS: tuple[tuple[str, str, str], ...] = (
    ("model loading", "segmentation/nuclei.py", "load_model"),
    ("tissue, tile plan, stain matrix", "run/pipeline.py", "prepare_slide"),
    ("tiles (everything per tile)", "run/pipeline.py", "process_tiles"),
    ("reading", "run/pipeline.py", "_read_tile"),
    ("network (input preparation, forward pass)", "segmentation/nuclei.py", "predict_tiles"),
    ("waiting for the read-ahead thread", "concurrent/futures/_base.py", "result"),
    ("instance rendering (NMS, labels)", "segmentation/nuclei.py",
     "instances_from_prediction"),
    ("cell measurement", "cells/measure.py", "measure_tile"),
    ("  convex areas", "cells/measure.py", "_convex_areas"),
    ("  ring means", "cells/measure.py", "ring_means"),
    ("  expand_labels", "segmentation/_expand_labels.py", "expand_labels"),
    ("nucleus classes", "run/pipeline.py", "classify_tile"),
    ("  patches", "cells/nucleus_classes.py", "extract_patches"),
    ("  patch network", "cells/nucleus_classes.py", "probabilities"),
    ("cells.parquet", "run/pipeline.py", "consolidate_cells"),
    ("after the tiles (QC, features, overlays)", "run/finish.py", "post_process_slide"),
    ("  QC", "run/finish.py", "slide_qc"),
    ("  slide features", "run/finish.py", "slide_features"),
)


def profile_steps(stats: pstats.Stats | dict, *, n_top: int = 15) -> dict:
    """Cumulative seconds per pipeline step (:data:`PROFILE_STEPS`) and the top project
    functions by cumulative time, from a cProfile.

    Parameters
    ----------
    stats
        ``pstats.Stats``, or its ``.stats`` mapping ``(file, line, function) -> (primitive
        calls, calls, own s, cumulative s, callers)``.
    n_top
        How many of the project's functions to list.

    Returns
    -------
    dict
        ``steps`` ({step: seconds}, absent where the function never ran), ``calls``
        ({step: calls}) and ``top`` ([function, cumulative s, calls]).

    Examples
    --------
    >>> raw = {("/x/pathology/cells/measure.py", 1, "measure_tile"): (3, 3, 0.1, 2.5, {})}
    >>> profile_steps(raw)["steps"]
    {'cell measurement': 2.5}
    """
    table = stats.stats if isinstance(stats, pstats.Stats) else stats  # type: ignore[attr-defined]
    steps: dict[str, float] = {}
    calls: dict[str, int] = {}
    for step, ending, function in PROFILE_STEPS:
        hits = [v for (path, _, name), v in table.items()
                if name == function and path.replace("\\", "/").endswith(ending)]
        if hits:
            steps[step] = round(sum(v[3] for v in hits), 2)
            calls[step] = int(sum(v[1] for v in hits))
    # the pipeline's own functions, below the runner's entry points (CLI, batch)
    own = [(f"{Path(path).parent.name}/{Path(path).name}:{name}", v[3], v[1])
           for (path, _, name), v in table.items()
           if any(part in path for part in ("/pathology/", "/hcccore/"))
           and not path.replace("\\", "/").endswith("run/batch.py") and name != "<module>"]
    own.sort(key=lambda item: -item[1])
    return {"steps": steps, "calls": calls,
            "top": [[name, round(seconds, 2), int(n)] for name, seconds, n in own[:n_top]]}


# --------------------------------------------------------------------------------------
# the report


def verdict(value: float | None, target: str) -> str:
    """``met`` or ``not met`` for ``value`` against a key of :data:`TARGETS`
    (``not measured`` for None).

    Examples
    --------
    >>> verdict(1.8, "run_vs_network"), verdict(4.2, "run_vs_network")
    ('met', 'not met')
    >>> verdict(1.0, "openvino_vs_tensorflow")
    'not met'
    """
    if value is None:
        return "not measured"
    comparison, bound = TARGETS[target]
    ok = value <= bound if comparison == "<=" else value >= bound
    return "met" if ok else "not met"


def ratios(report: dict) -> dict:
    """The figures issue 30 asks for, as ratios of the report's seconds, with verdicts.

    ``run_vs_network``: the default run / the network alone (OpenVINO, LATENCY, all cores);
    ``sync_vs_network``: the sync run / the same; ``local_vs_sync``: the default (local
    cluster) run's seconds / the sync run's (above 1: the cluster is slower);
    ``openvino_vs_tensorflow``: whole sync runs, TensorFlow's seconds / OpenVINO's (above 1:
    OpenVINO is faster); ``network_openvino_vs_tensorflow``: the same for the network alone.

    Examples
    --------
    >>> r = ratios({"runs": {"default": {"seconds": 108}, "sync": {"seconds": 72},
    ...             "sync_tensorflow": {"seconds": 88}, "sync_openvino": {"seconds": 88}},
    ...             "network": {"openvino": {"seconds": 26}}})
    >>> r["run_vs_network"], r["local_vs_sync"], r["openvino_vs_tensorflow"]
    (4.15, 1.5, 1.0)
    >>> r["verdicts"]["run_vs_network"], r["verdicts"]["openvino_vs_tensorflow"]
    ('not met', 'not met')
    """
    runs, network = report.get("runs", {}), report.get("network", {})

    def seconds(entry: dict | None) -> float | None:
        return None if not entry else entry.get("seconds")

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 2)

    net = seconds(network.get("openvino"))
    out = {"run_vs_network": ratio(seconds(runs.get("default")), net),
           "sync_vs_network": ratio(seconds(runs.get("sync")), net),
           "local_vs_sync": ratio(seconds(runs.get("default")), seconds(runs.get("sync"))),
           "openvino_vs_tensorflow": ratio(seconds(runs.get("sync_tensorflow")),
                                           seconds(runs.get("sync_openvino"))),
           "network_openvino_vs_tensorflow": ratio(seconds(network.get("tensorflow")), net)}
    out["verdicts"] = {key: verdict(out[key], key) for key in TARGETS}
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


RUN_LABELS = {"default": "`slides run`, default configuration (local cluster)",
              "sync": "`slides run --scheduler sync`",
              "sync_openvino": "sync, `segmentation.backend: openvino`",
              "sync_tensorflow": "sync, `segmentation.backend: tensorflow`"}


def table(report: dict) -> str:
    """The README block: runs, network alone, ratios against the targets, profile."""
    cpu, slide = report["cpu"], report["slide"]
    lines = [f"Measured {report['date'][:10]} on {cpu['label']} (`{report['host']}`); slide: "
             f"{slide['rows']} x {slide['cols']} mosaic of CMU-1-Small-Region, "
             f"{slide['height']} x {slide['width']} px at {slide['mpp']:.4g} um/px, pyramidal "
             "JPEG TIFF.", "",
             "| run | s | s per mm^2 of tissue | tissue mm^2 | tiles | cells | backend | "
             "peak RSS main / largest worker (GB) |", "|---|---|---|---|---|---|---|---|"]
    extra = {key: f"`slides run --scheduler {key.removeprefix('scheduler_')}`"
             for key in report["runs"] if key.startswith("scheduler_")}
    for key, label in {**RUN_LABELS, **extra}.items():
        run = report["runs"].get(key)
        if run:
            rss = run["peak_rss"]
            lines.append(f"| {label} | {run['seconds']:g} | {run['s_per_mm2']:g} | "
                         f"{run['tissue_mm2']:g} | {run['tiles']} | {run['cells']:,} | "
                         f"{run['backend']} | {_fmt(rss['main_gb'])} / "
                         f"{_fmt(rss['worker_max_gb'])} |")
    for key, net in report["network"].items():
        hint = f", {net['hint']} hint, {net['threads']} threads" if net.get("hint") else ""
        lines.append(f"| network alone, {key}{hint} ({net['boxes']} boxes of "
                     f"{'x'.join(map(str, net['box_px'][0]))} px, {net['per_box_s']:g} s each) "
                     f"| {net['seconds']:g} | | | {net['boxes']} | | {key} | |")
    r = report["ratios"]
    lines += ["", "| ratio | measured | target (issue 30) | |", "|---|---|---|---|",
              f"| default run / network alone | {_fmt(r['run_vs_network'], 'x')} | <= 2x | "
              f"{r['verdicts']['run_vs_network']} |",
              f"| sync run / network alone | {_fmt(r['sync_vs_network'], 'x')} | | |",
              f"| local cluster / sync (s) | {_fmt(r['local_vs_sync'], 'x')} | | |",
              f"| OpenVINO / TensorFlow whole sync run speed-up | "
              f"{_fmt(r['openvino_vs_tensorflow'], 'x')} | >= 1.3x | "
              f"{r['verdicts']['openvino_vs_tensorflow']} |",
              f"| OpenVINO / TensorFlow, network alone | "
              f"{_fmt(r['network_openvino_vs_tensorflow'], 'x')} | | |"]
    profile = report.get("profile")
    if profile:
        n = profile["tiles"] or 1
        lines += ["", "### Where the time goes", "",
                  f"cProfile of a whole sync run ({profile['config']}), {profile['seconds']:g} s "
                  f"under the profiler, {n} tiles, same CPU. Cumulative seconds of the main "
                  "thread (indented rows are inside the row above them):", "",
                  "| step | s | s per tile | calls |", "|---|---|---|---|"]
        for step, seconds in profile["steps"].items():
            lines.append(f"| {step} | {seconds:g} | {seconds / n:.3f} | "
                         f"{profile['calls'].get(step, '')} |")
        lines += ["", "Top project functions by cumulative time: " + "; ".join(
            f"`{name}` {seconds:g} s" for name, seconds, _ in profile["top"][:12]) + "."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# main


def measure(work: Path, *, rows: int, cols: int, tensorflow: bool = True,
            profile: bool = True, profile_read_ahead: bool = False,
            crop: int | None = None, schedulers: tuple[str, ...] = ()) -> dict:
    """Every figure of the report, in one run, in ``work`` (an empty folder); ``crop``: the
    region's top-left ``crop`` x ``crop`` pixels only (smoke tests); ``schedulers``: more
    ``--scheduler`` values to run (``local:1``: one worker with every core), reported as
    ``scheduler_<value>``."""
    region, mpp = real_region()
    if crop:
        region = np.ascontiguousarray(region[:crop, :crop])
    slide = write_mosaic(work / "mosaic.tif", region, rows=rows, cols=cols, mpp=mpp)
    manifest = write_manifest(work, slide)
    height, width = region.shape[0] * rows, region.shape[1] * cols
    report: dict = {"cpu": cpu_description(), "host": platform.node(),
                    "slide": {"rows": rows, "cols": cols, "height": height, "width": width,
                              "mpp": mpp, "source": SOURCE.as_posix()},
                    "runs": {}, "network": {}}
    print(f"CPU: {report['cpu']['label']}; slide {height} x {width} px", flush=True)
    print("network alone (OpenVINO) ...", flush=True)
    report["network"]["openvino"] = network_alone(slide, work / "net_openvino",
                                                  backend="openvino")
    plan = [("default", {}, None), ("sync", {}, "sync"),
            ("sync_openvino", {"segmentation": {"backend": "openvino"}}, "sync")]
    if tensorflow:
        plan.append(("sync_tensorflow", {"segmentation": {"backend": "tensorflow"}}, "sync"))
    plan += [(f"scheduler_{spec}", {}, spec) for spec in schedulers]
    for key, config, scheduler in plan:
        print(f"run {key} ...", flush=True)
        report["runs"][key] = run_slides_cli(manifest, work / f"run_{key.replace(':', '_')}",
                                             config=config,
                                             scheduler=scheduler)
        print(f"  {report['runs'][key]}", flush=True)
    if tensorflow:
        print("network alone (TensorFlow) ...", flush=True)
        report["network"]["tensorflow"] = network_alone(slide, work / "net_tensorflow",
                                                        backend="tensorflow")
    if profile:
        print("profiled sync run ...", flush=True)
        out = work / "prof.out"
        config = {} if profile_read_ahead else {"batch": {"read_ahead": False}}
        run = run_slides_cli(manifest, work / "run_profile", config=config, scheduler="sync",
                             profile=out)
        report["profile"] = {
            "config": "default configuration" if profile_read_ahead else
            "`batch.read_ahead: false`, so that reading and the network run in the profiled "
            "thread", "seconds": run["seconds"], "tiles": run["tiles"],
            **profile_steps(pstats.Stats(str(out)))}
    report["ratios"] = ratios(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 x 2 mosaic, a fast check")
    parser.add_argument("--mosaic", type=int, nargs=2, metavar=("ROWS", "COLS"),
                        help="mosaic size (default 3 3; --quick 1 2)")
    parser.add_argument("--no-tensorflow", action="store_true",
                        help="skip the TensorFlow run and network")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled run")
    parser.add_argument("--profile-read-ahead", action="store_true",
                        help="profile the default sync run (reading and the network then run "
                             "in a thread cProfile does not see)")
    parser.add_argument("--crop", type=int, help="smoke test: the region's top-left "
                        "CROP x CROP pixels only")
    parser.add_argument("--schedulers", nargs="*", default=[], metavar="SCHEDULER",
                        help="more --scheduler values to run and report (e.g. local:1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "whole_run.json")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not write the README block")
    args = parser.parse_args(argv)
    rows, cols = args.mosaic or ((1, 2) if args.quick else (3, 3))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hccbio-whole-run-") as tmp:
        report = measure(Path(tmp), rows=rows, cols=cols, tensorflow=not args.no_tensorflow,
                         profile=not args.no_profile,
                         profile_read_ahead=args.profile_read_ahead, crop=args.crop,
                         schedulers=tuple(args.schedulers))
    report = save_report(report, args.out, started=started)
    text = table(report)
    print(text)
    if not args.no_readme:
        write_block("whole-run", heading="Whole runs against the network (issue 30)",
                    date=report["date"], body=text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
