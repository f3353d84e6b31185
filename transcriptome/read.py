"""Read gene-by-sample expression tables: plain CSV/TSV, featureCounts, Salmon gene quant."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transcriptome.errors import ExpressionError

FEATURECOUNTS_ANNOTATION = ("Geneid", "Chr", "Start", "End", "Strand", "Length")
SALMON_COLUMNS = ("Name", "Length", "EffectiveLength", "TPM", "NumReads")
TRANSCRIPT_ID = re.compile(r"^ENS[A-Z]*T\d{11}")


@dataclass(frozen=True)
class ExpressionMatrix:
    """One expression file, genes by samples.

    Attributes
    ----------
    values
        Float table, index = gene identifiers as written in the file (stripped), columns =
        sample names.
    path
        The file it came from.
    file_format
        'table', 'featurecounts' or 'salmon'.
    single_sample
        True when the format holds one sample with no sample name (Salmon ``quant.genes.sf``);
        its one column is then named by the caller.
    value_type_hint
        'counts' when the format fixes the scale (featureCounts, Salmon NumReads), else None.
    """

    values: pd.DataFrame
    path: Path
    file_format: str
    single_sample: bool
    value_type_hint: str | None


def read_expression(path: str | Path) -> ExpressionMatrix:
    """Read an expression file and check its values.

    Parameters
    ----------
    path
        CSV (``.csv``) or tab-separated (``.tsv``, ``.txt``, ``.tab``, ``.sf``; ``.gz`` allowed)
        file. Plain tables have gene identifiers in the first column and one numeric column per
        sample. featureCounts output (``Geneid Chr Start End Strand Length`` then one column per
        BAM) is recognised; its sample columns are the BAM file names without folder and
        ``.bam``. Salmon ``quant.genes.sf`` is read as one sample of estimated counts
        (``NumReads``).

    Returns
    -------
    ExpressionMatrix

    Raises
    ------
    ExpressionError
        Missing or unreadable file, no sample columns, non-numeric or missing values, duplicated
        gene identifiers, transcript-level Salmon output.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "m.csv").write_text("gene,s1,s2\\nCD274,5,7\\nAFP,0,3\\n")
    >>> read_expression(folder / "m.csv").values.shape
    (2, 2)
    """
    path = Path(path)
    if not path.is_file():
        raise ExpressionError(f"{path}: expression file not found")
    sep = "," if _stem_suffix(path) == ".csv" else "\t"
    try:
        table = pd.read_csv(path, sep=sep, comment="#", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ExpressionError(f"{path}: cannot be read as a {'CSV' if sep == ',' else 'TSV'} "
                              f"table ({error})") from error
    table.columns = [str(c).strip() for c in table.columns]
    if tuple(table.columns[:6]) == FEATURECOUNTS_ANNOTATION:
        genes = table["Geneid"]
        samples = table.iloc[:, 6:]
        samples.columns = [_bam_name(c) for c in samples.columns]
        file_format, single, hint = "featurecounts", False, "counts"
    elif set(SALMON_COLUMNS) <= set(table.columns):
        genes = table["Name"]
        if genes.str.strip().str.match(TRANSCRIPT_ID).any():
            raise ExpressionError(f"{path}: Salmon output is transcript-level (ENST ids); give "
                                  "quant.genes.sf or aggregate transcripts to genes first "
                                  "(e.g. tximport)")
        samples = table[["NumReads"]]
        file_format, single, hint = "salmon", True, "counts"
    else:
        if table.shape[1] < 2:
            raise ExpressionError(f"{path}: needs a gene column and at least one sample column "
                                  f"(found columns {list(table.columns)}; separator '{sep}')")
        genes = table.iloc[:, 0]
        samples = table.iloc[:, 1:]
        file_format, single, hint = "table", False, None
    if samples.shape[1] == 0:
        raise ExpressionError(f"{path}: no sample columns")
    values = _numeric(samples, path)
    genes = genes.astype(str).str.strip()
    if (genes == "").any():
        row = int(np.flatnonzero((genes == "").to_numpy())[0]) + 2
        raise ExpressionError(f"{path}: empty gene identifier on data row {row}")
    duplicated = sorted(set(genes[genes.duplicated()]))
    if duplicated:
        raise ExpressionError(f"{path}: duplicated gene identifier(s) {_few(duplicated)}; "
                              "each gene must appear once (sum or drop duplicates upstream)")
    if pd.Index(values.columns).duplicated().any():
        dup = sorted(set(pd.Index(values.columns)[pd.Index(values.columns).duplicated()]))
        raise ExpressionError(f"{path}: duplicated sample column(s) {_few(dup)}")
    values.index = pd.Index(genes.to_numpy(), name="gene")
    return ExpressionMatrix(values, path, file_format, single, hint)


def _numeric(samples: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = {}
    for column in samples.columns:
        parsed = pd.to_numeric(samples[column].str.strip(), errors="coerce")
        bad = parsed.isna() | ~np.isfinite(parsed.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ExpressionError(f"{path}: column '{column}', data row {row + 2}: value "
                                  f"'{samples[column].iloc[row]}' is not a finite number")
        out[column] = parsed.to_numpy(dtype=float)
    return pd.DataFrame(out, index=samples.index)


def _bam_name(column: str) -> str:
    name = Path(column).name
    return name[:-4] if name.endswith(".bam") else name


def _stem_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zip"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
