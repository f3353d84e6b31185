"""The run's QC table ``OUT/qc/qc_summary.csv`` and the static review page ``OUT/qc/index.html``.

One row per slide with a ``qc.json``: QC status, fired flags with their reasons, areas,
artefact fractions, stain and nuclei figures, and the pathologist's latest decision (from
``OUT/qc/review.csv``). ``review_decision`` is ``rejected`` for slides that downstream tables
must exclude (:func:`pathology.run.decisions.rejected_samples`); ``review_note`` says
"approved an earlier result" when the approval was given to a result the slide no longer
holds (computed again since, with another configuration).
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from urllib.parse import quote

from hcccore.atomic import write_text
from hcccore.spreadsheet import spreadsheet_safe
from pathology.io.folder import QC_DIR
from pathology.io.folder import QC_JSON as QC_FILE
from pathology.run.decisions import latest_decisions, valid_sample_id
from pathology.run.layout import RunFolder
from pathology.run.review_log import EARLIER_RESULT_NOTE, NOT_REVIEWED, result_digest

SUMMARY_FILE = "qc_summary.csv"
INDEX_FILE = "index.html"
SUMMARY_COLUMNS = (
    "sample_id", "qc_status", "flags", "reasons", "tissue_area_mm2", "excluded_area_mm2",
    "clean_tissue_area_mm2", "out_of_focus_fraction", "pen_fraction", "dark_fraction",
    "bright_fraction", "hematoxylin_od_p50", "counterstain_contrast",
    "counterstain_network_gain", "n_nuclei",
    "nuclei_density_per_mm2", "median_nuclear_area_um2", "review_decision", "reviewer",
    "review_time", "review_comment", "review_note",
)


def read_slide_qc(out: Path) -> dict[str, dict]:
    """Every slide's ``qc.json`` of a run folder, keyed by sample id (sorted)."""
    records = {}
    for path in sorted(RunFolder(out).slides.glob(f"*/{QC_DIR}/{QC_FILE}")):
        sample_id = path.parent.parent.name
        if valid_sample_id(sample_id):
            records[sample_id] = json.loads(path.read_text())
    return records


def summary_row(record: dict, decision=None, result: str | None = None) -> dict:
    """One ``qc_summary.csv`` row from a ``qc.json`` record, the latest decision and the
    slide's result digest now (:func:`pathology.run.review_log.result_digest`)."""
    metrics = record["metrics"]
    artefacts = metrics["artefacts"]
    nuclei = metrics["nuclei"]
    return {
        "sample_id": record["sample_id"], "qc_status": record["status"],
        "flags": ";".join(record["flags"]), "reasons": " | ".join(record["reasons"]),
        "tissue_area_mm2": metrics["tissue_area_mm2"],
        "excluded_area_mm2": metrics["excluded_area_mm2"],
        "clean_tissue_area_mm2": metrics["clean_tissue_area_mm2"],
        "out_of_focus_fraction": metrics["focus"]["out_of_focus_fraction"],
        **{f"{name}_fraction": artefacts[name]["fraction"] for name in ("pen", "dark",
                                                                          "bright")},
        "hematoxylin_od_p50": metrics["stain"].get("hematoxylin", {}).get("p50"),
        "counterstain_contrast": (metrics.get("counterstain") or {}).get("contrast"),
        "counterstain_network_gain": (metrics.get("counterstain") or {}).get("network_gain"),
        "n_nuclei": nuclei["n"], "nuclei_density_per_mm2": nuclei["density_per_mm2"],
        "median_nuclear_area_um2": nuclei["median_area_um2"],
        "review_decision": decision.decision if decision else NOT_REVIEWED,
        "reviewer": decision.reviewer if decision else "",
        "review_time": decision.time if decision else "",
        "review_comment": decision.comment if decision else "",
        "review_note": (EARLIER_RESULT_NOTE if decision is not None
                        and decision.approved_earlier_result(result) else ""),
    }


