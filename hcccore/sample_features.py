"""Each sample folder's own features, and the run table rebuilt from every finished sample.

An arm writes ``OUT/<arm folder>/<sample_id>/features.json`` when a sample finishes:

```
{"sample_id": "P01_baseline_flow",
 "features": {"flow_cd4_pct_cd3": 61.2, ...},            # null for a missing value
 "feature_dictionary": {"flow_cd4_pct_cd3": {"label": ..., "unit": ..., "modality": ...,
                                             "method": ..., "config_keys": ..., "source": ...}},
 ...}                                                     # the arm's own keys (config digest, ...)
```

The arm's run table (``blood_features.csv``, ``transcriptome_features.csv``) is then rebuilt from
every finished sample of the folder (:func:`finished_samples`, :func:`run_table`), not from the
samples of the latest run only: a second run with another manifest adds its samples, a sample
run again replaces its own row, and a sample whose latest run failed leaves the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hcccore.atomic import write_text
from hcccore.batch_report import BatchRow, read_report

SAMPLE_FEATURES = "features.json"
DICTIONARY_COLUMNS = ("name", "label", "unit", "modality", "method", "config_keys", "source")


class SampleFeaturesError(ValueError):
    """A sample's ``features.json`` cannot be read; the message names the file and the fix."""


