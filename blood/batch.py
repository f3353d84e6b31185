"""Blood batch runs: plain job records in, per-sample outputs, features and a batch report out.

One bad file never stops the others: its reason goes to ``batch_report.csv``. Each finished
sample keeps its features in ``OUT/blood/<sample_id>/features.json``; ``blood_features.csv`` is
rebuilt from every finished sample of the folder, so a second run with another manifest adds to
it. A run holds the run lock (``OUT/.hccbio.lock``) from start to end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from blood.config import FEATURE_NAME, BloodConfig
from blood.errors import BloodInputError
from blood.features import DICTIONARY_FILE, FEATURES_FILE, FeatureInfo
from hcccore.atomic import write_csv
from hcccore.batch_report import BatchRow, merge_report, read_report, report_frame
from hcccore.lock import RunLock
from hcccore.sample_features import (
    adopt_table_rows,
    finished_samples,
    run_table,
    write_sample_features,
)

LOG = logging.getLogger(__name__)
SAMPLES_DIR = "blood"
MODALITIES = ("flow", "elisa", "scrna")


@dataclass(frozen=True)
class BloodJob:
    """One blood sample to process.

    Attributes
    ----------
    sample_id
        Output identifier (folder ``OUT/blood/<sample_id>``).
    modality
        "flow", "elisa" or "scrna".
    stain
        Flow: panel name (picks the gates file); otherwise free text.
    path
        Input file.
    """

    sample_id: str
    modality: str
    stain: str
    path: Path


@dataclass(frozen=True)
class BloodRunResult:
    """Result of :func:`run_blood`.

    Attributes
    ----------
    features
        The feature table written: every finished blood sample of the folder (earlier runs'
        too), not only this run's.
    batch
        This run's batch rows (sample_id, status, reason, seconds).
    notes
        Remarks on the table (e.g. samples computed with different configurations).
    """

    features: pd.DataFrame
    batch: pd.DataFrame
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> list[str]:
        """Sample ids that failed."""
        return self.batch.loc[self.batch["status"] == "failed", "sample_id"].tolist()


Processor = Callable[[BloodJob, Path, BloodConfig, dict[Path, Any]],
                     tuple[dict[str, float], dict[str, FeatureInfo]]]


def _flow(job: BloodJob, out_dir: Path, config: BloodConfig, cache: dict[Path, Any]
          ) -> tuple[dict[str, float], dict[str, FeatureInfo]]:
    from blood.flow.pipeline import analyse_fcs, beads_from_config, flow_features

    flow = config.flow
    gates = flow.panels.get(job.stain, flow.default_gates)
    if gates is None:
        raise BloodInputError(f"{job.path}: no gates for panel {job.stain!r} (set "
                              "flow.panels or flow.default_gates in the blood config)")
    result = analyse_fcs(job.path, gates, out_dir, beads=beads_from_config(flow), qc=flow.qc,
                         plots=flow.plots, wsp_sample=flow.wsp_samples.get(job.sample_id))
    values = flow_features(result.populations, flow.features, source=str(job.path))
    infos = {}
    for index, f in enumerate(flow.features):
        unit = "cells/uL" if f.measure == "per_ul" else "%"
        method = (f"absolute count of {f.population} from counting beads" if
                  f.measure == "per_ul" else f"100 x events({f.population}) / events({f.of})")
        infos[f.name] = FeatureInfo(f.name, f.label or f.name, unit, "flow",
                                    f"{method}; gates {gates.name}",
                                    f"flow.features[{index}]; flow.panels", "blood.flow")
    return values, infos


def _scrna(job: BloodJob, out_dir: Path, config: BloodConfig, cache: dict[Path, Any]
           ) -> tuple[dict[str, float], dict[str, FeatureInfo]]:
    """One scRNA sample; a file shared by several rows is prepared once (cached per run)."""
    from blood.scrna.pipeline import feature_infos, prepare_scrna, sample_features

    key = Path(job.path).resolve()
    if key not in cache:
        try:
            cache[key] = prepare_scrna(job.path, config=config.scrna)
        except Exception as error:  # noqa: BLE001 - remembered: the file's other rows fail too
            cache[key] = error
    prepared = cache[key]
    if isinstance(prepared, Exception):
        raise prepared
    values = sample_features(prepared, job.sample_id, out_dir, config=config.scrna)
    # types not measurable in any file of this run so far, each reason naming its file
    unmeasured: dict[str, list[str]] = {}
    for item in cache.values():
        if not isinstance(item, Exception):
            for cell_type, why in item.annotation.not_measurable.items():
                unmeasured.setdefault(cell_type, []).append(f"{item.path.name}: {why}")
    return values, feature_infos(config.scrna, not_measurable=unmeasured)


def _elisa(job: BloodJob, out_dir: Path, config: BloodConfig, cache: dict[Path, Any]
           ) -> tuple[dict[str, float], dict[str, FeatureInfo]]:
    """One ELISA sample; a plate shared by several rows is quantified once (cached per run)."""
    from blood.elisa.pipeline import PLATES_DIR, analyse_plate, sample_features

    key = Path(job.path).resolve()
    if key not in cache:
        try:
            cache[key] = analyse_plate(job.path, out_dir.parent / PLATES_DIR / key.stem,
                                       config=config.elisa, default_analyte=job.stain)
        except Exception as error:  # noqa: BLE001 - remembered: the plate's other rows fail too
            cache[key] = error
    result = cache[key]
    if isinstance(result, Exception):
        raise result
    return sample_features(result, job.sample_id, out_dir, config=config.elisa)


PROCESSORS: dict[str, Processor] = {"flow": _flow, "elisa": _elisa, "scrna": _scrna}


def run_blood(jobs: Sequence[BloodJob], out: str | Path, *, config: BloodConfig
              ) -> BloodRunResult:
    """Process blood samples and write the run-level tables.

    Writes ``OUT/blood/<sample_id>/...`` per sample (with its ``features.json``), rebuilds
    ``OUT/blood_features.csv`` and ``OUT/blood_features_dictionary.csv`` from every finished
    blood sample of ``out`` (a sample whose latest run failed is left out) and merges this
    run's rows into ``OUT/batch_report.csv``. Holds the run lock throughout.

    Parameters
    ----------
    jobs
        Samples to process; ``sample_id`` must be unique.
    out
        Run folder (created).
    config
        Blood config.

    Returns
    -------
    BloodRunResult

    Raises
    ------
    ValueError
        Duplicate sample ids among the jobs.
    hcccore.lock.RunLockedError
        Another run holds ``out``; the message names the lock file and its holder.
    hcccore.lock.RunFolderError
        ``out`` cannot be a folder.
    hcccore.sample_features.SampleFeaturesError
        A finished sample's ``features.json`` cannot be read (file named).
    """
    out = Path(out)
    ids = [j.sample_id for j in jobs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate blood sample_id(s): {duplicates}")
    digest = config_digest(config)
    with RunLock(out):
        rows: list[BatchRow] = []
        report: dict[str, BatchRow] = {}
        cache: dict[Path, Any] = {}  # files shared by several rows (scRNA with a sample column)
        for job in jobs:  # the report is merged after every sample: a killed run loses none
            rows.append(_run_one(job, out, config, cache, digest))
            report = merge_report(out, rows[-1:])
        report = report or read_report(out)
        adopt_table_rows(out, SAMPLES_DIR, FEATURES_FILE, DICTIONARY_FILE, exclude=ids,
                         report=report)  # run folders of earlier versions: keep their rows
        table = run_table(out, SAMPLES_DIR, finished_samples(out, SAMPLES_DIR, report=report))
        write_csv(table.features, out / FEATURES_FILE)
        write_csv(table.dictionary, out / DICTIONARY_FILE)
    notes = []
    configs = table.groups("config_sha256")
    if len(configs) > 1:
        groups = "; ".join(f"{key[:12]}: {', '.join(v)}" for key, v in configs.items())
        notes.append(f"{out / FEATURES_FILE} holds samples computed with {len(configs)} blood "
                     f"configurations ({groups}); run them again with one --config for a "
                     "comparable table")
    for note in notes:
        LOG.warning("%s", note)
    return BloodRunResult(table.features, report_frame(rows), tuple(notes))


def config_digest(config: BloodConfig) -> str:
    """SHA-256 of the resolved blood config (its JSON form, keys sorted)."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _run_one(job: BloodJob, out: Path, config: BloodConfig, cache: dict[Path, Any],
             digest: str) -> BatchRow:
    """Process one sample into ``OUT/blood/<sample_id>``; a failure becomes its batch row."""
    start = time.perf_counter()
    status, reason = "done", ""
    folder = out / SAMPLES_DIR / job.sample_id
    try:
        processor = PROCESSORS.get(job.modality)
        if processor is None:
            raise BloodInputError(f"{job.path}: modality {job.modality!r} is not "
                                  f"handled by this version (handled: {sorted(PROCESSORS)})")
        values, infos = processor(job, folder, config, cache)
        bad = [name for name in values if not FEATURE_NAME.match(name)]
        if bad:  # our own bug, not user input
            raise ValueError(f"feature names break the [a-z0-9_]{{1,32}} convention: {bad}")
        write_sample_features(
            folder, sample_id=job.sample_id, values=values,
            dictionary={name: {k: v for k, v in vars(info).items() if k != "name"}
                        for name, info in infos.items()},
            meta={"arm": "blood", "modality": job.modality, "stain": job.stain,
                  "input": str(job.path), "config_sha256": digest})
    except Exception as error:  # noqa: BLE001 - one bad file never stops the batch
        status, reason = "failed", f"{type(error).__name__}: {error}"
        LOG.warning("%s failed: %s", job.sample_id, reason)
    return BatchRow(job.sample_id, status, reason, round(time.perf_counter() - start, 3))
