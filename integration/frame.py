"""The patient-level analysis frame: outcomes, covariates and every candidate biomarker.

Each analysed variable is a feature at one time point:

- ``baseline``: the value at baseline, analysed from treatment start;
- ``on_treatment``: the value on treatment, and ``change``: on treatment minus baseline (the
  ``d_`` columns), both analysed with the landmark: only patients event-free and followed at the
  landmark, time counted from it. Using them from time zero would credit patients with survival
  they needed in order to have the sample (immortal-time bias);
- ``clinical``: derived clinical scores (CRAFITY, ALBI, NLR) from baseline; week-6 AFP
  response and change are ``on_treatment`` (landmark).

Progression samples are not used for outcome models (they are measured after the event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from integration.clinical import ClinicalTable
from integration.csvrows import cell_message, read_records, typed_column
from integration.dictionary import DELTA_PREFIX
from integration.manifest import TIMEPOINTS
from integration.scores import ON_TREATMENT_CLINICAL
from pathology.features import BOOKKEEPING_SUFFIXES

ANALYSED_SCORES = ("crafity", "albi", "albi_grade", "nlr", "afp_w6_chg_pct", "afp_resp",
                   "afp_nonprog")
TIMEPOINT_ORDER = ("clinical", "baseline", "on_treatment", "change")
NON_FEATURE_COLUMNS = ("patient_id", "timepoint", "qc_review")  # keys and the QC review state


class AnalysisInputError(ValueError):
    """The feature table cannot be analysed with this clinical table; the message says why."""


@dataclass(frozen=True)
class Variable:
    """One candidate biomarker: a feature at one time point.

    Attributes
    ----------
    key
        Column of :attr:`AnalysisData.x` (``feature`` for baseline and clinical,
        ``feature@on_treatment``, ``d_feature`` for changes).
    feature
        Column name in features.csv or the clinical table.
    timepoint
        ``clinical``, ``baseline``, ``on_treatment`` or ``change``.
    landmark
        Analysed with the landmark (on-treatment information).
    label, unit, modality
        From the data dictionary.
    """

    key: str
    feature: str
    timepoint: str
    landmark: bool
    label: str = ""
    unit: str = ""
    modality: str = ""


@dataclass
class AnalysisData:
    """Everything the analyses need, one row per patient of the clinical table.

    Attributes
    ----------
    clinical
        Validated clinical table with derived scores (index ``patient_id``).
    x
        Index ``patient_id`` (all clinical patients), one float column per variable key.
    variables
        The candidate biomarkers, in a stable order.
    blocks
        ``modality -> list of baseline variable keys``: the blocks for subtypes.
    notes
        What was left out and why.
    """

    clinical: ClinicalTable
    x: pd.DataFrame
    variables: list[Variable]
    blocks: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def variable(self, key: str) -> Variable:
        """The variable with this key."""
        for variable in self.variables:
            if variable.key == key:
                return variable
        raise KeyError(key)


@dataclass(frozen=True)
class FeatureFile:
    """The merged feature table as read for the analysis.

    Attributes
    ----------
    path
        ``features.csv`` (or ``.parquet``).
    wide
        One row per patient x time point; feature columns float, or str for categories.
    dictionary
        ``data_dictionary.csv`` beside it.
    notes
        What was read otherwise than written (time points spelled otherwise).
    """

    path: Path
    wide: pd.DataFrame
    dictionary: pd.DataFrame
    notes: tuple[str, ...] = ()


def read_features(path: str | Path) -> FeatureFile:
    """Read ``features.csv`` (or ``.parquet``) and the ``data_dictionary.csv`` beside it.

    Time points are read case- and space-insensitively (``Baseline`` is ``baseline``, with a
    note). Every feature column must be numbers or, when the dictionary's unit is
    ``category`` or it holds no number at all, text.

    Parameters
    ----------
    path
        The merged table written by ``hccbio integrate``.

    Returns
    -------
    FeatureFile

    Raises
    ------
    AnalysisInputError
        Missing file, ``patient_id``/``timepoint`` column or dictionary; a row with another
        number of fields than the header (a truncated table); a time point that is none of
        baseline, on_treatment, progression; a text cell in a numeric column or an
        ``inf``; a dictionary without a row for a column. The message names the file, the
        line (parquet: the row) and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise AnalysisInputError(f"{path}: feature table not found")
    dictionary_path = path.with_name("data_dictionary.csv")
    if not dictionary_path.is_file():
        raise AnalysisInputError(f"{path}: no data_dictionary.csv beside it; the dictionary "
                                 "says which columns are categories (e.g. elisa_*_cens) and "
                                 "must not be analysed as numbers: write both with "
                                 "'hccbio integrate'")
    fix = f"; {path.name} is truncated or damaged: write it again with 'hccbio integrate'"
    header, records = read_records(dictionary_path, error=AnalysisInputError,
                                   what="dictionary", fix=fix)
    if "name" not in header or "unit" not in header:
        raise AnalysisInputError(f"{dictionary_path}, line 1: columns 'name' and 'unit' "
                                 "are needed")
    dictionary = pd.DataFrame([f for _, f in records], columns=header, dtype=str)
    units = dict(zip(dictionary["name"], dictionary["unit"], strict=True))
    if path.suffix == ".parquet":
        wide = pd.read_parquet(path)
        rows = [f"row {i + 1}" for i in range(len(wide))]
    else:
        header, records = read_records(path, error=AnalysisInputError, what="feature table",
                                       fix=fix)
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise AnalysisInputError(f"{path}, line 1, column '{repeated[0]}': appears twice")
        wide = pd.DataFrame([f for _, f in records], columns=header, dtype=str)
        rows = [f"line {line}" for line, _ in records]
    for column in ("patient_id", "timepoint"):
        if column not in wide.columns:
            raise AnalysisInputError(f"{path}: column '{column}' missing; give the merged "
                                     "features.csv written by the integration step")
    absent = [c for c in wide.columns if c not in units]
    if absent:
        raise AnalysisInputError(f"{dictionary_path}: no row for column(s) "
                                 f"{', '.join(absent[:8])}{' ...' if len(absent) > 8 else ''}"
                                 f" of {path.name}; the dictionary is truncated or belongs to "
                                 "another table: write both again with 'hccbio integrate'")
    for column in wide.columns:
        if column in NON_FEATURE_COLUMNS:
            continue
        values, problem = typed_column(wide[column], category=units[column] == "category")
        if problem is not None:
            raise AnalysisInputError(f"{path}, {rows[problem.position]}, column '{column}': "
                                     f"{cell_message(problem, units[column])}; leave the "
                                     "cell empty for a missing value")
        wide[column] = values
    patients = wide["patient_id"].astype(object).where(wide["patient_id"].notna(), "")
    wide["patient_id"] = patients.astype(str).str.strip()
    empty = np.flatnonzero((wide["patient_id"] == "").to_numpy())
    if empty.size:
        raise AnalysisInputError(f"{path}, {rows[empty[0]]}, column 'patient_id': empty")
    wide["timepoint"], notes = _timepoints(wide["timepoint"], rows, path)
    return FeatureFile(path, wide, dictionary, tuple(notes))