def write_sample_features(folder: str | Path, *, sample_id: str,
                          values: Mapping[str, Any],
                          dictionary: Mapping[str, Mapping[str, str]],
                          meta: Mapping[str, Any] | None = None) -> Path:
    """Write a finished sample's ``features.json`` atomically.

    Parameters
    ----------
    folder
        The sample's folder (``OUT/<arm folder>/<sample_id>``).
    sample_id
        The sample.
    values
        Feature name to value; NaN and None are written as ``null``, NumPy scalars as numbers.
    dictionary
        Feature name to its data-dictionary entry (the keys of :data:`DICTIONARY_COLUMNS`
        but ``name``); entries of names not in ``values`` are left out.
    meta
        The arm's own keys (e.g. ``config_sha256``, ``modality``), stored beside.

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "S1"
    >>> path = write_sample_features(folder, sample_id="S1", values={"x": float("nan")},
    ...                              dictionary={"x": {"label": "X", "unit": "%"}})
    >>> read_sample_features(path)["features"]
    {'x': None}
    """
    record = {**(meta or {}), "sample_id": sample_id,
              "features": {name: _plain(value) for name, value in values.items()},
              "feature_dictionary": {name: dict(dictionary.get(name, {})) for name in values}}
    # not write_json: its sorted keys would reorder the columns
    return write_text(Path(folder) / SAMPLE_FEATURES,
                      json.dumps(record, indent=2, default=str) + "\n")


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "item"):  # NumPy scalar
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_sample_features(path: str | Path) -> dict[str, Any]:
    """A sample's ``features.json``.

    Raises
    ------
    SampleFeaturesError
        The file is not JSON or lacks ``features``; the message says to run the sample again.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SampleFeaturesError(
            f"{path}: cannot read this sample's features ({error}); delete its folder and "
            "run the sample again") from None
    if not isinstance(record, dict) or not isinstance(record.get("features"), dict):
        raise SampleFeaturesError(
            f"{path}: not a sample features file (no 'features' mapping); delete its folder "
            "and run the sample again")
    return record


def finished_samples(out: str | Path, folder: str, *,
                     report: Mapping[str, BatchRow] | None = None) -> list[str]:
    """Every sample of ``OUT/<folder>/`` with a ``features.json`` whose latest status is not
    failed.

    Parameters
    ----------
    out
        The run folder.
    folder
        The arm's sample folder under ``out`` (``blood``, ``rnaseq``).
    report
        The batch report (read from ``OUT/batch_report.csv`` when None).

    Returns
    -------
    list of str
        In the batch report's order (earlier runs first, then the latest run's samples in its
        order); samples the report does not name follow, sorted.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> for sid in ("b", "a", "c"):
    ...     _ = write_sample_features(out / "arm" / sid, sample_id=sid, values={}, dictionary={})
    >>> finished_samples(out, "arm", report={"b": BatchRow("b", "done", "", 1),
    ...                                      "c": BatchRow("c", "failed", "bad", 1)})
    ['b', 'a']
    """
    report = read_report(out) if report is None else report
    root = Path(out) / folder
    present = {p.parent.name for p in root.glob(f"*/{SAMPLE_FEATURES}")} if root.is_dir() \
        else set()
    ordered = [sid for sid in report if sid in present]
    ordered += sorted(present - set(report))
    return [sid for sid in ordered
            if sid not in report or report[sid].status != "failed"]


@dataclass(frozen=True)
class RunTable:
    """An arm's run table rebuilt from its samples' ``features.json``.

    Attributes
    ----------
    features
        One row per sample: ``sample_id`` then the features, columns in first-seen order.
    dictionary
        One row per feature column (:data:`DICTIONARY_COLUMNS`), in column order.
    records
        Each sample's ``features.json``, keyed by sample id, in row order.
    """

    features: pd.DataFrame
    dictionary: pd.DataFrame
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def groups(self, key: str) -> dict[str, list[str]]:
        """Sample ids grouped by the value of a record key (``"unknown"`` when absent).

        Examples
        --------
        >>> RunTable(pd.DataFrame(), pd.DataFrame(), {"a": {"c": "1"}, "b": {}}).groups("c")
        {'1': ['a'], 'unknown': ['b']}
        """
        groups: dict[str, list[str]] = {}
        for sid, record in self.records.items():
            groups.setdefault(str(record.get(key) or "unknown"), []).append(sid)
        return groups


def run_table(out: str | Path, folder: str, sample_ids: list[str]) -> RunTable:
    """Rebuild an arm's run table from the ``features.json`` of the given samples.

    Parameters
    ----------
    out
        The run folder.
    folder
        The arm's sample folder under ``out``.
    sample_ids
        The rows, in order (usually :func:`finished_samples`).

    Returns
    -------
    RunTable
        A feature's dictionary entry is the one of the last sample that has it (the latest
        run's wording).

    Raises
    ------
    SampleFeaturesError
        A sample's file is missing or unreadable (file named).

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> _ = write_sample_features(out / "arm" / "a", sample_id="a", values={"x": 1.0},
    ...                           dictionary={"x": {"label": "X"}})
    >>> _ = write_sample_features(out / "arm" / "b", sample_id="b", values={"y": 2},
    ...                           dictionary={"y": {"label": "Y"}})
    >>> table = run_table(out, "arm", ["a", "b"])
    >>> table.features.columns.tolist(), table.dictionary["name"].tolist()
    (['sample_id', 'x', 'y'], ['x', 'y'])
    """
    records = {sid: read_sample_features(Path(out) / folder / sid / SAMPLE_FEATURES)
               for sid in sample_ids}
    columns: list[str] = []
    entries: dict[str, dict[str, str]] = {}
    for record in records.values():
        columns.extend(c for c in record["features"] if c not in columns)
        for name, entry in record.get("feature_dictionary", {}).items():
            entries[name] = {k: str(entry.get(k, "")) for k in DICTIONARY_COLUMNS}
            entries[name]["name"] = name
    features = pd.DataFrame(
        [{"sample_id": sid, **record["features"]} for sid, record in records.items()],
        columns=["sample_id", *columns])
    for name in columns:  # JSON null -> NaN in numeric columns
        if features[name].map(lambda v: v is None or isinstance(v, (int, float))).all():
            features[name] = pd.to_numeric(features[name])
    dictionary = pd.DataFrame(
        [entries.get(name, {"name": name}) for name in columns], columns=list(DICTIONARY_COLUMNS))
    return RunTable(features, dictionary, records)


def adopt_table_rows(out: str | Path, folder: str, table_file: str, dictionary_file: str, *,
                     exclude: Iterable[str] = (),
                     report: Mapping[str, BatchRow] | None = None,
                     meta: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Give the rows of a run table written before per-sample files their ``features.json``.

    Run folders of earlier versions hold an arm's samples only in its run table; without
    this, rebuilding the table from sample folders would drop them. A row is adopted when its
    sample has no ``features.json``, is not in ``exclude`` (the samples of the run now going)
    and its latest batch status is not failed.

    Parameters
    ----------
    out
        The run folder.
    folder
        The arm's sample folder under ``out``.
    table_file, dictionary_file
        The arm's run table and its data dictionary, under ``out``.
    exclude
        Samples not to adopt.
    report
        The batch report (read when None).
    meta
        Extra keys per adopted sample id.

    Returns
    -------
    list of str
        The sample ids adopted.

    Raises
    ------
    SampleFeaturesError
        The old table cannot be read or lacks ``sample_id`` (file named).
    """
    out = Path(out)
    table_path = out / table_file
    if not table_path.is_file():
        return []
    try:
        table = pd.read_csv(table_path, dtype={"sample_id": str})
    except (OSError, ValueError) as error:
        raise SampleFeaturesError(f"{table_path}: cannot read the earlier run table ({error}); "
                                  "move it away and run its samples again") from None
    if "sample_id" not in table.columns:
        raise SampleFeaturesError(f"{table_path}: no sample_id column; move it away and run "
                                  "its samples again")
    report = read_report(out) if report is None else report
    skip = set(exclude)
    todo = [sid for sid in table["sample_id"]
            if sid not in skip and not (out / folder / sid / SAMPLE_FEATURES).is_file()
            and (sid not in report or report[sid].status != "failed")]
    if not todo:
        return []
    entries: dict[str, dict[str, str]] = {}
    if (out / dictionary_file).is_file():
        old = pd.read_csv(out / dictionary_file, dtype=str, keep_default_na=False)
        if "name" in old.columns:
            entries = {row["name"]: {k: v for k, v in row.items() if k != "name"}
                       for row in old.to_dict("records")}
    rows = table.set_index("sample_id")
    for sid in todo:
        values = rows.loc[sid]
        values = values.iloc[-1] if isinstance(values, pd.DataFrame) else values
        write_sample_features(out / folder / sid, sample_id=sid,
                              values=values.to_dict(),
                              dictionary=entries,
                              meta={"adopted_from": table_file, **(meta or {}).get(sid, {})})
    return todo
