"""Column names and the data dictionary of the merged feature table.

Every column of ``features.csv`` has one row in ``data_dictionary.csv``: name, label, unit,
modality, method, config keys and source files. Change columns are named ``d_<feature>``; a
feature name too long for that (32-character limit of Stata and SAS) is shortened with a stable
hash suffix, and the dictionary says which feature it is the change of.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from integration.arms import DICTIONARY_COLUMNS

MAX_NAME = 32
DELTA_PREFIX = "d_"
ID_ENTRIES = (
    {"name": "patient_id", "label": "Patient identifier", "unit": "", "modality": "",
     "method": "study manifest", "config_keys": "", "source": "samples.csv"},
    {"name": "timepoint", "label": "Time point (baseline, on_treatment, progression)",
     "unit": "category", "modality": "", "method": "study manifest", "config_keys": "",
     "source": "samples.csv"},
    {"name": "qc_review", "label": "QC review of the row's slides: approved (all signed off) "
     "or not_reviewed (at least one without a decision, or approved on an earlier result); "
     "empty without slides",
     "unit": "category", "modality": "", "method": "pathologist's review log (rejected "
     "slides are left out, see exclusions.csv)", "config_keys": "", "source": "qc/review.csv"},
)


def delta_name(feature: str) -> str:
    """Name of the change-from-baseline column of ``feature`` (at most 32 characters).

    Examples
    --------
    >>> delta_name("he_lym_pct")
    'd_he_lym_pct'
    >>> len(delta_name("x" * 32))
    32
    """
    name = DELTA_PREFIX + feature
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(feature.encode()).hexdigest()[:5]
    keep = MAX_NAME - len(DELTA_PREFIX) - len(digest) - 1
    return f"{DELTA_PREFIX}{feature[:keep]}_{digest}"


def delta_entry(entry: dict) -> dict:
    """Dictionary row of a change column, from its feature's row."""
    return {"name": delta_name(entry["name"]),
            "label": f"Change from baseline: {entry['label']}",
            "unit": entry["unit"], "modality": entry["modality"],
            "method": f"value at this time point minus the baseline value of the same patient "
                      f"({entry['name']})",
            "config_keys": entry["config_keys"], "source": entry["source"]}


def build_dictionary(feature_entries: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The data dictionary of a table with ``columns``, in column order.

    Parameters
    ----------
    feature_entries
        Rows for the feature columns (``DICTIONARY_COLUMNS``), as read from the arms.
    columns
        The table's columns (ids, features and ``d_`` changes).

    Returns
    -------
    pandas.DataFrame
        One row per column; columns without an entry get their name as label.
    """
    entries = {e["name"]: e for e in ID_ENTRIES}
    for entry in feature_entries.to_dict("records"):
        entries.setdefault(entry["name"], entry)
        entries.setdefault(delta_name(entry["name"]), delta_entry(entry))
    rows = [entries.get(c, {"name": c, "label": c, "unit": "", "modality": "", "method": "",
                            "config_keys": "", "source": ""}) for c in columns]
    return pd.DataFrame(rows, columns=list(DICTIONARY_COLUMNS))
