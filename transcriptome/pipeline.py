"""The transcriptome arm end to end: expression files -> QC -> normalisation -> scores -> files.

Python API used by the manifest-driven CLI in ``integration``; it takes plain records, never a
manifest. Each scored sample keeps its features, QC row and log2 expression in
``OUT/rnaseq/<sample_id>/``; the run tables are rebuilt from every finished sample of the
folder, so a second run with another manifest adds to them. A run holds the run lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from hcccore.atomic import write_csv, write_json, write_parquet
from hcccore.batch_report import BatchRow, merge_report, report_frame
from hcccore.lock import RunLock
from hcccore.sample_features import (
    adopt_table_rows,
    finished_samples,
    run_table,
    write_sample_features,
)
from transcriptome.config import TranscriptomeConfig
from transcriptome.errors import ExpressionError
from transcriptome.features import FeatureTables, build_features
from transcriptome.genes import load_gene_map, to_symbols
from transcriptome.normalise import Normalised, check_counts, detect_value_type, normalise
from transcriptome.qc import sample_qc
from transcriptome.read import read_expression
from transcriptome.signatures import load_gene_sets, score_gene_sets

FEATURES_FILE = "transcriptome_features.csv"
DICTIONARY_FILE = "transcriptome_features_dictionary.csv"
QC_FILE = "transcriptome_qc.csv"
GENE_SETS_FILE = "transcriptome_gene_sets.csv"
EXPRESSION_FILE = "transcriptome_log2_expression.parquet"
RUN_FILE = "transcriptome_run.json"
SAMPLES_DIR = "rnaseq"  # OUT/rnaseq/<sample_id>/: features.json, log2_expression.parquet
SAMPLE_EXPRESSION = "log2_expression.parquet"
QC_COLUMNS = ("library_size", "detected_genes", "qc_flag", "qc_reasons")

log = logging.getLogger("hccbio.transcriptome")


@dataclass(frozen=True)
class RnaseqRecord:
    """One RNA-seq sample to process.

    Attributes
    ----------
    sample_id
        Output identifier, and the matrix column holding the sample (unless ``column``).
    path
        Expression file; several records may share one file.
    column
        Matrix column name when it differs from ``sample_id``.
    """

    sample_id: str
    path: Path
    column: str | None = None


@dataclass(frozen=True)
class ScoreResult:
    """In-memory result of :func:`score_expression`."""

    normalised: Normalised
    qc: pd.DataFrame
    tables: FeatureTables


@dataclass(frozen=True)
class RunResult:
    """Result of :func:`run_transcriptome`.

    Attributes
    ----------
    features
        The feature table written: every finished RNA-seq sample of the folder (earlier runs'
        too), not only this run's; empty when there is none.
    batch
        This run's batch rows (sample_id, status, reason, seconds).
    files
        Paths written.
    notes
        Remarks on the tables (e.g. samples scored in separate cohorts).
    """

    features: pd.DataFrame
    batch: pd.DataFrame
    files: tuple[Path, ...]
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> list[str]:
        """Sample ids whose status is 'failed'."""
        return list(self.batch.loc[self.batch["status"] == "failed", "sample_id"])


def score_expression(values: pd.DataFrame, *, config: TranscriptomeConfig | None = None,
                     value_type: str | None = None, source: str = "expression",
                     qc_values: pd.DataFrame | None = None) -> ScoreResult:
    """QC, normalise and score an in-memory genes-by-samples table (gene ids already final).

    Parameters
    ----------
    values
        Genes by samples (index = gene symbols, columns = sample ids).
    config
        Transcriptome config; defaults to :class:`TranscriptomeConfig` defaults.
    value_type
        'counts', 'tpm' or 'log2'; None uses ``config.input.value_type`` (detecting when
        'auto').
    source
        Name used in error messages.
    qc_values
        Table the QC is computed on (e.g. all genes of the input files); defaults to ``values``.

    Returns
    -------
    ScoreResult

    Raises
    ------
    ExpressionError
        Negative counts, empty samples, undetectable scale, unreadable gene sets.
    """
    config = config or TranscriptomeConfig()
    kind = value_type or config.input.value_type
    if kind == "auto":
        kind = detect_value_type(values, source=source)
    if kind == "counts":
        check_counts(values, source=source)
    qc_cfg = config.qc
    qc = sample_qc(values if qc_values is None else qc_values[values.columns], value_type=kind,
                   min_library_size=qc_cfg.min_library_size,
                   detection_threshold=qc_cfg.detection_threshold,
                   outlier_mads=qc_cfg.outlier_mads)
    normalised = normalise(values, value_type=kind, method=config.normalise.method,
                           pseudocount=config.normalise.pseudocount, source=source)
    sig = config.signatures
    gene_sets = load_gene_sets(sig.gene_sets)
    scores = score_gene_sets(normalised.log2, gene_sets, methods=sig.methods,
                             min_genes=sig.min_genes, min_fraction=sig.min_fraction,
                             weight=sig.ssgsea_weight)
    tables = build_features(qc, normalised, scores, single_genes=sig.single_genes,
                            methods=sig.methods)
    return ScoreResult(normalised, qc, tables)


def run_transcriptome(records: Sequence[RnaseqRecord], out: str | Path, *,
                      config: TranscriptomeConfig | None = None) -> RunResult:
    """Process RNA-seq samples and write the arm's outputs into ``out``.

    A file that cannot be read, or a sample missing from its file, fails only its own samples
    (recorded in ``batch_report.csv``); the others are normalised and scored together as one
    cohort (genes common to all files). Each scored sample's features, QC row and log2
    expression go to ``OUT/rnaseq/<sample_id>/``; the run tables are rebuilt from every
    finished sample of ``out`` (earlier runs' too; a sample whose latest run failed is left
    out). Holds the run lock throughout.

    Parameters
    ----------
    records
        Samples to process; ``sample_id`` values must be unique.
    out
        Output folder (created if needed). Writes ``transcriptome_features.csv``,
        ``transcriptome_features_dictionary.csv``, ``transcriptome_qc.csv``,
        ``transcriptome_log2_expression.parquet`` (every finished sample),
        ``transcriptome_gene_sets.csv``, ``transcriptome_run.json`` (this run's cohort) and
        merges ``batch_report.csv``.
    config
        Transcriptome config (defaults when None).

    Returns
    -------
    RunResult

    Raises
    ------
    ExpressionError
        Repeated sample ids, unreadable gene map or gene sets, or an error that concerns the
        cohort as a whole (e.g. no gene shared by the files).
    hcccore.lock.RunLockedError
        Another run holds ``out``; the message names the lock file and its holder.
    hcccore.lock.RunFolderError
        ``out`` cannot be a folder.
    hcccore.sample_features.SampleFeaturesError
        A finished sample's ``features.json`` cannot be read (file named).
    """
    started = time.perf_counter()
    config = config or TranscriptomeConfig()
    out = Path(out)
    ids = [r.sample_id for r in records]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ExpressionError(f"sample_id(s) {', '.join(repeated)} given more than once")
    gene_map = load_gene_map(config.input.gene_map) if config.input.gene_map else None
    load_gene_sets(config.signatures.gene_sets)  # fail early on a bad gene-set file
    with RunLock(out):
        return _run_locked(records, out, config, gene_map, started)


def _run_locked(records: Sequence[RnaseqRecord], out: Path, config: TranscriptomeConfig,
                gene_map: dict[str, str] | None, started: float) -> RunResult:
    ids = [r.sample_id for r in records]
    failures: dict[str, str] = {}
    seconds: dict[str, float] = {}
    blocks: list[tuple[Path, pd.DataFrame, str]] = []
    by_file: dict[Path, list[RnaseqRecord]] = {}
    for record in records:
        by_file.setdefault(Path(record.path), []).append(record)
    for path, group in by_file.items():
        tic = time.perf_counter()
        try:
            block, kind = _load_block(path, group, gene_map, config, failures)
        except ExpressionError as error:
            for record in group:
                failures[record.sample_id] = str(error)
            block = None
        for record in group:
            seconds[record.sample_id] = (time.perf_counter() - tic) / len(group)
        if block is not None and block.shape[1]:
            blocks.append((path, block, kind))
    kinds = {kind for _, _, kind in blocks}
    if len(kinds) > 1:
        first = blocks[0][2]
        for path, block, kind in blocks[1:]:
            if kind != first:
                for sample in block.columns:
                    failures[sample] = (f"{path}: values are {kind} but {blocks[0][0]} holds "
                                        f"{first}; one run needs one scale")
        blocks = [b for b in blocks if b[2] == first]
    files: list[Path] = []
    if blocks:
        tic = time.perf_counter()
        full = pd.concat([b for _, b, _ in blocks], axis=1, join="outer")
        common = full.dropna(axis=0, how="any")
        if common.shape[0] == 0:
            raise ExpressionError("no gene is shared by all expression files: "
                                  + ", ".join(str(p) for p, _, _ in blocks))
        source = ", ".join(str(p) for p, _, _ in blocks)
        result = score_expression(common, config=config, value_type=blocks[0][2],
                                  source=source, qc_values=full.fillna(0.0))
        share = (time.perf_counter() - tic) / common.shape[1]
        for sample in common.columns:
            seconds[sample] += share
        order = [r.sample_id for r in records if r.sample_id in common.columns]
        _write_samples(out, [r for r in records if r.sample_id in common.columns], result,
                       config)
        files.append(write_csv(result.tables.gene_sets, out / GENE_SETS_FILE))
        qc_reasons = result.qc["qc_reasons"].to_dict()
        provenance = {"value_type": result.normalised.value_type,
                      "normalisation": result.normalised.method,
                      "unit": result.normalised.unit, "genes_scored": int(common.shape[0]),
                      "genes_dropped_not_in_all_files": int(full.shape[0] - common.shape[0]),
                      "cohort": _cohort_id(order, config)}
    else:
        qc_reasons, provenance = {}, {}
    rows = [BatchRow(i, "failed" if i in failures else "done",
                     failures.get(i, qc_reasons.get(i, "")), round(seconds.get(i, 0.0), 4))
            for i in ids]
    report = merge_report(out, rows)
    files.append(out / "batch_report.csv")
    _adopt_earlier_tables(out, report, exclude=ids)
    features, written, notes = _write_tables(out, report)
    files += written
    batch = report_frame(rows)
    run = {"arm": "transcriptome", "config": config.model_dump(mode="json"),
           "config_sha256": config.digest(), "inputs": [_describe(p) for p in by_file],
           "versions": _versions(), "seconds": round(time.perf_counter() - started, 3),
           "samples": {"done": int((batch["status"] == "done").sum()),
                       "failed": int((batch["status"] == "failed").sum())},
           "samples_in_tables": len(features), "notes": notes, **provenance}
    files.append(write_json(run, out / RUN_FILE))
    return RunResult(features, batch, tuple(files), tuple(notes))


def record_failed_run(records: Sequence[RnaseqRecord], out: str | Path, *, reason: str
                      ) -> pd.DataFrame:
    """Mark every record failed (an error that concerns the cohort as a whole) and rebuild the
    run tables without them, under the run lock.

    Parameters
    ----------
    records
        The samples of the run that failed.
    out
        The run folder.
    reason
        Why (e.g. the :class:`ExpressionError` raised by :func:`run_transcriptome`).

    Returns
    -------
    pandas.DataFrame
        The batch rows recorded.
    """
    out = Path(out)
    rows = [BatchRow(r.sample_id, "failed", reason, 0.0) for r in records]
    with RunLock(out):
        _write_tables(out, merge_report(out, rows))
    return report_frame(rows)


def _write_samples(out: Path, records: Sequence[RnaseqRecord], result: ScoreResult,
                   config: TranscriptomeConfig) -> None:
    """Each scored sample's ``features.json`` (values, dictionary, QC row) and log2 column."""
    tables = result.tables
    features = tables.features.set_index("sample_id")
    dictionary = {row["name"]: {k: v for k, v in row.items() if k != "name"}
                  for row in tables.dictionary.to_dict("records")}
    qc = result.qc
    cohort = _cohort_id([r.sample_id for r in records], config)
    for record in records:
        sample = record.sample_id
        folder = out / SAMPLES_DIR / sample
        write_parquet(result.normalised.log2[[sample]], folder / SAMPLE_EXPRESSION)
        write_sample_features(
            folder, sample_id=sample,
            values={name: features.at[sample, name] for name in features.columns},
            dictionary=dictionary,
            meta={"arm": "transcriptome", "input": str(record.path),
                  "config_sha256": config.digest(), "cohort": cohort,
                  "cohort_size": len(records), "value_type": result.normalised.value_type,
                  "normalisation": result.normalised.method, "unit": result.normalised.unit,
                  "qc": {k: _plain(qc.at[sample, k]) for k in QC_COLUMNS}})


def _plain(value: object) -> object:
    """A JSON-ready scalar: NumPy scalars as Python numbers, NaN as None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and value != value else value


def _cohort_id(samples: Sequence[str], config: TranscriptomeConfig) -> str:
    """Short digest of the samples scored together and the config they were scored with."""
    text = json.dumps({"samples": sorted(samples), "config": config.digest()})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _adopt_earlier_tables(out: Path, report: dict[str, BatchRow], *,
                          exclude: Sequence[str]) -> list[str]:
    """Samples of a run folder written before per-sample folders: their table rows, QC rows
    and expression columns become sample folders (so the rebuilt tables keep them)."""
    qc_path, expression_path = out / QC_FILE, out / EXPRESSION_FILE
    qc = (pd.read_csv(qc_path, dtype={"sample_id": str, "qc_reasons": str})
          .fillna({"qc_reasons": ""}).set_index("sample_id") if qc_path.is_file()
          else pd.DataFrame())
    meta = {sid: {"qc": {k: _plain(row.get(k)) for k in QC_COLUMNS}}
            for sid, row in qc.iterrows()}
    adopted = adopt_table_rows(out, SAMPLES_DIR, FEATURES_FILE, DICTIONARY_FILE,
                               exclude=exclude, report=report, meta=meta)
    if adopted and expression_path.is_file():
        expression = pd.read_parquet(expression_path)
        for sid in adopted:
            if sid in expression.columns:
                write_parquet(expression[[sid]], out / SAMPLES_DIR / sid / SAMPLE_EXPRESSION)
    return adopted


def _write_tables(out: Path, report: dict[str, BatchRow]
                  ) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """Rebuild the run tables from every finished sample of ``out``."""
    table = run_table(out, SAMPLES_DIR, finished_samples(out, SAMPLES_DIR, report=report))
    files = [write_csv(table.features, out / FEATURES_FILE),
             write_csv(table.dictionary, out / DICTIONARY_FILE)]
    qc = pd.DataFrame([{"sample_id": sid, **{k: record.get("qc", {}).get(k)
                                             for k in QC_COLUMNS}}
                       for sid, record in table.records.items()],
                      columns=["sample_id", *QC_COLUMNS])
    files.append(write_csv(qc, out / QC_FILE))
    columns = [pd.read_parquet(out / SAMPLES_DIR / sid / SAMPLE_EXPRESSION)
               for sid in table.records
               if (out / SAMPLES_DIR / sid / SAMPLE_EXPRESSION).is_file()]
    if columns:
        expression = pd.concat(columns, axis=1, join="outer")
        files.append(write_parquet(expression, out / EXPRESSION_FILE))
    notes = []
    cohorts = table.groups("cohort")
    if len(cohorts) > 1:
        groups = "; ".join(f"{len(v)} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                           for v in cohorts.values())
        notes.append(f"{out / FEATURES_FILE} holds samples scored in {len(cohorts)} separate "
                     f"runs: {groups}; z-scores and QC outlier flags are relative to the samples "
                     "scored together, so run every sample in one manifest for one cohort")
    for note in notes:
        log.warning("%s", note)
    return table.features, files, notes


def _load_block(path: Path, group: Sequence[RnaseqRecord], gene_map: dict[str, str] | None,
                config: TranscriptomeConfig,
                failures: dict[str, str]) -> tuple[pd.DataFrame, str]:
    matrix = read_expression(path)
    values = to_symbols(matrix.values, gene_map=gene_map, source=path)
    if matrix.single_sample:
        if len(group) != 1:
            names = ", ".join(r.sample_id for r in group)
            raise ExpressionError(f"{path}: a Salmon quant file holds one sample but "
                                  f"{len(group)} samples point at it ({names})")
        values.columns = [group[0].sample_id]
    else:
        wanted = {r.sample_id: r.column or r.sample_id for r in group}
        missing = [s for s, c in wanted.items() if c not in values.columns]
        for sample in missing:
            failures[sample] = (f"{path}: sample column '{wanted[sample]}' not found; the file "
                                f"has columns {', '.join(map(str, values.columns[:8]))}"
                                + (" ..." if values.shape[1] > 8 else ""))
        keep = {s: c for s, c in wanted.items() if s not in missing}
        values = values[list(keep.values())]
        values.columns = list(keep)
    kind = config.input.value_type
    if kind == "auto":
        kind = matrix.value_type_hint or detect_value_type(values, source=path)
    if kind == "counts":
        check_counts(values, source=path)
    return values, kind


def _describe(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {"path": str(path), "exists": False}
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("hccbio", "numpy", "pandas", "scipy", "gseapy", "pydantic"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out