def write_qc_summary(out: Path) -> Path:
    """Write ``OUT/qc/qc_summary.csv`` and ``OUT/qc/index.html`` from every slide's QC.

    Parameters
    ----------
    out
        The run folder.

    Returns
    -------
    pathlib.Path
        The summary CSV.

    Raises
    ------
    pathology.run.review_log.ReviewError
        The review log breaks its contract or its hash chain does not verify.
    """
    out = Path(out)
    records = read_slide_qc(out)
    decisions = latest_decisions(out)
    run = RunFolder(out)
    rows = [summary_row(r, decisions.get(s), result_digest(run.slide(s).root))
            for s, r in records.items()]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else spreadsheet_safe(v)) for k, v in row.items()})
    target = out / QC_DIR / SUMMARY_FILE
    write_text(target, buffer.getvalue())
    write_index_html(out, records, rows)
    return target


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def write_index_html(out: Path, records: dict[str, dict], rows: list[dict]) -> Path:
    """The static review page: one section per slide, images linked relatively (no server).

    Every name and text is HTML-escaped; links are URL-quoted.
    """
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src 'self'; style-src 'unsafe-inline'\">",
        "<title>hccbio slide QC</title><style>",
        "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 6px;font-size:13px;text-align:left}"
        ".flagged{color:#D55E00;font-weight:bold}.pass{color:#009E73}"
        ".rejected{color:#D55E00;font-weight:bold}.approved{color:#0072B2}"
        "section{margin-top:2em;border-top:2px solid #ddd}img{max-width:420px;margin:4px;"
        "border:1px solid #ccc}",
        "</style></head><body><h1>Slide QC</h1>",
        f"<p>{len(rows)} slide(s). Decisions come from <code>qc/review.csv</code>; "
        "run <code>hccbio review OUT</code> to review in the browser.</p>",
        "<table><thead><tr><th>sample</th><th>QC</th><th>flags</th><th>tissue mm²</th>"
        "<th>excluded mm²</th><th>nuclei/mm²</th><th>review</th></tr></thead><tbody>",
    ]
    for row in rows:
        sid = row["sample_id"]
        parts.append(
            f"<tr><td><a href='#s-{esc(quote(sid))}'>{esc(sid)}</a></td>"
            f"<td class='{esc(row['qc_status'])}'>{esc(row['qc_status'])}</td>"
            f"<td>{esc(row['flags'].replace(';', ', ') or '–')}</td>"
            f"<td>{_fmt(row['tissue_area_mm2'])}</td><td>{_fmt(row['excluded_area_mm2'])}</td>"
            f"<td>{_fmt(row['nuclei_density_per_mm2'], 4)}</td>"
            f"<td class='{esc(row['review_decision'])}'>{esc(row['review_decision'])}"
            f"{' (' + esc(row['review_note']) + ')' if row['review_note'] else ''}</td>"
            "</tr>")
    parts.append("</tbody></table>")
    for row in rows:
        sid = row["sample_id"]
        record = records[sid]
        base = f"../slides/{quote(sid)}/{QC_DIR}/"
        files = record.get("files", {})
        images = [files.get(k) for k in ("tissue_artefacts", "detections", "regions",
                                          "density")]
        images += [c[k] for c in files.get("crops", []) for k in ("image", "overlay")]
        reasons = "".join(f"<li>{esc(r)}</li>" for r in record.get("reasons", []))
        gain = row.get("counterstain_network_gain")
        shown = (f"<p>Pale counterstain: the nucleus network saw this slide's hematoxylin "
                 f"x {gain:.2f} (segmentation.ihc_counterstain_reference); cells were "
                 "measured on its own pixels.</p>" if gain and gain > 1.0 else "")
        parts.append(
            f"<section id='s-{esc(quote(sid))}'><h2>{esc(sid)}</h2>"
            f"<p>QC <span class='{esc(record['status'])}'>{esc(record['status'])}</span>; "
            f"review <span class='{esc(row['review_decision'])}'>"
            f"{esc(row['review_decision'])}</span> {esc(row['reviewer'])} "
            f"{esc(row['review_time'])} {esc(row['review_comment'])}"
            f"{' (' + esc(row['review_note']) + ')' if row['review_note'] else ''}</p>"
            f"<ul>{reasons or '<li>no flag fired</li>'}</ul>{shown}"
            + "".join(f"<a href='{esc(base + quote(name))}'><img alt='{esc(name)}' "
                      f"src='{esc(base + quote(name))}'></a>" for name in images if name)
            + "</section>")
    parts.append("</body></html>\n")
    target = Path(out) / QC_DIR / INDEX_FILE
    write_text(target, "".join(parts))
    return target
