"""The blood feature table's file names and its data-dictionary entries.

The table itself is rebuilt by :func:`blood.batch.run_blood` from every finished sample's
``features.json`` (:mod:`hcccore.sample_features`).
"""

from __future__ import annotations

from dataclasses import dataclass

FEATURES_FILE = "blood_features.csv"
DICTIONARY_FILE = "blood_features_dictionary.csv"


@dataclass(frozen=True)
class FeatureInfo:
    """Data-dictionary entry of one feature column
    (the columns of :data:`hcccore.sample_features.DICTIONARY_COLUMNS`)."""

    name: str
    label: str
    unit: str
    modality: str
    method: str
    config_keys: str
    source: str
