"""The blood feature table and its data dictionary (shared column conventions)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from blood.config import FEATURE_NAME

FEATURES_FILE = "blood_features.csv"
DICTIONARY_FILE = "blood_features_dictionary.csv"
DICTIONARY_COLUMNS = ("name", "label", "unit", "modality", "method", "config_keys", "source")


@dataclass(frozen=True)
class FeatureInfo:
    """Data-dictionary entry of one feature column."""

    name: str
    label: str
    unit: str
    modality: str
    method: str
    config_keys: str
    source: str


def feature_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Wide table: first column ``sample_id``, then feature columns in first-seen order.

    Raises
    ------
    ValueError
        A feature name breaks the column convention (our own bug, not user input).
    """
    columns: list[str] = []
    for values in rows.values():
        columns.extend(c for c in values if c not in columns)
    bad = [c for c in columns if not FEATURE_NAME.match(c)]
    if bad:
        raise ValueError(f"feature names break the [a-z0-9_]{{1,32}} convention: {bad}")
    table = pd.DataFrame([{"sample_id": s, **v} for s, v in rows.items()],
                         columns=["sample_id", *columns])
    return table


def dictionary_table(infos: dict[str, FeatureInfo], columns: list[str]) -> pd.DataFrame:
    """Dictionary rows for the given feature columns, in column order."""
    return pd.DataFrame([vars(infos[c]) for c in columns if c != "sample_id"],
                        columns=list(DICTIONARY_COLUMNS))
