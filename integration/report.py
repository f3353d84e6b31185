"""The study report: one self-contained HTML file (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from integration.exports import atomic_write
from integration.result import AnalysisResult

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;font-size:14px}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0} td,th{border:1px solid #ddd;
padding:2px 6px;text-align:right} th{background:#f3f3f3} td:first-child{text-align:left}
.banner{background:#b00020;color:#fff;padding:.6em 1em;font-weight:bold;margin:1em 0}
figure{display:inline-block;margin:.5em;vertical-align:top} figcaption{font-size:11px;
max-width:640px} pre{background:#f7f7f7;padding:.6em;font-size:11px;overflow-x:auto}
.note{color:#555;font-size:12px}
"""


def _table(frame: pd.DataFrame | None, columns: list[str] | None = None, rows: int = 15) -> str:
    if frame is None or frame.empty:
        return "<p class='note'>none</p>"
    shown = frame[[c for c in (columns or list(frame.columns)) if c in frame.columns]].head(rows)
    return shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="",
                         border=0, escape=True)


def _figure(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def methods_text(result: AnalysisResult) -> str:
    """The methods section, written from the resolved config."""
    c = result.config
    covariates = ", ".join(c.cox.covariates) or "none"
    parts = [
        f"Endpoints: {', '.join(e.upper() for e in c.endpoints)} (months from treatment start),"
        " objective response (CR+PR vs SD+PD) and disease control (CR+PR+SD vs PD), RECIST "
        "1.1 best response; NE excluded from response analyses.",
        "Candidate biomarkers: every numeric feature of the merged table at baseline, on "
        "treatment and as change from baseline, and the derived clinical scores (CRAFITY: CRP "
        f">= {c.scores.crafity_crp_mg_dl:g} mg/dL and AFP >= {c.scores.crafity_afp_ng_ml:g} "
        f"ng/mL; AFP response at week 6: fall >= {c.scores.afp_response_fall_pct:g}%, "
        f"non-progression: rise <= {c.scores.afp_progression_rise_pct:g}%, for baseline AFP >="
        f" {c.scores.afp_min_baseline_ng_ml:g} ng/mL; ALBI grade; NLR).",
        f"On-treatment variables were analysed with a landmark at {c.landmark_months:g} "
        "months: only patients event-free and followed at the landmark, with time counted "
        "from it (to avoid immortal-time bias); in the response analyses, only patients "
        "progression-free and followed at the landmark.",
        "Univariate Cox proportional-hazards models (lifelines, Efron ties) per variable: "
        "hazard ratio per unit as given and per standard deviation, Wald 95% CI and p, "
        "Benjamini-Hochberg q per endpoint over all variables; Harrell's C; proportional "
        f"hazards by the Schoenfeld-residual test ({c.cox.ph_test_transform} time transform). "
        f"Variables with fewer than {c.cox.min_patients} patients or {c.cox.min_events} events "
        "were not modelled.",
        f"Clinical model: {covariates} (categorical covariates as indicators against the most"
        " frequent level; complete cases). Each variable was added to it on the same patients:"
        " adjusted HR, change in Harrell's C, and a likelihood-ratio test (1 df).",
        "Kaplan-Meier curves with numbers at risk for median splits (log-rank test) and for "
        "the cut-point of the maximally selected log-rank statistic (candidate cut-points "
        f"leaving {c.cox.minprop:g}-{c.cox.maxprop:g} of the patients in the low group), with "
        "the Lausen-Schumacher (1992) p value corrected for the search, as R's maxstat.",
        f"Penalised Cox model (scikit-survival Coxnet, elastic net l1_ratio "
        f"{c.elastic_net.l1_ratio:g}, {c.elastic_net.n_alphas} penalties) over baseline "
        f"features missing in at most {c.elastic_net.max_missing_fraction:.0%} of patients, "
        f"median-imputed and standardised within each of {c.elastic_net.folds} stratified "
        "folds; penalty chosen by mean out-of-fold Harrell's C (cv_c_index, optimistic: the "
        "same folds chose the penalty). nested_c_index is the honest estimate: nested "
        "cross-validation, the penalty tuned by an inner cross-validation inside each outer "
        "training set, scored on outer test patients that never saw the tuning; "
        "apparent_c_index is the final model on its own patients. "
        f"{c.elastic_net.bootstrap} bootstrap resamples of the pooled out-of-fold C for the "
        "95% intervals.",
        "Response: Mann-Whitney U test, logistic-regression odds ratio (statsmodels, Wald CI)"
        " and ROC AUC with DeLong 95% CI; BH q per endpoint over the Mann-Whitney p values.",
        "Treatment changes: Wilcoxon signed-rank test of on-treatment vs baseline per feature;"
        " Mann-Whitney test of the change between objective responders and non-responders.",
        f"Subtypes: consensus clustering (k-means on {c.subtypes.resamples} subsamples of "
        f"80% of patients, k = {c.subtypes.k_min}-{c.subtypes.k_max}, k by the smallest PAC) "
        "of z-scored baseline features with equal weight per modality block; KM and log-rank"
        " by subtype; defining features by Kruskal-Wallis with BH q.",
        f"MOFA+ (mofapy2; Argelaguet et al., Genome Biol 2020) on the baseline views "
        "(pathology, blood, tumour RNA"
        f"{', clinical scores' if c.mofa.include_clinical else ''}; patients missing a view "
        f"kept; features missing in more than {c.mofa.max_missing_fraction:.0%} of a view's "
        f"patients left out; views scaled to unit variance), {c.mofa.factors} factors at the "
        f"start, spike-and-slab and ARD priors, factors explaining < "
        f"{c.mofa.min_variance_pct:g}% of every view dropped; the factors are analysed as "
        f"baseline features (mofa_f*); on-treatment samples are projected onto them "
        f"(posterior mean given the baseline weights) and analysed with the landmark. "
        f"Factor subtypes: k-means on the standardised factors, "
        f"k = {c.mofa.k_min}-{c.mofa.k_max} chosen by stability (mean adjusted Rand index "
        f"over {c.mofa.resamples} subsamples of 80% of patients).",
        f"Random seed {c.seed}; q < {c.fdr:g} is called significant.",
    ]
    return "".join(f"<p>{html.escape(p)}</p>" for p in parts)


def _is_mofa_figure(name: str) -> bool:
    return name == "mofa_variance" or name.endswith("_mofa_subtypes")


def _cohort_section(result: AnalysisResult, cohort: dict) -> str:
    counts = dict(cohort.get("counts", {}))
    clinical = result.data.clinical.data
    counts["clinical_patients"] = len(clinical)
    with_features = result.data.x.drop(
        columns=[v.key for v in result.data.variables if v.modality == "clinical"],
        errors="ignore").notna().any(axis=1)
    counts["analysed_patients_with_features"] = int(with_features.sum())
    for endpoint in result.config.endpoints:
        counts[f"{endpoint}_events"] = int(clinical[f"{endpoint}_event"].sum())
        counts[f"{endpoint}_at_landmark"] = int(
            (clinical[f"{endpoint}_time"] > result.config.landmark_months).sum())
    best = clinical["best_response"].value_counts()
    counts.update({f"response_{k}": int(v) for k, v in best.items()})
    flow = pd.DataFrame({"step": list(counts), "count": list(counts.values())})
    exclusions = cohort.get("exclusions")
    text = "<h2>Cohort</h2>" + _table(flow, rows=100)
    text += "<h3>Samples excluded (QC review and missing features)</h3>"
    text += _table(exclusions, rows=200) if exclusions is not None else (
        "<p class='note'>no integration summary beside the feature table</p>")
    for note in cohort.get("notes", [])[:20]:
        text += f"<p class='note'>{html.escape(note)}</p>"
    return text


def render_report(result: AnalysisResult, *, cohort: dict | None = None) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    result
        From :func:`integration.analyze.run_analysis`.
    cohort
        ``counts``, ``notes`` (integration.json) and ``exclusions`` (table), when known.
    """
    cohort = cohort or {}
    t = result.tables
    fdr = result.config.fdr
    synthetic = result.config.synthetic_outcomes
    banner = ("<div class='banner'>SYNTHETIC CLINICAL OUTCOMES (demo): no number in this "
              "report is evidence about any patient or biomarker.</div>" if synthetic else "")
    body = [f"<h1>hccbio study report</h1>{banner}",
            f"<p class='note'>config hash {result.provenance['config_hash']}, created "
            f"{result.provenance['created']}</p>", _cohort_section(result, cohort)]
    uni = t["univariate_cox"]
    body.append("<h2>Top biomarkers</h2>")
    for endpoint in result.config.endpoints:
        rows = uni[uni["endpoint"] == endpoint].sort_values("p", na_position="last")
        significant = int((rows["q"] < fdr).sum())
        body.append(f"<h3>{endpoint.upper()}: univariate Cox ({significant} with q &lt; {fdr:g})"
                    "</h3>")
        body.append(_table(rows, ["feature", "timepoint", "label", "n", "events", "hr",
                                  "ci_low", "ci_high", "hr_per_sd", "p", "q", "c_index",
                                  "ph_p"]))
        multi = t["multivariable_cox"]
        multi = multi[multi["endpoint"] == endpoint].sort_values("lr_p", na_position="last")
        body.append(f"<h3>{endpoint.upper()}: added value over the clinical model</h3>")
        body.append(_table(multi, ["feature", "timepoint", "n", "events", "hr", "ci_low",
                                   "ci_high", "p", "q", "c_clinical", "c_full", "delta_c",
                                   "lr_p", "ph_p", "note"]))
        cuts = t["cutpoints"]
        cuts = cuts[cuts["endpoint"] == endpoint].sort_values("maxstat_p", na_position="last")
        body.append(f"<h3>{endpoint.upper()}: cut-points</h3>")
        body.append(_table(cuts, ["feature", "timepoint", "n", "median", "median_logrank_p",
                                  "cutpoint", "maxstat", "maxstat_p", "maxstat_q", "n_low",
                                  "n_high"], rows=10))
    body.append("<h3>Clinical model</h3>" + _table(t.get("clinical_model"), rows=40))
    body.append("<h2>Figures</h2>")
    body.extend(_figure(caption, png) for name, (caption, png) in result.figures.items()
                if not _is_mofa_figure(name))
    response = t["response"].sort_values("mw_p", na_position="last")
    body.append("<h2>Response</h2>")
    body.append(_table(response, ["endpoint", "feature", "timepoint", "n_pos", "n_neg",
                                  "median_pos", "median_neg", "mw_p", "q", "or", "or_ci_low",
                                  "or_ci_high", "auc", "auc_ci_low", "auc_ci_high"]))
    body.append("<h2>Treatment changes</h2>")
    body.append(_table(t["changes"].sort_values("wilcoxon_p", na_position="last"),
                       ["feature", "n_pairs", "median_baseline", "median_on_treatment",
                        "median_change", "wilcoxon_p", "q", "n_resp", "n_nonresp", "resp_p",
                        "resp_q", "note"]))
    body.append("<h2>Penalised Cox model (elastic net)</h2>" + _table(t.get("elastic_net")))
    for endpoint in result.config.endpoints:
        coef = t.get(f"elastic_net_{endpoint}_coef")
        if coef is not None:
            body.append(f"<h3>{endpoint.upper()}: selected features</h3>" + _table(coef))
    body.append("<h2>Subtypes</h2>")
    if "subtypes" in t:
        sizes = t["subtypes"]["subtype"].value_counts().rename_axis("subtype").reset_index()
        body.append(_table(sizes) + _table(t["subtype_selection"]) +
                    _table(t["subtype_logrank"]) + "<h3>Defining features</h3>" +
                    _table(t["subtype_features"]))
    else:
        body.append("<p class='note'>not done (see notes)</p>")
    body.append("<h2>MOFA+ factors and factor subtypes</h2>")
    if "mofa_variance" in t:
        body.append(_table(t["mofa_views"]) + "<h3>Variance explained (%)</h3>" +
                    _table(t["mofa_variance"].pivot(index="view", columns="factor",
                                                    values="r2_pct").round(1).reset_index()))
        body.extend(_figure(caption, png) for name, (caption, png) in result.figures.items()
                    if _is_mofa_figure(name))
        top = t["mofa_loadings"]
        body.append("<h3>Top loadings (5 per factor and view)</h3>" +
                    _table(top[top["rank"] <= 5]))
        if "mofa_subtypes" in t:
            sizes = t["mofa_subtypes"]["subtype"].value_counts().rename_axis(
                "subtype").reset_index()
            body.append("<h3>Subtypes from the factors</h3>" + _table(sizes) +
                        _table(t["mofa_subtype_stability"]) + _table(t["mofa_subtype_logrank"]))
        if "mofa_vs_consensus" in t:
            body.append("<h3>Compared with the consensus k-means subtypes</h3>" +
                        _table(t["mofa_vs_consensus"]))
    else:
        body.append("<p class='note'>not done (see notes)</p>")
    body.append("<h2>Methods</h2>" + methods_text(result))
    body.append("<h2>Notes</h2>" + "".join(f"<p class='note'>{html.escape(n)}</p>"
                                           for n in result.notes))
    provenance = json.dumps(result.provenance, indent=2, default=str)
    body.append(f"<h2>Provenance</h2><pre>{html.escape(provenance)}</pre>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>hccbio study report"
            f"</title><style>{STYLE}</style></head><body>{''.join(body)}{banner}</body></html>")


def write_report(result: AnalysisResult, path: str | Path, *, cohort: dict | None = None
                 ) -> Path:
    """Write :func:`render_report` to ``path`` atomically and return the path."""
    path = Path(path)
    text = render_report(result, cohort=cohort)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
