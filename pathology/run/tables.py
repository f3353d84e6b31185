"""The run folder's tables, gathered from its slide folders: ``pathology_features.csv`` and
its data dictionary (:func:`write_run_features`), and the steps redone on every finished slide
of a run folder (``hccbio slides features OUT``: :func:`run_features`; ``hccbio slides qc
OUT``: :func:`run_qc`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hcccore.atomic import write_text
from hcccore.batch_report import BatchRow, read_report
from hcccore.sample_features import DICTIONARY_COLUMNS
from pathology.config import PathologyConfig
from pathology.features import FEATURES_FILE, PROXY_NOTE
from pathology.io.folder import CELLS
from pathology.io.metadata import file_signature
from pathology.io.slide import SlideError
from pathology.qc import geojson
from pathology.qc.check import QcError, measure_slide_qc
from pathology.run.finish import slide_features, slide_qc
from pathology.run.layout import (
    PATHOLOGY_DICTIONARY,
    PATHOLOGY_FEATURES,
    RunFolder,
    valid_sample_id,
)

log = logging.getLogger("hccbio.pathology")

RUN_FEATURES_FILE = PATHOLOGY_FEATURES
DICTIONARY_FILE = PATHOLOGY_DICTIONARY
CELLS_FILE = CELLS


def finished_slides(out: Path, report: dict[str, BatchRow] | None = None) -> list[str]:
    """Every slide of the run folder with features whose latest batch status is not failed.

    A second run into the same folder (another manifest) adds its slides to the run tables
    instead of replacing the first run's; a slide whose latest run failed is left out (its
    earlier features are stale). Slides computed with different configurations are named
    in a warning (the table mixes them).

    Parameters
    ----------
    out
        The run folder.
    report
        Its batch report (read from ``batch_report.csv`` when None).

    Returns
    -------
    list of str
        Sample ids, sorted (the order of ``hccbio slides features OUT``).
    """
    report = read_report(out) if report is None else report
    ids, configs = [], {}
    for folder in RunFolder(out).slide_folders(having=FEATURES_FILE):
        row = report.get(folder.sample_id)
        if row is not None and row.status == "failed":
            continue
        ids.append(folder.sample_id)
        configs.setdefault(_record(folder.features).get("config_sha256"),
                           []).append(folder.sample_id)
    if len(configs) > 1:
        groups = "; ".join(f"{(d or 'unknown')[:12]}: {', '.join(v)}" for d, v in configs.items())
        log.warning("%s holds slides computed with %d configurations (%s); run them again "
                    "with one --config (and --force) for a comparable table",
                    out, len(configs), groups)
    return ids


def stale_slides(out: Path, config: PathologyConfig, *, skip: Iterable[str] = ()
                 ) -> dict[str, str]:
    """Finished slides of the run folder whose outputs no longer match their inputs.

    A slide's ``features.json`` records the digest of the configuration and the signature
    (path, size, modification time) of the file it was computed from. Outputs made with
    another configuration than ``config``, or from a file that has changed since, are stale;
    a slide file that is no longer there (archived) does not make them stale.

    Parameters
    ----------
    out
        The run folder.
    config
        The configuration of the run that is rebuilding the tables.
    skip
        Slides not to check (those this run has just processed).

    Returns
    -------
    dict
        Sample id -> reason (one line naming the fix), for each stale slide.
    """
    skip = set(skip)
    digest = config.digest()
    stale = {}
    for folder in RunFolder(out).slide_folders(having=FEATURES_FILE):
        if folder.sample_id in skip:
            continue
        record = _record(folder.features)
        if "features" not in record:
            continue
        recorded = record.get("config_sha256")
        source = (record.get("identity") or {}).get("input") or {}
        path = Path(source.get("path", "")) if source.get("path") else None
        if recorded != digest:
            stale[folder.sample_id] = (
                f"stale: computed with configuration {str(recorded)[:12]}, this run used "
                f"{digest[:12]}; add the slide to a run with this --config to use it")
        elif path is not None and _exists(path) and _signature(path) != source:
            stale[folder.sample_id] = (
                f"stale: {path} changed since its features were computed; run "
                "'hccbio slides run' on it again")
    return stale


def _record(path: Path) -> dict:
    """A slide's ``features.json``, or an empty dict when it cannot be read."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _signature(path: Path) -> dict | None:
    try:
        return file_signature(path)
    except OSError:
        return None


