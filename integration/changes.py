"""Treatment changes: paired baseline vs on-treatment tests, and change vs response.

For every feature measured at both time points in at least ``min_pairs`` patients: Wilcoxon
signed-rank test of on-treatment against baseline, and a Mann-Whitney test of the change
(``d_`` column) between objective responders (CR+PR) and non-responders (SD+PD). q values are
Benjamini-Hochberg per test family.
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import mannwhitneyu, wilcoxon

from integration.dictionary import delta_name
from integration.fdr import bh_qvalues
from integration.frame import AnalysisData
from integration.response import response_labels

CHANGE_COLUMNS = ("feature", "label", "n_pairs", "median_baseline", "median_on_treatment",
                  "median_change", "wilcoxon_p", "q", "n_resp", "n_nonresp",
                  "median_change_resp", "median_change_nonresp", "resp_p", "resp_q", "note")


def change_table(data: AnalysisData, *, min_pairs: int = 5) -> pd.DataFrame:
    """Paired tests per feature with a baseline and an on-treatment value.

    Parameters
    ----------
    data
        The analysis frame.
    min_pairs
        Fewest patients with both values for a test.

    Returns
    -------
    pandas.DataFrame
        ``CHANGE_COLUMNS``, one row per feature.
    """
    orr = response_labels(data.clinical.data["best_response"], "orr")
    keys = {v.key for v in data.variables}
    rows: list[dict] = []
    for variable in data.variables:
        if variable.timepoint != "baseline":
            continue
        on_key = f"{variable.feature}@on_treatment"
        if on_key not in keys:
            continue
        pairs = pd.DataFrame({"base": data.x[variable.key], "on": data.x[on_key]}).dropna()
        row = {"feature": variable.feature, "label": variable.label, "n_pairs": len(pairs),
               "note": ""}
        rows.append(row)
        if len(pairs) < min_pairs:
            row["note"] = f"fewer than {min_pairs} pairs"
            continue
        change = pairs["on"] - pairs["base"]
        row.update(median_baseline=float(pairs["base"].median()),
                   median_on_treatment=float(pairs["on"].median()),
                   median_change=float(change.median()))
        if (change != 0).any():
            row["wilcoxon_p"] = float(wilcoxon(pairs["on"], pairs["base"]).pvalue)
        delta_key = delta_name(variable.feature)
        delta = data.x[delta_key] if delta_key in data.x.columns else change
        frame = pd.DataFrame({"d": delta, "y": orr}).dropna()
        resp, nonresp = frame.loc[frame["y"] == 1, "d"], frame.loc[frame["y"] == 0, "d"]
        row.update(n_resp=len(resp), n_nonresp=len(nonresp))
        if len(resp) >= 2 and len(nonresp) >= 2 and frame["d"].nunique() > 1:
            row.update(median_change_resp=float(resp.median()),
                       median_change_nonresp=float(nonresp.median()),
                       resp_p=float(mannwhitneyu(resp, nonresp).pvalue))
    table = pd.DataFrame(rows, columns=list(CHANGE_COLUMNS))
    table["q"] = bh_qvalues(table["wilcoxon_p"].to_numpy(dtype=float))
    table["resp_q"] = bh_qvalues(table["resp_p"].to_numpy(dtype=float))
    return table

