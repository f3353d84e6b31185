"""Merge the arms' per-sample features into one table per patient and time point.

Samples map to patients and time points through the manifest. Slides rejected at QC review are
excluded with the reason, as are manifest samples without features; slides used without a QC
review decision are flagged (column ``qc_review`` = ``not_reviewed``), never read as approved;
so are slides approved on an earlier result (computed again since with another configuration:
``approved_earlier_result`` per slide, ``not_reviewed`` in the wide row).
The wide table has one row per patient x time point, the features of all that patient's samples
at that time point, and ``d_<feature>`` = value at this time point minus the patient's baseline
value (empty on baseline rows). The long form has one row per patient x time point x feature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hcccore.batch_report import BatchRow
from integration.arms import ArmFeatures, FeatureTableError
from integration.dictionary import build_dictionary, delta_name
from integration.manifest import SLIDE_MODALITIES, TIMEPOINTS, Sample
from integration.review import (
    APPROVED,
    APPROVED_EARLIER,
    NOT_REVIEWED,
    REJECTED,
    Decision,
    review_state,
)

ID_COLUMNS = ("patient_id", "timepoint")
QC_REVIEW_COLUMN = "qc_review"
EXCLUSION_COLUMNS = ("sample_id", "patient_id", "timepoint", "modality", "stain", "reason")


@dataclass
class FeatureTable:
    """The merged feature table and its companions.

    Attributes
    ----------
    wide
        One row per patient x time point: ``patient_id, timepoint, qc_review``, features,
        ``d_`` changes. ``qc_review`` is ``approved`` when every slide of the row was signed
        off, ``not_reviewed`` when at least one was not reviewed (or approved on an
        earlier result), empty without slides.
    long
        ``patient_id, timepoint, sample_id, modality, qc_review, feature, value, level``
        (``level`` holds categorical values, ``value`` numeric ones; ``qc_review`` is the
        slide's review state, empty for other modalities).
    dictionary
        One row per column of ``wide``.
    exclusions
        Samples left out, with the reason (``EXCLUSION_COLUMNS``).
    missingness
        Per feature and time point: rows, missing values, percent missing.
    counts
        Cohort flow: manifest samples, samples with features, rejected, used; patients.
    notes
        Things the statistician should know (e.g. features averaged over repeat samples).
    """

    wide: pd.DataFrame
    long: pd.DataFrame
    dictionary: pd.DataFrame
    exclusions: pd.DataFrame
    missingness: pd.DataFrame
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def build_feature_table(samples: list[Sample], arms: ArmFeatures, *,
                        review: dict[str, Decision] | None = None,
                        batch: Mapping[str, BatchRow] | None = None,
                        results: Mapping[str, str] | None = None) -> FeatureTable:
    """Merge per-sample features into the study table.

    Parameters
    ----------
    samples
        The validated manifest.
    arms
        Per-sample features of every arm.
    review
        Standing QC review decisions (``sample_id -> Decision``); rejected samples are excluded.
    batch
        The run's ``batch_report.csv`` rows: a sample whose latest status is failed is
        excluded with the arm's reason (e.g. a flow file with too few events, or stale
        slide outputs), even when an arm table still holds an earlier run's row for it.
    results
        Each slide's result digest now (:func:`integration.review.result_digests`): an
        approval given to another result is ``approved_earlier_result``, not an approval.

    Returns
    -------
    FeatureTable

    Raises
    ------
    FeatureTableError
        A feature row whose ``sample_id`` is not in the manifest, or a review decision for an
        unknown sample.
    """
    review = review or {}
    by_id = {s.sample_id: s for s in samples}
    for sample_id in arms.values.index:
        if sample_id not in by_id:
            file, line = arms.origin[sample_id]
            raise FeatureTableError(f"{file}, line {line}, column 'sample_id': '{sample_id}' is "
                                    "not in the study manifest")
    for sample_id in review:
        if sample_id not in by_id:
            raise FeatureTableError(f"qc/review.csv: sample_id '{sample_id}' is not in the "
                                    "study manifest")
    exclusions: list[dict] = []
    used: list[Sample] = []
    for sample in samples:
        decision = review.get(sample.sample_id)
        row = (batch or {}).get(sample.sample_id)
        if row is not None and row.status == "failed":
            # the latest run is the truth: features an earlier run left behind are not used
            reason = (f"failed in its arm: {row.reason}"
                      if sample.sample_id not in arms.values.index else
                      f"failed on its latest run, earlier features not used: {row.reason}")
        elif sample.sample_id not in arms.values.index:
            reason = "no features (not processed, failed, or modality without an arm yet)"
        elif decision is not None and decision.decision == REJECTED:
            reason = decision.reason()
        else:
            used.append(sample)
            continue
        exclusions.append({"sample_id": sample.sample_id, "patient_id": sample.patient_id,
                           "timepoint": sample.timepoint, "modality": sample.modality,
                           "stain": sample.stain, "reason": reason})
    notes: list[str] = []
    feature_columns = list(arms.values.columns)
    values = arms.values.loc[[s.sample_id for s in used]]
    results = results or {}
    states = [review_state(review.get(s.sample_id), results.get(s.sample_id))
              if s.modality in SLIDE_MODALITIES else None for s in used]
    keys = pd.DataFrame({"patient_id": [s.patient_id for s in used],
                         "timepoint": [s.timepoint for s in used],
                         "sample_id": [s.sample_id for s in used],
                         "modality": [s.modality for s in used],
                         QC_REVIEW_COLUMN: states}, index=values.index)
    unreviewed = [s.sample_id for s, state in zip(used, states, strict=True)
                  if state == NOT_REVIEWED]
    if unreviewed:
        notes.append(f"{len(unreviewed)} slide(s) used without a QC review decision "
                     f"(qc_review = {NOT_REVIEWED}): {', '.join(unreviewed[:20])}"
                     f"{' ...' if len(unreviewed) > 20 else ''}")
    earlier = [s.sample_id for s, state in zip(used, states, strict=True)
               if state == APPROVED_EARLIER]
    if earlier:
        notes.append(f"{len(earlier)} slide(s) approved an earlier result (computed again "
                     f"since, with another configuration; qc_review = {APPROVED_EARLIER}): "
                     f"{', '.join(earlier[:20])}{' ...' if len(earlier) > 20 else ''}; "
                     "review them again")
    wide = _wide(values, keys, feature_columns, notes)
    categorical = set(arms.dictionary.loc[arms.dictionary["unit"] == "category", "name"])
    numeric = [c for c in feature_columns
               if pd.api.types.is_float_dtype(arms.values[c]) and c not in categorical]
    wide = _add_deltas(wide, numeric)
    long = _long(values, keys, feature_columns)
    dictionary = build_dictionary(arms.dictionary, list(wide.columns))
    missingness = _missingness(wide, feature_columns)
    rejected = sum(1 for e in exclusions if e["reason"].startswith("rejected"))
    counts = {"manifest_samples": len(samples),
              "manifest_patients": len({s.patient_id for s in samples}),
              "samples_with_features": int(sum(s.sample_id in arms.values.index
                                               for s in samples)),
              "samples_rejected_qc": rejected,
              "slides_not_reviewed": len(unreviewed),
              "slides_approved_earlier_result": len(earlier),
              "samples_used": len(used),
              "patients_with_features": int(wide["patient_id"].nunique()),
              "patient_timepoints": len(wide)}
    return FeatureTable(wide, long, dictionary,
                        pd.DataFrame(exclusions, columns=list(EXCLUSION_COLUMNS)),
                        missingness, counts, notes)


def _wide(values: pd.DataFrame, keys: pd.DataFrame, features: list[str],
          notes: list[str]) -> pd.DataFrame:
    frame = pd.concat([keys[["patient_id", "timepoint", QC_REVIEW_COLUMN]], values], axis=1)
    rows = []
    order = {t: i for i, t in enumerate(TIMEPOINTS)}
    for (patient, timepoint), group in frame.groupby(["patient_id", "timepoint"], sort=False):
        row: dict[str, object] = {"patient_id": patient, "timepoint": timepoint,
                                  QC_REVIEW_COLUMN: _row_review(group[QC_REVIEW_COLUMN])}
        for column in features:
            present = group[column].dropna()
            if present.empty:
                row[column] = np.nan if pd.api.types.is_float_dtype(values[column]) else None
            elif len(present) == 1:
                row[column] = present.iloc[0]
            else:
                if pd.api.types.is_float_dtype(values[column]):
                    row[column] = float(present.mean())
                    how = "averaged"
                else:
                    row[column] = present.iloc[0]
                    how = "first value taken"
                notes.append(f"{patient} {timepoint}: {column} from {len(present)} samples "
                             f"({how})")
        rows.append(row)
    wide = pd.DataFrame(rows, columns=["patient_id", "timepoint", QC_REVIEW_COLUMN, *features])
    for column in features:
        if pd.api.types.is_float_dtype(values[column]):
            wide[column] = wide[column].astype(float)
    wide["_order"] = wide["timepoint"].map(order)
    wide = wide.sort_values(["patient_id", "_order"], kind="stable").drop(columns="_order")
    return wide.reset_index(drop=True)


def _row_review(states: pd.Series) -> str | None:
    """Review state of a patient x time point row from its slides' states."""
    present = [s for s in states if isinstance(s, str)]
    if not present:
        return None
    return APPROVED if all(s == APPROVED for s in present) else NOT_REVIEWED