def write_run_features(out: Path, *, sample_ids: Iterable[str] | None = None) -> Path:
    """Write ``OUT/pathology_features.csv`` (one row per slide) and its data dictionary.

    Parameters
    ----------
    out
        The run folder.
    sample_ids
        Slides to include (default: :func:`finished_slides`, every slide folder with
        features whose latest batch status is not failed), in this order.

    Returns
    -------
    pathlib.Path
        The CSV written (``pathology_features_dictionary.csv`` lies beside it).
    """
    out = Path(out)
    if sample_ids is None:
        sample_ids = finished_slides(out)
    rows: list[dict] = []
    dictionary: dict[str, dict] = {}
    for sample_id in sample_ids:
        path = RunFolder(out).slide(sample_id).features
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if "features" not in record:
            continue
        row = {"sample_id": sample_id, "modality": record.get("modality", ""),
               "stain": record.get("stain", "")}
        for name, entry in record["features"].items():
            row[name] = entry.get("value")
            meta = record.get("feature_dictionary", {}).get(name, {})
            if PROXY_NOTE in meta.get("label", "") and name in dictionary and (
                    PROXY_NOTE not in dictionary[name]["label"]):
                dictionary[name]["label"] += " (on some slides" + PROXY_NOTE + ")"
            dictionary.setdefault(name, {
                "name": name, "label": meta.get("label", ""), "unit": meta.get("unit", ""),
                "modality": record.get("modality", ""), "method": meta.get("method", ""),
                "config_keys": meta.get("config_keys", ""),
                "source": f"cells.parquet ({record.get('modality', '')} "
                          f"{record.get('stain', '')})".replace(" )", ")")})
        rows.append(row)
    columns = ["sample_id", "modality", "stain"]
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    target = out / RUN_FEATURES_FILE
    write_text(target, buffer.getvalue())
    base = [{"name": "sample_id", "label": "Sample identifier (manifest)", "unit": "",
             "modality": "", "method": "manifest", "config_keys": "", "source": "manifest"},
            {"name": "modality", "label": "Slide modality", "unit": "category",
             "modality": "", "method": "manifest", "config_keys": "", "source": "manifest"},
            {"name": "stain", "label": "IHC marker or multiplex panel", "unit": "category",
             "modality": "", "method": "manifest", "config_keys": "", "source": "manifest"}]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DICTIONARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in base + list(dictionary.values()):
        writer.writerow(entry)
    write_text(out / DICTIONARY_FILE, buffer.getvalue())
    return target


@dataclass(frozen=True)
class FeatureStatus:
    """Outcome of features for one slide of a run folder."""

    sample_id: str
    status: str  # done | failed
    reason: str


def run_features(out: Path, *, config: PathologyConfig) -> list[FeatureStatus]:
    """(Re)compute features for every segmented slide of a run folder, then the run table.

    A slide is any ``OUT/slides/<id>`` holding cells.parquet and a features.json that names
    its modality and stain. One slide failing never stops the others.
    """
    out = Path(out)
    statuses: list[FeatureStatus] = []
    for folder in (s.root for s in RunFolder(out).slide_folders()):
        features_path, cells_path = folder / FEATURES_FILE, folder / CELLS_FILE
        if not (features_path.is_file() and cells_path.is_file()):
            continue
        try:
            record = json.loads(features_path.read_text())
            slide_features(folder, modality=record.get("modality", ""),
                           stain=record.get("stain", "") or "", config=config)
            statuses.append(FeatureStatus(folder.name, "done", ""))
        except (ValueError, OSError, KeyError) as error:
            statuses.append(FeatureStatus(folder.name, "failed",
                                          " ".join(str(error).split())))
    write_run_features(out)
    return statuses


def slide_sources(out: Path) -> dict[str, tuple[Path, float | None, str | None]]:
    """Slides of a run folder: sample id -> (slide file, manifest mpp, modality).

    Read from each ``OUT/slides/<id>/features.json`` (written when the slide finished).
    """
    sources = {}
    for folder in sorted(RunFolder(out).slides.glob("*")):
        path = folder / FEATURES_FILE
        if not folder.is_dir() or not valid_sample_id(folder.name) or not path.is_file():
            continue
        record = json.loads(path.read_text())
        slide = record.get("slide", {}).get("path")
        if not slide:
            continue
        mpp = (record.get("identity") or {}).get("manifest_mpp")
        sources[folder.name] = (Path(slide), mpp, record.get("modality"))
    return sources


def run_qc(out: Path, *, config: PathologyConfig) -> dict[str, str]:
    """QC of every finished slide of a run folder; one failure never stops the others.

    As in the batch, each slide's artefacts are found first, its features recomputed on the
    clean tissue (and ``pathology_features.csv`` rewritten), then its overlays drawn.

    Returns
    -------
    dict
        Sample id -> ``pass``, ``flagged`` or ``failed: <reason>``.
    """
    statuses = {}
    for sample_id, (path, mpp, modality) in slide_sources(out).items():
        folder = RunFolder(out).slide(sample_id).root
        try:
            measured = measure_slide_qc(folder, slide_path=path, manifest_mpp=mpp,
                                        config=config, modality=modality)
            record = json.loads((folder / FEATURES_FILE).read_text())
            if "features" in record and modality:
                slide_features(folder, modality=modality,
                               stain=record.get("stain", "") or "", config=config)
            result = slide_qc(folder, slide_path=path, manifest_mpp=mpp, config=config,
                              modality=modality, measured=measured)
            statuses[sample_id] = result["status"]
        except (QcError, SlideError, geojson.GeoJsonError, OSError, ValueError) as error:
            log.warning("slide=%s qc failed: %s", sample_id, error)
            statuses[sample_id] = f"failed: {' '.join(str(error).split())}"
    if statuses:
        write_run_features(out)
    return statuses
