"""Run many slides into one output folder: isolation of failures, batch report, provenance.

One bad slide is reported in ``OUT/batch_report.csv`` with its reason and never stops the
others; the report is rewritten atomically after every slide, so a killed batch loses nothing
already finished. ``OUT/run.json`` records versions, the resolved configuration and its hash,
the models and their SHA-256, the inputs and the timings.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from pathology.config import PathologyConfig
from pathology.nuclei import ModelError
from pathology.pipeline import FEATURES_FILE, ModelCache, SlideJob, process_slide
from pathology.slide import SlideError
from pathology.store import atomic_write_text

log = logging.getLogger("hccbio.pathology")

REPORT_FILE = "batch_report.csv"
REPORT_COLUMNS = ("sample_id", "status", "reason", "seconds")
RUN_FILE = "run.json"
PACKAGES = ("hccbio", "stardist", "tensorflow", "tensorflow-cpu", "numpy", "scikit-image",
            "openslide-python", "openslide-bin", "tiffslide", "tifffile", "zarr", "pyarrow")


@dataclass(frozen=True)
class BatchRow:
    """One line of the batch report."""

    sample_id: str
    status: str  # done | skipped | failed
    reason: str
    seconds: float


def read_report(out: Path) -> dict[str, BatchRow]:
    """Rows of an existing ``batch_report.csv`` (empty if none), keyed by sample id."""
    path = Path(out) / REPORT_FILE
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {r["sample_id"]: BatchRow(r["sample_id"], r["status"], r["reason"],
                                         float(r["seconds"] or 0))
                for r in csv.DictReader(handle)}


def write_report(out: Path, rows: dict[str, BatchRow]) -> None:
    """Rewrite ``batch_report.csv`` atomically (rows of other arms are kept)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for row in rows.values():
        writer.writerow([row.sample_id, row.status, row.reason, f"{row.seconds:.2f}"])
    atomic_write_text(Path(out) / REPORT_FILE, buffer.getvalue())


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _is_complete(out: Path, job: SlideJob, config_hash: str) -> bool:
    """Whether a previous run finished this slide with the same input and configuration."""
    folder = out / "slides" / job.sample_id
    features = folder / FEATURES_FILE
    if not features.is_file() or not (folder / "cells.parquet").is_file():
        return False
    try:
        recorded = json.loads(features.read_text())
    except json.JSONDecodeError:
        return False
    stat = job.path.stat() if job.path.exists() else None
    slide = recorded.get("slide", {})
    return (recorded.get("config_sha256") == config_hash and stat is not None
            and slide.get("path") == str(job.path) and
            recorded.get("input_size") == stat.st_size)


def run_slides(jobs: Iterable[SlideJob], out: Path, config: PathologyConfig, *,
               force: bool = False) -> list[BatchRow]:
    """Process slides one after another into ``out``.

    Parameters
    ----------
    jobs
        The slides (for example the ``he``, ``ihc`` and ``mif`` rows of a manifest).
    out
        The run folder (created if needed). Finished slides with the same input and
        configuration are skipped; unfinished ones resume at their first unfinished tile.
    config
        Resolved configuration.
    force
        Recompute slides even when finished.

    Returns
    -------
    list of BatchRow
        One per job, in order.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = list(jobs)
    report = read_report(out)
    models = ModelCache(config)
    config_hash = config.digest()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results: list[BatchRow] = []
    for job in jobs:
        started = time.perf_counter()
        if not force and _is_complete(out, job, config_hash):
            row = BatchRow(job.sample_id, "skipped", "already done with this input and config",
                           0.0)
        else:
            try:
                result = process_slide(job, out, config, models)
                _stamp_input_size(out, job)
                row = BatchRow(job.sample_id, "done", result.note,
                               time.perf_counter() - started)
            except (SlideError, ModelError, OSError, ValueError) as error:
                row = BatchRow(job.sample_id, "failed", _one_line(error),
                               time.perf_counter() - started)
                log.warning("slide=%s status=failed reason=%s", job.sample_id, row.reason)
            except Exception as error:  # an unexpected bug must not stop the batch either
                row = BatchRow(job.sample_id, "failed",
                               f"unexpected {type(error).__name__}: {_one_line(error)}",
                               time.perf_counter() - started)
                log.error("slide=%s status=failed\n%s", job.sample_id, traceback.format_exc())
        report[job.sample_id] = row
        results.append(row)
        write_report(out, report)
    _write_run_json(out, jobs, config, models, results, started_at)
    return results


def _stamp_input_size(out: Path, job: SlideJob) -> None:
    path = out / "slides" / job.sample_id / FEATURES_FILE
    features = json.loads(path.read_text())
    features["input_size"] = job.path.stat().st_size
    atomic_write_text(path, json.dumps(features, indent=2) + "\n")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _write_run_json(out: Path, jobs: list[SlideJob], config: PathologyConfig,
                    models: ModelCache, results: list[BatchRow], started_at: str) -> None:
    path = out / RUN_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {}
    record = dict(previous)
    record["pathology"] = {
        "started": started_at,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "config": config.model_dump(mode="json"),
        "config_sha256": config.digest(),
        "models": models.describe(),
        "inputs": [{"sample_id": j.sample_id, "path": str(j.path), "modality": j.modality,
                    "stain": j.stain, "manifest_mpp": j.mpp} for j in jobs],
        "timings": {r.sample_id: {"status": r.status, "seconds": round(r.seconds, 2)}
                    for r in results},
    }
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