def _add_deltas(wide: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
    baseline = wide[wide["timepoint"] == "baseline"].set_index("patient_id")[numeric]
    base_values = baseline.reindex(wide["patient_id"]).to_numpy(dtype=float)
    current = wide[numeric].to_numpy(dtype=float)
    delta = current - base_values
    delta[(wide["timepoint"] == "baseline").to_numpy()] = np.nan
    deltas = pd.DataFrame(delta, columns=[delta_name(c) for c in numeric], index=wide.index)
    return pd.concat([wide, deltas], axis=1)


def _long(values: pd.DataFrame, keys: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    frame = pd.concat([keys, values], axis=1)
    long = frame.melt(id_vars=["patient_id", "timepoint", "sample_id", "modality",
                               QC_REVIEW_COLUMN],
                      value_vars=features, var_name="feature", value_name="raw")
    long = long[long["raw"].notna()]
    numeric = pd.to_numeric(long["raw"], errors="coerce")
    level = long["raw"].astype(object).where(numeric.isna(), None)
    long = long.assign(value=numeric.astype(float), level=level)
    return long.drop(columns="raw").reset_index(drop=True)


def _missingness(wide: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    rows = []
    for timepoint, group in wide.groupby("timepoint", sort=False):
        for column in features:
            missing = int(group[column].isna().sum())
            rows.append({"feature": column, "timepoint": timepoint, "rows": len(group),
                         "missing": missing,
                         "pct_missing": round(100.0 * missing / max(len(group), 1), 2)})
    return pd.DataFrame(rows, columns=["feature", "timepoint", "rows", "missing",
                                       "pct_missing"])
