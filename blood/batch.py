"""Blood batch runs: plain job records in, per-sample outputs, features and a batch report out.

One bad file never stops the others: its reason goes to ``batch_report.csv``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from blood.config import BloodConfig
from blood.errors import BloodInputError
from blood.features import (
    DICTIONARY_FILE,
    FEATURES_FILE,
    FeatureInfo,
    dictionary_table,
    feature_table,
)
from blood.outputs import BATCH_COLUMNS, merge_batch_report, write_csv

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
    """Result of :func:`run_blood`: the feature table and this run's batch rows."""

    features: pd.DataFrame
    batch: pd.DataFrame

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

    Writes ``OUT/blood/<sample_id>/...`` per sample, ``OUT/blood_features.csv``,
    ``OUT/blood_features_dictionary.csv`` and merges ``OUT/batch_report.csv``.

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
    """
    out = Path(out)
    ids = [j.sample_id for j in jobs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate blood sample_id(s): {duplicates}")
    rows: dict[str, dict[str, float]] = {}
    infos: dict[str, FeatureInfo] = {}
    report = []
    cache: dict[Path, Any] = {}  # files shared by several rows (scRNA with a sample column)
    for job in jobs:
        start = time.perf_counter()
        status, reason = "done", ""
        try:
            processor = PROCESSORS.get(job.modality)
            if processor is None:
                raise BloodInputError(f"{job.path}: modality {job.modality!r} is not "
                                      f"handled by this version (handled: {sorted(PROCESSORS)})")
            values, new_infos = processor(job, out / SAMPLES_DIR / job.sample_id, config,
                                          cache)
            rows[job.sample_id] = values
            infos.update(new_infos)
        except Exception as error:  # noqa: BLE001 - one bad file never stops the batch
            status, reason = "failed", f"{type(error).__name__}: {error}"
            LOG.warning("%s failed: %s", job.sample_id, reason)
        report.append({"sample_id": job.sample_id, "status": status, "reason": reason,
                       "seconds": round(time.perf_counter() - start, 3)})
    features = feature_table(rows)
    write_csv(features, out / FEATURES_FILE)
    write_csv(dictionary_table(infos, list(features.columns)), out / DICTIONARY_FILE)
    batch = pd.DataFrame(report, columns=list(BATCH_COLUMNS))
    merge_batch_report(out, batch)
    return BloodRunResult(features, batch)
