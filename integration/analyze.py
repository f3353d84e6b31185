"""Run the whole outcome analysis on a merged feature table and a clinical table.

``run_analysis`` writes ``OUT/analysis/`` (tables as CSV, figures as PNG, ``analysis.json``
with provenance) and ``OUT/report.html``. The command ``hccbio analyze`` is a thin wrapper.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines.statistics import multivariate_logrank_test

from hcccore.spreadsheet import spreadsheet_text
from integration.changes import change_table
from integration.clinical import read_clinical
from integration.config import AnalysisConfig
from integration.exports import SUMMARY_FILE, atomic_write, write_csv
from integration.frame import AnalysisData, Variable, build_analysis_data, outcome, read_features
from integration.mofa import MofaResult, fit_mofa
from integration.penalised import elastic_net_cox
from integration.plots import (
    forest_figure,
    km_figure,
    response_figure,
    save_figure,
    variance_heatmap,
)
from integration.response import on_study_at, response_labels, response_table
from integration.result import AnalysisResult
from integration.scores import derive_scores
from integration.subtypes import consensus_subtypes
from integration.survival import (
    clinical_model,
    cutpoint_table,
    design_covariates,
    multivariable_cox,
    univariate_cox,
)

ANALYSIS_DIR = "analysis"
REPORT_FILE = "report.html"
PROVENANCE_FILE = "analysis.json"
PACKAGES = ("hccbio", "lifelines", "scikit-survival", "scikit-learn", "statsmodels", "scipy",
            "numpy", "pandas", "matplotlib")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_analysis(features: str | Path, clinical: str | Path, out: str | Path, *,
                 config: AnalysisConfig | None = None, write_report: bool = True
                 ) -> AnalysisResult:
    """Survival, response, change and subtype analyses, their figures and the report.

    Parameters
    ----------
    features
        The merged ``features.csv`` (or ``.parquet``); ``data_dictionary.csv`` beside it
        supplies labels and units, ``integration.json`` and ``exclusions.csv`` the cohort flow.
    clinical
        The clinical table.
    out
        Output folder: ``analysis/`` and ``report.html`` are written there.
    config
        The ``analysis`` section (defaults when ``None``).
    write_report
        Also write ``report.html``.

    Returns
    -------
    AnalysisResult

    Raises
    ------
    integration.clinical.ClinicalError, integration.frame.AnalysisInputError
        Invalid inputs (the message names file, row and column).
    """
    config = config or AnalysisConfig()
    features, clinical, out = Path(features), Path(clinical), Path(out)
    started = time.time()
    timings: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        now = time.time()
        timings[step] = round(now - since, 3)
        return now

    feature_file = read_features(features)
    table = derive_scores(read_clinical(clinical), config=config.scores)
    data = build_analysis_data(feature_file.wide, table, dictionary=feature_file.dictionary)
    notes = [*feature_file.notes, *data.notes]
    design, design_notes = design_covariates(data, config.cox.covariates)
    notes.extend(design_notes)
    tick = lap("inputs", started)
    mofa = None
    if config.mofa.enabled:
        mofa = fit_mofa(data, config=config.mofa, seed=config.seed)
        if mofa.note:
            notes.append(f"MOFA+ {mofa.note}")
        else:  # the factors are candidate biomarkers like every baseline feature
            data = _with_factors(data, mofa)
        tick = lap("mofa", tick)
    endpoints = list(config.endpoints)
    landmark = config.landmark_months
    tables: dict[str, pd.DataFrame] = {}
    tables["univariate_cox"] = univariate_cox(data, endpoints=endpoints,
                                              landmark_months=landmark, config=config.cox)
    tables["clinical_model"] = clinical_model(data, design, endpoints=endpoints,
                                              landmark_months=landmark)
    tables["multivariable_cox"] = multivariable_cox(data, design, endpoints=endpoints,
                                                    landmark_months=landmark, config=config.cox)
    tables["cutpoints"] = cutpoint_table(data, endpoints=endpoints, landmark_months=landmark,
                                         config=config.cox)
    tick = lap("survival", tick)
    tables["response"] = response_table(data, config=config.response,
                                        landmark_months=landmark)
    tables["changes"] = change_table(data)
    tick = lap("response_changes", tick)
    if config.elastic_net.enabled:
        results = [elastic_net_cox(data, e, config=config.elastic_net, seed=config.seed)
                   for e in endpoints]
        tables["elastic_net"] = pd.DataFrame([r.summary() for r in results])
        for result in results:
            if result.coefficients is not None:
                tables[f"elastic_net_{result.endpoint}_coef"] = result.coefficients
        tick = lap("elastic_net", tick)
    subtypes = None
    if config.subtypes.enabled:
        subtypes = consensus_subtypes(data, config=config.subtypes, seed=config.seed)
        if subtypes.note:
            notes.append(f"subtypes {subtypes.note}")
        else:
            tables["subtypes"] = subtypes.labels.rename_axis("patient_id").reset_index()
            tables["subtype_selection"] = subtypes.selection
            tables["subtype_features"] = subtypes.features
            tables["subtype_logrank"] = _subtype_logrank(data, subtypes.labels, endpoints)
        tick = lap("subtypes", tick)
    if mofa is not None and not mofa.note:
        tables.update(_mofa_tables(data, mofa, endpoints,
                                   subtypes.labels if subtypes is not None and not subtypes.note
                                   else None))
    figures = _figures(data, tables, config, out / ANALYSIS_DIR,
                       subtypes.labels if subtypes is not None and not subtypes.note else None)
    if mofa is not None and not mofa.note:
        figures.update(_mofa_figures(data, mofa, tables, config, out / ANALYSIS_DIR))
    lap("figures", tick)
    folder = out / ANALYSIS_DIR
    for name, frame in tables.items():
        write_csv(frame, folder / f"{name}.csv")
    inputs = {str(p): _sha256(p) for p in (features, clinical) if p.is_file()}
    provenance = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions(),
                  "config": config.resolved(), "config_hash": config.hash(),
                  "inputs": inputs, "timings_s": timings,
                  "patients": int(len(table.data)), "variables": len(data.variables),
                  "synthetic_outcomes": config.synthetic_outcomes, "notes": notes}
    text = json.dumps(provenance, indent=2, default=str)
    atomic_write(folder / PROVENANCE_FILE, lambda tmp: tmp.write_text(text))
    result = AnalysisResult(tables, figures, data, config, provenance, notes)
    if write_report:
        from integration.report import write_report as _write_report

        _write_report(result, out / REPORT_FILE, cohort=_cohort(features.parent))
    return result


def _cohort(folder: Path) -> dict:
    summary = folder / SUMMARY_FILE
    cohort: dict = {}
    if summary.is_file():
        cohort = json.loads(summary.read_text())
    exclusions = folder / "exclusions.csv"
    if exclusions.is_file():
        cohort["exclusions"] = pd.read_csv(exclusions, dtype=str,
                                           keep_default_na=False).map(spreadsheet_text)
    return cohort


def _subtype_logrank(data: AnalysisData, labels: pd.Series, endpoints: list[str]
                     ) -> pd.DataFrame:
    rows = []
    for endpoint in endpoints:
        frame = outcome(data.clinical, endpoint).join(labels, how="inner")
        if frame["subtype"].nunique() < 2:
            continue
        test = multivariate_logrank_test(frame["time"], frame["subtype"], frame["event"])
        rows.append({"endpoint": endpoint, "n": len(frame), "events": int(frame["event"].sum()),
                     "subtypes": int(frame["subtype"].nunique()),
                     "chi2": float(test.test_statistic), "p": float(test.p_value)})
    return pd.DataFrame(rows, columns=["endpoint", "n", "events", "subtypes", "chi2", "p"])


def _with_factors(data: AnalysisData, mofa: MofaResult) -> AnalysisData:
    """The analysis frame with the MOFA+ factors as baseline variables (not in the blocks,
    so consensus clustering does not count them twice)."""
    x = data.x.join(mofa.factors.reindex(data.x.index))
    labels = mofa.dictionary().set_index("name")["label"]
    variables = data.variables + [Variable(name, name, "baseline", False, labels[name],
                                           "factor score", "mofa")
                                  for name in mofa.factors.columns]
    if not mofa.factors_on_treatment.empty:
        # on-treatment samples projected onto the baseline factors: landmark variables
        on = mofa.factors_on_treatment.reindex(data.x.index)
        x = x.join(on.add_suffix("@on_treatment"))
        variables += [Variable(f"{name}@on_treatment", name, "on_treatment", True,
                               labels[name] + ", on-treatment sample projected",
                               "factor score", "mofa") for name in on.columns]
    return AnalysisData(data.clinical, x, variables, data.blocks, data.notes)


def _mofa_tables(data: AnalysisData, mofa: MofaResult, endpoints: list[str],
                 consensus: pd.Series | None) -> dict[str, pd.DataFrame]:
    factors = mofa.factors.reset_index()
    factors.insert(1, "timepoint", "baseline")
    if not mofa.factors_on_treatment.empty:
        later = mofa.factors_on_treatment.reset_index()
        later.insert(1, "timepoint", "on_treatment")
        factors = pd.concat([factors, later], ignore_index=True)
    tables = {"mofa_factors": factors, "mofa_dictionary": mofa.dictionary(),
              "mofa_variance": mofa.variance, "mofa_loadings": mofa.loadings,
              "mofa_views": pd.DataFrame([{"view": v, "features": len(k),
                                           "patients": int(data.x[k].notna().any(axis=1).sum())}
                                          for v, k in mofa.views.items()])}
    if not mofa.subtypes.empty:
        tables["mofa_subtypes"] = mofa.subtypes.rename_axis("patient_id").reset_index()
        tables["mofa_subtype_stability"] = mofa.stability
        tables["mofa_subtype_logrank"] = _subtype_logrank(data, mofa.subtypes, endpoints)
        if consensus is not None:
            from sklearn.metrics import adjusted_rand_score

            common = mofa.subtypes.index.intersection(consensus.index)
            tables["mofa_vs_consensus"] = pd.crosstab(
                mofa.subtypes[common].rename("mofa_subtype"),
                consensus[common].rename("consensus")).reset_index().assign(
                adjusted_rand=adjusted_rand_score(mofa.subtypes[common], consensus[common]))
    return tables


def _mofa_figures(data: AnalysisData, mofa: MofaResult, tables: dict[str, pd.DataFrame],
                  config: AnalysisConfig, folder: Path) -> dict[str, tuple[str, bytes]]:
    tag = " [SYNTHETIC OUTCOMES]" if config.synthetic_outcomes else ""
    figures = {"mofa_variance": ("MOFA+: variance explained (%) per view and factor",
                                 save_figure(variance_heatmap(mofa.variance,
                                                              title="MOFA+ variance explained "
                                                                    "(%)"),
                                             folder / "mofa_variance.png"))}
    if mofa.subtypes.empty:
        return figures
    lr = tables["mofa_subtype_logrank"]
    for endpoint in config.endpoints:
        frame = outcome(data.clinical, endpoint).join(mofa.subtypes, how="inner")
        p = lr.loc[lr["endpoint"] == endpoint, "p"]
        fig = km_figure(frame["time"], frame["event"], frame["subtype"],
                        title=f"{endpoint.upper()} by MOFA+ factor subtype{tag}",
                        note=f"log-rank p = {float(p.iloc[0]):.3g}" if len(p) else "")
        figures[f"km_{endpoint}_mofa_subtypes"] = (
            f"Kaplan-Meier, {endpoint.upper()}, MOFA+ factor subtypes{tag}",
            save_figure(fig, folder / f"km_{endpoint}_mofa_subtypes.png"))
    return figures


def _figures(data: AnalysisData, tables: dict[str, pd.DataFrame], config: AnalysisConfig,
             folder: Path, subtypes: pd.Series | None) -> dict[str, tuple[str, bytes]]:
    figures: dict[str, tuple[str, bytes]] = {}
    tag = " [SYNTHETIC OUTCOMES]" if config.synthetic_outcomes else ""
    uni = tables["univariate_cox"]
    cuts = tables["cutpoints"].set_index(["endpoint", "feature", "timepoint"])
    keys = {(v.feature, v.timepoint): v for v in data.variables}
    for endpoint in config.endpoints:
        rows = uni[(uni["endpoint"] == endpoint) & uni["p"].notna()].sort_values("p")
        if rows.empty:
            continue
        per_sd = rows.assign(
            hr=rows["hr_per_sd"], ci_low=np.exp((rows["coef"] - 1.96 * rows["se"]) * rows["sd"]),
            ci_high=np.exp((rows["coef"] + 1.96 * rows["se"]) * rows["sd"]),
            label=rows["feature"] + " (" + rows["timepoint"] + ")")
        name = f"forest_{endpoint}"
        figures[name] = (f"{endpoint.upper()}: univariate hazard ratios per SD, top features "
                         f"by p{tag}",
                         save_figure(forest_figure(per_sd, title=f"{endpoint.upper()} "
                                                   f"univariate Cox (HR per SD){tag}"),
                                     folder / f"{name}.png"))
        for row in rows.head(config.cox.n_km_plots).itertuples():
            variable = keys[(row.feature, row.timepoint)]
            landmark = config.landmark_months if variable.landmark else None
            frame = outcome(data.clinical, endpoint, landmark=landmark).join(
                data.x[variable.key], how="inner").dropna()
            cut = cuts.loc[(endpoint, row.feature, row.timepoint)]
            x = frame[variable.key]
            splits = [("median", cut["median"], cut["median_logrank_p"], "log-rank p")]
            if pd.notna(cut["cutpoint"]):
                splits.append(("maxstat", cut["cutpoint"], cut["maxstat_p"],
                               "corrected p (Lausen-Schumacher)"))
            for kind, value, p, what in splits:
                if pd.isna(value):
                    continue
                groups = pd.Series(np.where(x > value, f"> {value:.3g}", f"<= {value:.3g}"),
                                   index=x.index)
                if kind == "median" and groups.nunique() < 2:
                    groups = pd.Series(np.where(x >= value, f">= {value:.3g}",
                                                f"< {value:.3g}"), index=x.index)
                xlabel = (f"months from landmark ({config.landmark_months:g} mo)"
                          if landmark is not None else "months")
                fig = km_figure(frame["time"], frame["event"], groups,
                                title=f"{endpoint.upper()} by {row.feature} ({row.timepoint}),"
                                      f" {kind} split{tag}",
                                xlabel=xlabel, note=f"{what} = {p:.3g}")
                name = f"km_{endpoint}_{row.feature}_{row.timepoint}_{kind}"
                figures[name] = (f"Kaplan-Meier, {endpoint.upper()}, {row.feature} "
                                 f"({row.timepoint}), {kind} split{tag}",
                                 save_figure(fig, folder / f"{name}.png"))
        if "crafity" in data.x.columns:
            frame = outcome(data.clinical, endpoint).join(data.x["crafity"]).dropna()
            if frame["crafity"].nunique() > 1:
                test = multivariate_logrank_test(frame["time"], frame["crafity"],
                                                 frame["event"])
                groups = "CRAFITY " + frame["crafity"].astype(int).astype(str)
                fig = km_figure(frame["time"], frame["event"], groups,
                                title=f"{endpoint.upper()} by CRAFITY{tag}",
                                note=f"log-rank p = {test.p_value:.3g}")
                figures[f"km_{endpoint}_crafity"] = (f"Kaplan-Meier, {endpoint.upper()}, "
                                                     f"CRAFITY score{tag}",
                                                     save_figure(fig, folder /
                                                                 f"km_{endpoint}_crafity.png"))
        if subtypes is not None:
            frame = outcome(data.clinical, endpoint).join(subtypes, how="inner")
            lr = tables["subtype_logrank"]
            p = lr.loc[lr["endpoint"] == endpoint, "p"]
            fig = km_figure(frame["time"], frame["event"], frame["subtype"],
                            title=f"{endpoint.upper()} by multi-omics subtype{tag}",
                            note=f"log-rank p = {float(p.iloc[0]):.3g}" if len(p) else "")
            figures[f"km_{endpoint}_subtypes"] = (f"Kaplan-Meier, {endpoint.upper()}, "
                                                  f"subtypes{tag}",
                                                  save_figure(fig, folder /
                                                              f"km_{endpoint}_subtypes.png"))
    response = tables["response"]
    orr = response_labels(data.clinical.data["best_response"], "orr")
    top = response[(response["endpoint"] == "orr") & response["mw_p"].notna()].sort_values(
        "mw_p").head(4)
    for row in top.itertuples():
        variable = keys[(row.feature, row.timepoint)]
        labels = (orr[on_study_at(data, config.landmark_months)] if variable.landmark
                  else orr)  # the patients the table's row was computed on
        fig = response_figure(data.x[variable.key], labels,
                              title=f"{row.feature} ({row.timepoint})\nAUC {row.auc:.2f}, "
                                    f"MW p {row.mw_p:.3g}{tag}")
        name = f"response_{row.feature}_{row.timepoint}"
        figures[name] = (f"Objective response by {row.feature} ({row.timepoint}){tag}",
                         save_figure(fig, folder / f"{name}.png"))
    return figures