def _timepoints(values: pd.Series, rows: list[str], path: Path
                ) -> tuple[pd.Series, list[str]]:
    """Time points read case- and space-insensitively; an unknown one is refused."""
    written = values.astype(object).where(values.notna(), "").astype(str)
    read = written.str.strip().str.lower().str.replace(r"[\s-]+", "_", regex=True)
    for i, (text, value) in enumerate(zip(written, read, strict=True)):
        if value not in TIMEPOINTS:
            raise AnalysisInputError(f"{path}, {rows[i]}, column 'timepoint': '{text}' is "
                                     f"not a time point; use one of {', '.join(TIMEPOINTS)}")
    changed = np.flatnonzero((written != read).to_numpy())
    notes = []
    if changed.size:
        i = changed[0]
        notes.append(f"{path}, column 'timepoint': {changed.size} value(s) written otherwise "
                     f"were read as their time point (e.g. {rows[i]}: '{written.iloc[i]}' "
                     f"as '{read.iloc[i]}')")
    return read, notes


def build_analysis_data(wide: pd.DataFrame, clinical: ClinicalTable, *,
                        dictionary: pd.DataFrame | None = None) -> AnalysisData:
    """Lay out every candidate biomarker per patient.

    Parameters
    ----------
    wide
        The merged feature table (one row per patient x time point).
    clinical
        Clinical table with derived scores.
    dictionary
        The data dictionary (labels, units, modality; ``unit == "category"`` columns are not
        analysed as numbers).

    Returns
    -------
    AnalysisData

    Raises
    ------
    AnalysisInputError
        Feature rows of patients missing from the clinical table, or duplicate patient x time
        point rows.
    """
    dictionary = dictionary if dictionary is not None else pd.DataFrame(columns=["name"])
    meta = dictionary.set_index("name").to_dict("index") if len(dictionary) else {}
    unknown = sorted(set(wide["patient_id"].astype(str)) - set(clinical.data.index))
    if unknown:
        raise AnalysisInputError(f"feature table: patient(s) {', '.join(unknown[:10])} not in "
                                 "the clinical table; add them or remove their samples")
    duplicated = wide.duplicated(["patient_id", "timepoint"])
    if duplicated.any():
        row = wide[duplicated].iloc[0]
        raise AnalysisInputError(f"feature table: patient {row['patient_id']} has two "
                                 f"'{row['timepoint']}' rows")
    notes: list[str] = []
    patients = clinical.data.index
    columns: dict[str, pd.Series] = {}
    variables: list[Variable] = []
    blocks: dict[str, list[str]] = {}

    def info(name: str) -> dict:
        return meta.get(name, {})

    for name in ANALYSED_SCORES:
        if name in clinical.data.columns:
            spec = clinical.specs[name]
            landmark = name in ON_TREATMENT_CLINICAL
            columns[name] = clinical.data[name].astype(float)
            variables.append(Variable(name, name, "on_treatment" if landmark else "clinical",
                                      landmark, spec.label, spec.unit, "clinical"))
    feature_columns = [c for c in wide.columns if c not in NON_FEATURE_COLUMNS]
    skipped = [c for c in feature_columns
               if not pd.api.types.is_numeric_dtype(wide[c]) or info(c).get("unit") == "category"]
    if skipped:
        notes.append(f"{len(skipped)} non-numeric feature column(s) not analysed: "
                     f"{', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}")
    bookkeeping = [c for c in feature_columns if c not in skipped
                   and c.removeprefix(DELTA_PREFIX).endswith(BOOKKEEPING_SUFFIXES)]
    if bookkeeping:
        notes.append(f"{len(bookkeeping)} QC bookkeeping column(s) (areas before QC and under "
                     "artefacts, excluded cells, automatic thresholds) kept in the table but "
                     "not analysed as biomarkers")
    numeric = [c for c in feature_columns if c not in skipped and c not in bookkeeping]
    if (wide["timepoint"] == "progression").any():
        notes.append("progression samples are not used in outcome models (measured after the "
                     "event)")
    for timepoint in ("baseline", "on_treatment"):
        rows = wide[wide["timepoint"] == timepoint].set_index("patient_id")
        if rows.empty:
            continue
        for name in numeric:
            is_delta = name.startswith(DELTA_PREFIX)
            if timepoint == "baseline" and is_delta:
                continue
            series = rows[name].astype(float).reindex(patients)
            if series.notna().sum() == 0:
                continue
            entry = info(name)
            if is_delta:
                key, kind = name, "change"
            elif timepoint == "baseline":
                key, kind = name, "baseline"
            else:
                key, kind = f"{name}@on_treatment", "on_treatment"
            if key in columns:
                raise AnalysisInputError(f"feature '{name}' clashes with a clinical column")
            columns[key] = series
            modality = entry.get("modality", "") or ""
            variables.append(Variable(key, name, kind, kind != "baseline",
                                      entry.get("label", "") or name, entry.get("unit", "") or "",
                                      modality))
            if kind == "baseline":
                blocks.setdefault(modality or "other", []).append(key)
    if not any(v.modality != "clinical" for v in variables):
        notes.append("no feature of the feature table is tested: it has no baseline or "
                     "on-treatment row with a numeric feature of a clinical-table patient "
                     "(only clinical scores are analysed)")
    x = pd.DataFrame(columns, index=patients) if columns else pd.DataFrame(index=patients)
    x = x.astype(float).replace([np.inf, -np.inf], np.nan)
    return AnalysisData(clinical, x, variables, blocks, notes)


