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

ARM_FILES = ("pathology_features.csv", "blood_features.csv", "transcriptome_features.csv")
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


def read_feature_file(path: Path) -> pd.DataFrame:
    """Read one arm table: index ``sample_id``, numeric columns as float, others as str."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if raw.columns.empty or raw.columns[0] != "sample_id":
        first = raw.columns[0] if not raw.columns.empty else "(none)"
        raise FeatureTableError(f"{path}, line 1: first column is '{first}', expected "
                                "'sample_id'")
    seen: set[str] = set()
    for column in raw.columns[1:]:
        if column in seen:
            raise FeatureTableError(f"{path}, line 1, column '{column}': appears twice")
        seen.add(column)
        if column not in META_COLUMNS and not FEATURE_NAME.match(column):
            raise FeatureTableError(f"{path}, line 1, column '{column}': feature names are "
                                    "lowercase [a-z0-9_], start with a letter, <= 32 characters")
    ids: dict[str, int] = {}
    for line, sample in enumerate(raw["sample_id"], start=2):
        if not sample.strip():
            raise FeatureTableError(f"{path}, line {line}, column 'sample_id': empty")
        if sample in ids:
            raise FeatureTableError(f"{path}, line {line}, column 'sample_id': '{sample}' "
                                    f"duplicates line {ids[sample]}")
        ids[sample] = line
    raw = raw.set_index("sample_id")
    raw = raw.drop(columns=[c for c in raw.columns if c in META_COLUMNS])
    table = pd.DataFrame(index=raw.index)
    for column in raw.columns:
        text = raw[column].str.strip().replace({"": None, "NA": None, "nan": None,
                                                 "NaN": None})
        numbers = pd.to_numeric(text, errors="coerce")
        if numbers.notna().sum() == text.notna().sum():
            table[column] = numbers.astype(float)
        else:
            table[column] = text
    return table


def _read_dictionary(path: Path, columns: list[str]) -> pd.DataFrame:
    dict_path = path.with_name(path.stem + "_dictionary.csv")
    if dict_path.is_file():
        entries = pd.read_csv(dict_path, dtype=str, keep_default_na=False)
        missing = [c for c in DICTIONARY_COLUMNS if c not in entries.columns]
        if missing:
            raise FeatureTableError(f"{dict_path}, line 1: missing column(s) "
                                    f"{', '.join(missing)}")
        entries = entries.drop_duplicates("name").set_index("name")
    else:
        entries = pd.DataFrame(columns=list(DICTIONARY_COLUMNS[1:]))
    rows = []
    for column in columns:
        if column in entries.index:
            entry = entries.loc[column]
            rows.append({"name": column, "label": entry["label"] or column,
                         "unit": entry["unit"], "modality": entry["modality"],
                         "method": entry["method"], "config_keys": entry["config_keys"],
                         "source": f"{path.name}: {entry['source']}".rstrip(": ")})
        else:
            rows.append({"name": column, "label": column, "unit": "", "modality": "",
                         "method": "(not in the arm's dictionary)", "config_keys": "",
                         "source": path.name})
    return pd.DataFrame(rows, columns=list(DICTIONARY_COLUMNS))
