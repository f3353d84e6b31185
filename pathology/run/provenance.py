"""Provenance of a run: ``OUT/run.json`` holds the latest run of each arm, and
``OUT/runs/<started>_pathology.json`` every slide run (never overwritten): versions, the
resolved configuration and its hash, the models and their SHA-256, the inputs, the scheduler
and the timings.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from hcccore.atomic import write_text
from hcccore.provenance import package_versions
from pathology.config import PathologyConfig
from pathology.run.layout import RUN_JSON, RunFolder
from pathology.run.pipeline import SlideJob
from pathology.run.report import BatchRow

log = logging.getLogger("hccbio.pathology")

RUN_FILE = RUN_JSON
PACKAGES = ("hccbio", "stardist", "tensorflow", "tensorflow-cpu", "numpy", "scikit-image",
            "openslide-python", "openslide-bin", "tiffslide", "tifffile", "zarr", "pyarrow",
            "openvino")


def versions() -> dict[str, str]:
    """Python's and :data:`PACKAGES`' versions (those installed)."""
    return package_versions(PACKAGES)


def write_run_json(out: Path, jobs: list[SlideJob], config: PathologyConfig,
                    models: dict, results: list[BatchRow], started_at: str,
                    scheduler: str, *, cluster: dict | None = None) -> None:
    """``run.json`` holds the latest run; ``runs/<started>_pathology.json`` every run (an
    earlier record without its own file, from an older version, is moved there first).
    ``cluster``: with ``--scheduler slurm``, the worker jobs, how each ended and where their
    logs are (``slurm`` in the record)."""
    path = out / RUN_FILE
    try:
        previous = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        previous = {}
        log.warning("%s is not valid JSON; it is replaced (the runs/ folder keeps each run)",
                    path)
    earlier = previous.get("pathology")
    if isinstance(earlier, dict) and not earlier.get("record"):
        _save_run_record(out, earlier)
    record = dict(previous)
    record["pathology"] = {
        "started": started_at,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "scheduler": scheduler,
        **({"slurm": cluster} if cluster is not None else {}),
        "config": config.model_dump(mode="json"),
        "config_sha256": config.digest(),
        "models": models,
        "inputs": [{"sample_id": j.sample_id, "path": str(j.path), "modality": j.modality,
                    "stain": j.stain, "manifest_mpp": j.mpp} for j in jobs],
        "timings": {r.sample_id: {"status": r.status, "seconds": round(r.seconds, 2)}
                    for r in results},
    }
    kept = _save_run_record(out, record["pathology"])
    record["pathology"]["record"] = kept.relative_to(out).as_posix()
    write_text(path, json.dumps(record, indent=2) + "\n")


def _save_run_record(out: Path, run: dict) -> Path:
    """Write one run's record to ``runs/`` under a name no other run has."""
    folder = RunFolder(out).runs
    folder.mkdir(parents=True, exist_ok=True)
    stem = str(run.get("started") or "unknown").replace(":", "-").replace("+00-00", "Z")
    target = folder / f"{stem}_pathology.json"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{stem}_pathology_{n}.json"
    write_text(target, json.dumps(run, indent=2) + "\n")
    return target