def outcome(clinical: ClinicalTable, endpoint: str, *, landmark: float | None = None
            ) -> pd.DataFrame:
    """Time and event of one endpoint, optionally from a landmark.

    Parameters
    ----------
    clinical
        The clinical table.
    endpoint
        ``os`` or ``pfs``.
    landmark
        Months; when given, only patients with time > landmark (event-free and followed at
        the landmark) are kept and their time is counted from it.

    Returns
    -------
    pandas.DataFrame
        Index ``patient_id``, columns ``time`` (float) and ``event`` (int).

    Examples
    --------
    >>> import pandas as pd
    >>> from integration.clinical import validate_clinical
    >>> raw = pd.DataFrame({"patient_id": ["A", "B"], "os_time": ["1", "5"],
    ...                     "os_event": ["1", "0"], "pfs_time": ["1", "3"],
    ...                     "pfs_event": ["1", "1"], "best_response": ["PD", "SD"]})
    >>> outcome(validate_clinical(raw), "os", landmark=1.5)["time"].tolist()
    [3.5]
    """
    frame = pd.DataFrame({"time": clinical.data[f"{endpoint}_time"].astype(float),
                          "event": clinical.data[f"{endpoint}_event"].astype(int)})
    if landmark is not None:
        frame = frame[frame["time"] > landmark].copy()
        frame["time"] = frame["time"] - landmark
    return frame
