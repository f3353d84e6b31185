"""Established clinical scores, derived when their inputs are in the clinical table.

A new biomarker has to beat these, so they enter the clinical model and the report:

- **CRAFITY** (Scheiner et al., J Hepatol 2022): one point each for CRP >= 1 mg/dL and
  AFP >= 100 ng/mL at baseline (0, 1 or 2).
- **AFP response at week 6** (IMbrave150, Zhu et al. 2022): change of AFP from baseline in
  percent; response = fall of at least 75%; non-progression = rise of at most 10%. Defined only
  for baseline AFP >= 20 ng/mL. This is an *on-treatment* variable: analysed with a landmark.
- **ALBI** (Johnson et al., J Clin Oncol 2015): ``0.66 log10(bilirubin umol/L) - 0.085 albumin
  g/L``; grade 1 <= -2.60 < grade 2 <= -1.39 < grade 3.
- **NLR**: neutrophils / lymphocytes (baseline).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from integration.clinical import ClinicalTable, ColumnSpec
from integration.config import ScoresConfig

ALBI_GRADE_CUTS = (-2.60, -1.39)
#: Derived or clinical columns measured on treatment: analysed with the landmark only.
ON_TREATMENT_CLINICAL = frozenset({"afp_w6", "afp_w6_chg_pct", "afp_resp", "afp_nonprog"})


def derive_scores(clinical: ClinicalTable, *, config: ScoresConfig | None = None
                  ) -> ClinicalTable:
    """Add CRAFITY, week-6 AFP change and response, ALBI and NLR where their inputs exist.

    Parameters
    ----------
    clinical
        A validated clinical table.
    config
        Cut-offs (defaults: the published ones).

    Returns
    -------
    ClinicalTable
        A copy with the derived columns added (missing where an input is missing). Columns
        already present under a derived name are kept as given.

    Examples
    --------
    >>> import pandas as pd
    >>> from integration.clinical import validate_clinical
    >>> raw = pd.DataFrame({"patient_id": ["P1"], "os_time": ["10"], "os_event": ["1"],
    ...                     "pfs_time": ["5"], "pfs_event": ["1"], "best_response": ["PR"],
    ...                     "crp": ["2.0"], "afp": ["50"]})
    >>> int(derive_scores(validate_clinical(raw)).data.loc["P1", "crafity"])
    1
    """
    config = config or ScoresConfig()
    data = clinical.data.copy()
    specs = dict(clinical.specs)
    keys = "analysis.scores"

    def add(name: str, values: pd.Series, spec: ColumnSpec) -> None:
        if name in data.columns:
            return
        data[name] = values
        specs[name] = spec

    if {"crp", "afp"} <= set(data.columns):
        crp_high = data["crp"] >= config.crafity_crp_mg_dl
        afp_high = data["afp"] >= config.crafity_afp_ng_ml
        score = crp_high.astype(float) + afp_high.astype(float)
        score[data["crp"].isna() | data["afp"].isna()] = np.nan
        add("crafity", score.astype("Int64"),
            ColumnSpec("integer", f"CRAFITY score: CRP >= {config.crafity_crp_mg_dl:g} mg/dL "
                       f"and AFP >= {config.crafity_afp_ng_ml:g} ng/mL, one point each",
                       "0-2", 0, 2))
    if {"afp", "afp_w6"} <= set(data.columns):
        eligible = data["afp"] >= config.afp_min_baseline_ng_ml
        change = (data["afp_w6"] - data["afp"]) / data["afp"] * 100.0
        change = change.where(eligible & data["afp_w6"].notna())
        add("afp_w6_chg_pct", change,
            ColumnSpec("number", "AFP change from baseline at week 6 (baseline AFP >= "
                       f"{config.afp_min_baseline_ng_ml:g} ng/mL)", "%"))
        response = (change <= -config.afp_response_fall_pct).astype(float).where(change.notna())
        add("afp_resp", response.astype("Int64"),
            ColumnSpec("binary", f"AFP response at week 6 (fall >= "
                       f"{config.afp_response_fall_pct:g}%)", "0/1"))
        nonprog = (change <= config.afp_progression_rise_pct).astype(float).where(
            change.notna())
        add("afp_nonprog", nonprog.astype("Int64"),
            ColumnSpec("binary", f"AFP non-progression at week 6 (rise <= "
                       f"{config.afp_progression_rise_pct:g}%)", "0/1"))
    if {"albumin", "bilirubin"} <= set(data.columns):
        bilirubin = data["bilirubin"].where(data["bilirubin"] > 0)
        albi = 0.66 * np.log10(bilirubin) - 0.085 * data["albumin"]
        add("albi", albi, ColumnSpec("number", "ALBI score (0.66 log10 bilirubin umol/L - "
                                     "0.085 albumin g/L)", "score"))
        grade = pd.Series(np.where(albi <= ALBI_GRADE_CUTS[0], 1,
                                   np.where(albi <= ALBI_GRADE_CUTS[1], 2, 3)),
                          index=data.index).astype(float).where(albi.notna())
        add("albi_grade", grade.astype("Int64"),
            ColumnSpec("integer", "ALBI grade (1 <= -2.60 < 2 <= -1.39 < 3)", "1-3", 1, 3))
    if {"neutrophils", "lymphocytes"} <= set(data.columns):
        lymph = data["lymphocytes"].where(data["lymphocytes"] > 0)
        add("nlr", data["neutrophils"] / lymph,
            ColumnSpec("number", "Neutrophil-to-lymphocyte ratio at baseline", "ratio"))
    derived = dict(clinical.derived)
    derived.update({name: keys for name in specs if name not in clinical.specs})
    return ClinicalTable(data, specs, clinical.path, derived)
