"""The transcriptome arm end to end: expression files -> QC -> normalisation -> scores -> files.

Python API used by the manifest-driven CLI in ``integration``; it takes plain records, never a
manifest.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from transcriptome.config import TranscriptomeConfig
from transcriptome.errors import ExpressionError
from transcriptome.features import FeatureTables, build_features
from transcriptome.genes import load_gene_map, to_symbols
from transcriptome.normalise import Normalised, check_counts, detect_value_type, normalise
from transcriptome.outputs import merge_batch_report, write_atomic, write_csv, write_json
from transcriptome.qc import sample_qc
from transcriptome.read import read_expression
from transcriptome.signatures import load_gene_sets, score_gene_sets

FEATURES_FILE = "transcriptome_features.csv"
DICTIONARY_FILE = "transcriptome_features_dictionary.csv"
QC_FILE = "transcriptome_qc.csv"
GENE_SETS_FILE = "transcriptome_gene_sets.csv"
EXPRESSION_FILE = "transcriptome_log2_expression.parquet"
RUN_FILE = "transcriptome_run.json"


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
        The feature table written (empty when every sample failed).
    batch
        This run's batch rows (sample_id, status, reason, seconds).
    files
        Paths written.
    """

    features: pd.DataFrame
    batch: pd.DataFrame
    files: tuple[Path, ...]

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
    cohort (genes common to all files).

    Parameters
    ----------
    records
        Samples to process; ``sample_id`` values must be unique.
    out
        Output folder (created if needed). Writes ``transcriptome_features.csv``,
        ``transcriptome_features_dictionary.csv``, ``transcriptome_qc.csv``,
        ``transcriptome_gene_sets.csv``, ``transcriptome_log2_expression.parquet``,
        ``transcriptome_run.json`` and merges ``batch_report.csv``.
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
    features = pd.DataFrame()
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
        tables = result.tables
        features = tables.features.set_index("sample_id").loc[order].reset_index()
        qc = result.qc.loc[order].rename_axis("sample_id").reset_index()
        expression = result.normalised.log2[order]
        files += [write_csv(features, out / FEATURES_FILE),
                  write_csv(tables.dictionary, out / DICTIONARY_FILE),
                  write_csv(qc, out / QC_FILE),
                  write_csv(tables.gene_sets, out / GENE_SETS_FILE),
                  write_atomic(out / EXPRESSION_FILE,
                               lambda temp: expression.to_parquet(temp, engine="pyarrow"))]
        qc_reasons = result.qc["qc_reasons"].to_dict()
        provenance = {"value_type": result.normalised.value_type,
                      "normalisation": result.normalised.method,
                      "unit": result.normalised.unit, "genes_scored": int(common.shape[0]),
                      "genes_dropped_not_in_all_files": int(full.shape[0] - common.shape[0])}
    else:
        qc_reasons, provenance = {}, {}
    batch = pd.DataFrame({
        "sample_id": ids,
        "status": ["failed" if i in failures else "done" for i in ids],
        "reason": [failures.get(i, qc_reasons.get(i, "")) for i in ids],
        "seconds": [round(seconds.get(i, 0.0), 4) for i in ids],
    })
    files.append(merge_batch_report(out, batch))
    run = {"arm": "transcriptome", "config": config.model_dump(mode="json"),
           "config_sha256": config.digest(), "inputs": [_describe(p) for p in by_file],
           "versions": _versions(), "seconds": round(time.perf_counter() - started, 3),
           "samples": {"done": int((batch["status"] == "done").sum()),
                       "failed": int((batch["status"] == "failed").sum())}, **provenance}
    files.append(write_json(run, out / RUN_FILE))
    return RunResult(features, batch, tuple(files))


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
