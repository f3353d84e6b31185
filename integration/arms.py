"""Read the per-sample feature tables the arms write into a run folder, with their dictionaries.

Contract: ``OUT/<arm>_features.csv``, one row per sample, first column ``sample_id``, feature
columns lowercase ``[a-z0-9_]`` of at most 32 characters; beside it
``<arm>_features_dictionary.csv`` with ``name,label,unit,modality,method,config_keys,source``.
Columns ``modality`` and ``stain`` are manifest facts repeated by an arm: they are dropped here
(the manifest is the authority).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hcccore.batch_report import BATCH_REPORT, read_report
from integration.csvrows import cell_message, read_records, typed_column
from integration.manifest import BLOOD_MODALITIES, SLIDE_MODALITIES, Sample

ARM_FILES = ("pathology_features.csv", "blood_features.csv", "transcriptome_features.csv")
#: the arm table each manifest modality's features go to, and the command that writes it
ARM_OF_MODALITY = {**dict.fromkeys(SLIDE_MODALITIES, ARM_FILES[0]),
                   **dict.fromkeys(BLOOD_MODALITIES, ARM_FILES[1]), "rnaseq": ARM_FILES[2]}
ARM_COMMANDS = dict(zip(ARM_FILES, ("hccbio slides run", "hccbio blood run",
                                    "hccbio rnaseq run"), strict=True))
FINISHED = ("done", "skipped")  # batch-report statuses of a sample whose features exist
DICTIONARY_COLUMNS = ("name", "label", "unit", "modality", "method", "config_keys", "source")
META_COLUMNS = frozenset({"modality", "stain", "patient_id", "timepoint"})
FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class FeatureTableError(ValueError):
    """An arm's feature table breaks the contract; the message names file, line and column."""


@dataclass
class ArmFeatures:
    """All arms' per-sample features.

    Attributes
    ----------
    values
        Index ``sample_id``; one column per feature (float, or str for categorical features).
    dictionary
        One row per feature column (``DICTIONARY_COLUMNS``); ``source`` names the arm's file.
    origin
        ``sample_id -> (file name, line)`` for error messages.
    files
        The feature files read.
    """

    values: pd.DataFrame
    dictionary: pd.DataFrame
    origin: dict[str, tuple[str, int]]
    files: list[Path]


def read_arm_features(out: str | Path, *, files: tuple[str, ...] = ARM_FILES) -> ArmFeatures:
    """Read every arm feature table present in a run folder.

    Parameters
    ----------
    out
        The run folder.
    files
        File names to look for (absent ones are skipped).

    Returns
    -------
    ArmFeatures

    Raises
    ------
    FeatureTableError
        No table at all, first column not ``sample_id``, a bad or repeated column name, a
        duplicate ``sample_id``, or a feature named by two arms.
    """
    out = Path(out)
    frames: list[pd.DataFrame] = []
    dictionaries: list[pd.DataFrame] = []
    origin: dict[str, tuple[str, int]] = {}
    owner: dict[str, str] = {}
    read: list[Path] = []
    for name in files:
        path = out / name
        if not path.is_file():
            continue
        read.append(path)
        frame = read_feature_file(path)
        for column in frame.columns:
            if column in owner:
                raise FeatureTableError(f"{path}: column '{column}' is also in {owner[column]};"
                                        " feature names must be unique across arms")
            owner[column] = name
        for line, sample in enumerate(frame.index, start=2):
            if sample in origin:
                other = origin[sample]
                raise FeatureTableError(f"{path}, line {line}, column 'sample_id': "
                                        f"'{sample}' is also in {other[0]} line {other[1]}")
            origin[sample] = (name, line)
        frames.append(frame)
        dictionaries.append(_read_dictionary(path, list(frame.columns)))
    if not frames:
        raise FeatureTableError(f"{out}: no feature table ({', '.join(files)}); run the slide, "
                                "blood or RNA-seq arm first")
    values = pd.concat(frames, axis=0, sort=False)
    dictionary = pd.concat(dictionaries, ignore_index=True)
    return ArmFeatures(values, dictionary, origin, read)


def check_finished_samples(samples: list[Sample], arms: ArmFeatures,
                           out: str | Path) -> None:
    """Every manifest sample that ``batch_report.csv`` lists as finished has its arm row.

    An arm table that lacks a sample its arm finished was cut short (lost lines) or comes
    from another run; merging it would drop that sample as "no features" without a word.

    Parameters
    ----------
    samples
        The study manifest.
    arms
        The arm tables read from ``out``.
    out
        The run folder (its ``batch_report.csv``; nothing is checked without one).

    Raises
    ------
    FeatureTableError
        A finished sample without its row, naming the table, the sample and the fix.
    hcccore.batch_report.BatchReportError
        The batch report itself is broken.
    """
    out = Path(out)
    report = read_report(out)
    for sample in samples:
        row = report.get(sample.sample_id)
        name = ARM_OF_MODALITY.get(sample.modality)
        if row is None or row.status not in FINISHED or name is None or \
                sample.sample_id in arms.values.index:
            continue
        path = out / name
        what = f"has no row for sample '{sample.sample_id}'" if path.is_file() else \
            f"is missing (sample '{sample.sample_id}')"
        raise FeatureTableError(f"{path} {what}, which {out / BATCH_REPORT} lists as "
                                f"{row.status}: the table is truncated or was written by "
                                f"another run; run '{ARM_COMMANDS[name]}' again (it rebuilds "
                                "the table from every finished sample)")


