"""HTML of the review app: the slide list and the slide viewer. Every text is escaped.

No inline script: behaviour lives in ``static/review.js``, configured through ``data-``
attributes, so the Content-Security-Policy can forbid inline code.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

esc = html.escape


def _page(title: str, body: str, *, scripts: tuple[str, ...] = ()) -> str:
    tags = "".join(f"<script src='/static/{esc(s)}'></script>" for s in scripts)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><link rel='stylesheet' href='/static/review.css'>"
            f"</head><body>{body}{tags}</body></html>")


def _status(decision: str) -> str:
    return f"<span class='status {esc(decision)}' data-status>{esc(decision)}</span>"


def list_page(slides: list[dict]) -> str:
    """The slide list: id, QC status, fired flags with reasons, review status.

    Parameters
    ----------
    slides
        Dicts with ``sample_id``, ``qc_status``, ``flags``, ``reasons``, ``decision``,
        ``reviewer``, ``time``.
    """
    rows = []
    for s in slides:
        sid = s["sample_id"]
        reasons = "".join(f"<li>{esc(r)}</li>" for r in s["reasons"])
        rows.append(
            f"<tr data-sample='{esc(sid)}'><td><a href='/slides/{esc(quote(sid))}'>"
            f"{esc(sid)}</a></td><td class='qc {esc(s['qc_status'])}'>"
            f"{esc(s['qc_status'])}</td><td>{esc(', '.join(s['flags']) or '–')}"
            f"<ul class='reasons'>{reasons}</ul></td><td>{_status(s['decision'])}</td>"
            f"<td>{esc(s['reviewer'])}</td><td>{esc(s['time'])}</td></tr>")
    body = ("<h1>Slide QC review</h1>"
            f"<p>{len(slides)} slide(s). Approve or reject each slide in its viewer; "
            "rejected slides are excluded from downstream tables.</p>"
            "<table id='slides'><thead><tr><th>sample</th><th>QC</th><th>flags</th>"
            "<th>review</th><th>reviewer</th><th>time</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")
    return _page("hccbio slide QC", body)


def _channel_controls(channels: list[dict]) -> str:
    """Per-channel toggle, colour and contrast (display maximum) of a multichannel slide."""
    rows = []
    for c in channels:
        i, limit = int(c["index"]), float(c["limit"])
        checked = " checked" if c["shown"] else ""
        rows.append(
            f"<div class='channel' data-index='{i}'><label><input type='checkbox' "
            f"class='channel-toggle'{checked}> {esc(c['name'])}</label> "
            f"<input type='color' class='channel-color' value='{esc(c['color'])}' "
            f"aria-label='{esc(c['name'])} colour'> "
            f"<input type='range' class='channel-max' min='{limit / 500:.6g}' "
            f"max='{limit:.6g}' step='{limit / 500:.6g}' value='{float(c['max']):.6g}' "
            f"aria-label='{esc(c['name'])} display maximum' "
            f"title='full brightness at this intensity'></div>")
    return ("<fieldset id='channels'><legend>channels</legend>"
            "<p class='hint'>tick to show; the slider sets the intensity shown at full "
            "brightness (lower = brighter)</p>"
            "<button type='button' id='channels-reset'>reset</button>"
            f"<div class='channel-list'>{''.join(rows)}</div></fieldset>")


def viewer_page(slide: dict, *, layers: dict[str, dict], figures: list[str],
                reviewer: str, channels: list[dict] | None = None) -> str:
    """The viewer: deep zoom with overlay toggles, QC flags, figures and the sign-off form.

    Parameters
    ----------
    slide
        As one item of :func:`list_page`'s ``slides``.
    layers
        Overlay name -> ``{"url": ..., "width": world width}`` (1.0 = slide width).
    figures
        URLs of the QC figures and crops.
    reviewer
        Default reviewer name for the form.
    channels
        Display controls of a multichannel slide (``TileSource.channel_controls``): a toggle,
        a colour and a contrast slider per channel; none for RGB slides.
    """
    sid = slide["sample_id"]
    config = json.dumps({"dzi": f"/dzi/{quote(sid)}.dzi", "layers": layers,
                         "review": f"/api/review/{quote(sid)}",
                         "prefix": "/static/openseadragon/images/"})
    toggles = "".join(
        f"<label><input type='checkbox' class='layer-toggle' data-layer='{esc(name)}'> "
        f"{esc(name)}</label> " for name in layers)
    reasons = "".join(f"<li>{esc(r)}</li>" for r in slide["reasons"]) or "<li>no flag</li>"
    thumbs = "".join(f"<a href='{esc(url)}'><img class='figure' alt='' src='{esc(url)}'></a>"
                     for url in figures)
    body = (
        f"<p><a href='/'>&larr; all slides</a></p><h1>{esc(sid)}</h1>"
        f"<div id='viewer-config' data-config='{esc(config)}'></div>"
        f"<div class='layout'><div id='viewer'></div><div class='side'>"
        f"<p>QC: <span class='qc {esc(slide['qc_status'])}'>{esc(slide['qc_status'])}"
        f"</span></p><ul class='reasons'>{reasons}</ul>"
        f"<fieldset><legend>overlays</legend>{toggles or 'none'}</fieldset>"
        f"{_channel_controls(channels) if channels else ''}"
        f"<form id='review-form'><fieldset><legend>sign-off</legend>"
        f"<p>status: {_status(slide['decision'])}</p>"
        f"<label>reviewer <input id='reviewer' name='reviewer' required maxlength='100' "
        f"value='{esc(reviewer)}'></label><br>"
        "<label>comment<br><textarea id='comment' name='comment' rows='3' cols='32' "
        "maxlength='2000'></textarea></label><br>"
        "<button type='button' id='approve' data-decision='approved'>Approve</button> "
        "<button type='button' id='reject' data-decision='rejected'>Reject</button>"
        "<p id='review-message' role='status'></p></fieldset></form>"
        "</div></div>"
        f"<h2>QC figures</h2><div class='figures'>{thumbs}</div>")
    return _page(f"{sid} - hccbio review", body,
                 scripts=("openseadragon/openseadragon.min.js", "review.js"))