def read_feature_file(path: Path) -> pd.DataFrame:
    """Read one arm table: index ``sample_id``, numeric columns as float, others as str.

    The arm's dictionary (``<name>_dictionary.csv`` beside it) must exist and list every
    column: it says which columns are categories. A column holding numbers is read as float;
    a text cell in it is refused unless the dictionary's unit is ``category``, and so are
    ``inf`` / ``-inf`` (a number that cannot be analysed; leave the cell empty for a missing
    value).

    Raises
    ------
    FeatureTableError
        A row with another number of fields than the header (a truncated table), a bad or
        repeated column name, an empty or duplicate ``sample_id``, a missing or incomplete
        dictionary, a text cell in a numeric column or a non-finite number; the message names
        the file, the line and the column.
    """
    fix = (f"; {path.name} is truncated or damaged: run its arm again (it rebuilds the "
           "table from every finished sample)")
    header, records = read_records(path, error=FeatureTableError, what="feature table",
                                   fix=fix)
    if not header or header[0] != "sample_id":
        first = header[0] if header else "(none)"
        raise FeatureTableError(f"{path}, line 1: first column is '{first}', expected "
                                "'sample_id'")
    seen: set[str] = set()
    for column in header[1:]:
        if column in seen:
            raise FeatureTableError(f"{path}, line 1, column '{column}': appears twice")
        seen.add(column)
        if column not in META_COLUMNS and not FEATURE_NAME.match(column):
            raise FeatureTableError(f"{path}, line 1, column '{column}': feature names are "
                                    "lowercase [a-z0-9_], start with a letter, <= 32 characters")
    lines = [line for line, _ in records]
    raw = pd.DataFrame([fields for _, fields in records], columns=header, dtype=str)
    ids: dict[str, int] = {}
    for line, sample in zip(lines, raw["sample_id"], strict=True):
        if not sample.strip():
            raise FeatureTableError(f"{path}, line {line}, column 'sample_id': empty")
        if sample in ids:
            raise FeatureTableError(f"{path}, line {line}, column 'sample_id': '{sample}' "
                                    f"duplicates line {ids[sample]}")
        ids[sample] = line
    raw = raw.set_index("sample_id")
    raw = raw.drop(columns=[c for c in raw.columns if c in META_COLUMNS])
    entries = _dictionary_entries(path, list(raw.columns))
    table = pd.DataFrame(index=raw.index)
    for column in raw.columns:
        unit = entries.loc[column, "unit"]
        values, problem = typed_column(raw[column], category=unit == "category")
        if problem is not None:
            where = f"{path}, line {lines[problem.position]}, column '{column}'"
            sample = raw.index[problem.position]
            raise FeatureTableError(f"{where}: {cell_message(problem, unit)} (sample "
                                    f"'{sample}'); leave the cell empty for a missing value, "
                                    "or run the arm again")
        table[column] = values
    return table


def _dictionary_entries(path: Path, columns: list[str]) -> pd.DataFrame:
    """The arm dictionary beside ``path``, indexed by name; it must list every column."""
    dict_path = path.with_name(path.stem + "_dictionary.csv")
    if not dict_path.is_file():
        raise FeatureTableError(f"{path}: its dictionary {dict_path.name} is missing (it says "
                                "which columns are categories, and gives labels and units); "
                                "run the arm again, which writes both")
    header, records = read_records(dict_path, error=FeatureTableError, what="dictionary",
                                   fix="; the dictionary is truncated: run the arm again")
    missing = [c for c in DICTIONARY_COLUMNS if c not in header]
    if missing:
        raise FeatureTableError(f"{dict_path}, line 1: missing column(s) "
                                f"{', '.join(missing)}")
    entries = pd.DataFrame([fields for _, fields in records], columns=header, dtype=str)
    entries = entries.drop_duplicates("name").set_index("name")
    absent = [c for c in columns if c not in entries.index]
    if absent:
        raise FeatureTableError(f"{dict_path}: no row for column(s) "
                                f"{', '.join(absent[:8])}{' ...' if len(absent) > 8 else ''} "
                                f"of {path.name}; the dictionary is truncated or belongs to "
                                "another run: run the arm again")
    return entries


def _read_dictionary(path: Path, columns: list[str]) -> pd.DataFrame:
    entries = _dictionary_entries(path, columns)
    rows = []
    for column in columns:
        entry = entries.loc[column]
        rows.append({"name": column, "label": entry["label"] or column,
                     "unit": entry["unit"], "modality": entry["modality"],
                     "method": entry["method"], "config_keys": entry["config_keys"],
                     "source": f"{path.name}: {entry['source']}".rstrip(": ")})
    return pd.DataFrame(rows, columns=list(DICTIONARY_COLUMNS))
