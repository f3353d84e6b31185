"""HTML of the review app: the slide list and the slide viewer. Every text is escaped.

No inline script: behaviour lives in ``static/review.js``, configured through ``data-``
attributes, so the Content-Security-Policy can forbid inline code.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

esc = html.escape


def _page(title: str, body: str, *, scripts: tuple[str, ...] = (),
          user: dict | None = None) -> str:
    """A page; with a signed-in ``user`` (``{"name", "csrf"}``) a bar naming them with a
    sign-out button, and the CSRF token in a ``<meta>`` for the page's scripts."""
    scripts = ("session.js", *scripts)
    tags = "".join(f"<script src='/static/{esc(s)}'></script>" for s in scripts)
    meta = bar = ""
    if user is not None:
        meta = f"<meta name='csrf-token' content='{esc(user['csrf'])}'>"
        bar = (f"<div id='account'>signed in as <strong id='signed-in-user'>"
               f"{esc(user['name'])}</strong> <button type='button' id='sign-out'>sign out"
               "</button></div>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title>{meta}<link rel='stylesheet' "
            f"href='/static/review.css'></head><body>{bar}{body}{tags}</body></html>")


def _status(decision: str, note: str = "") -> str:
    flag = (f" <span class='earlier' data-note title='the slide was computed again (another "
            f"configuration) after this approval: review it again'>{esc(note)}</span>"
            if note else "")
    return f"<span class='status {esc(decision)}' data-status>{esc(decision)}</span>{flag}"


def list_page(slides: list[dict], *, user: dict | None = None,
              log: dict | None = None) -> str:
    """The slide list: id, QC status, fired flags with reasons, review status.

    Parameters
    ----------
    slides
        Dicts with ``sample_id``, ``qc_status``, ``flags``, ``reasons``, ``decision``,
        ``reviewer``, ``time`` and ``note`` ("approved an earlier result" or empty).
    user
        The signed-in reviewer (``{"name", "csrf"}``), None without accounts.
    log
        ``{"lines", "head"}``: the review log's number of decisions and its chain's last
        hash (shown so that it can be noted down and compared later).
    """
    rows = []
    for s in slides:
        sid = s["sample_id"]
        reasons = "".join(f"<li>{esc(r)}</li>" for r in s["reasons"])
        rows.append(
            f"<tr data-sample='{esc(sid)}'><td><a href='/slides/{esc(quote(sid))}'>"
            f"{esc(sid)}</a></td><td class='qc {esc(s['qc_status'])}'>"
            f"{esc(s['qc_status'])}</td><td>{esc(', '.join(s['flags']) or '–')}"
            f"<ul class='reasons'>{reasons}</ul></td>"
            f"<td>{_status(s['decision'], s.get('note', ''))}</td>"
            f"<td>{esc(s['reviewer'])}</td><td>{esc(s['time'])}</td></tr>")
    body = ("<h1>Slide QC review</h1>"
            f"<p>{len(slides)} slide(s). Approve or reject each slide in its viewer; "
            "rejected slides are excluded from downstream tables.</p>"
            "<table id='slides'><thead><tr><th>sample</th><th>QC</th><th>flags</th>"
            "<th>review</th><th>reviewer</th><th>time</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")
    if log and log.get("lines"):
        body += (f"<p class='chain'>review log: {int(log['lines'])} decision(s), hash chain "
                 f"verified; last hash <code id='chain-head'>{esc(log['head'])}</code></p>")
    return _page("hccbio slide QC", body, user=user)


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


def _history(history: list[dict]) -> str:
    """Every decision on the slide, oldest first (the latest stands)."""
    if not history:
        return "<p class='hint'>no decision yet</p>"
    rows = []
    for h in history:
        who = esc(h["reviewer"]) + (" <span class='hint'>(typed, no sign-in)</span>"
                                     if h.get("source") == "typed" else "")
        rows.append(f"<tr><td>{esc(h['time'])}</td><td><span class='status "
                    f"{esc(h['decision'])}'>{esc(h['decision'])}</span></td>"
                    f"<td>{who}</td><td>{esc(h['comment'])}</td>"
                    f"<td>{esc(h.get('result') or 'not recorded')}</td></tr>")
    return ("<table id='history'><thead><tr><th>time</th><th>decision</th><th>reviewer</th>"
            "<th>comment</th><th>result</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def viewer_page(slide: dict, *, layers: dict[str, dict], figures: list[str],
                reviewer: str, channels: list[dict] | None = None,
                user: dict | None = None, accounts: bool = False,
                history: list[dict] | None = None, result: str = "") -> str:
    """The viewer: deep zoom with overlay toggles, QC flags, figures, the sign-off form and
    the slide's review history.

    Parameters
    ----------
    slide
        As one item of :func:`list_page`'s ``slides``.
    layers
        Overlay name -> ``{"url": ..., "width": world width}`` (1.0 = slide width).
    figures
        URLs of the QC figures and crops.
    reviewer
        Default reviewer name for the form of an app without accounts.
    channels
        Display controls of a multichannel slide (``TileSource.channel_controls``): a toggle,
        a colour and a contrast slider per channel; none for RGB slides.
    user
        The signed-in reviewer (``{"name", "csrf"}``): the form names them instead of
        asking for a name, and sends the CSRF token.
    accounts
        Whether the app has accounts (sign-in required).
    history
        Every decision on the slide, oldest first: ``time, decision, reviewer, comment,
        source`` (``account`` / ``typed``) and ``result`` ("this result", "an earlier
        result" or empty when not recorded).
    result
        The slide's result digest shown (sent back with a sign-off: the server refuses it
        if the slide was computed again meanwhile).
    """
    sid = slide["sample_id"]
    config = json.dumps({"dzi": f"/dzi/{quote(sid)}.dzi", "layers": layers,
                         "review": f"/api/review/{quote(sid)}", "result": result,
                         "accounts": bool(accounts),
                         "prefix": "/static/openseadragon/images/"})
    toggles = "".join(
        f"<label><input type='checkbox' class='layer-toggle' data-layer='{esc(name)}'> "
        f"{esc(name)}</label> " for name in layers)
    reasons = "".join(f"<li>{esc(r)}</li>" for r in slide["reasons"]) or "<li>no flag</li>"
    thumbs = "".join(f"<a href='{esc(url)}'><img class='figure' alt='' src='{esc(url)}'></a>"
                     for url in figures)
    if user is not None:
        who = (f"<p>reviewer: <strong id='reviewer-account'>{esc(user['name'])}</strong> "
               "<span class='hint'>(signed in)</span></p>")
    else:
        who = (f"<label>reviewer <input id='reviewer' name='reviewer' required "
               f"maxlength='100' value='{esc(reviewer)}'></label><br>")
    body = (
        f"<p><a href='/'>&larr; all slides</a></p><h1>{esc(sid)}</h1>"
        f"<div id='viewer-config' data-config='{esc(config)}'></div>"
        f"<div class='layout'><div id='viewer'></div><div class='side'>"
        f"<p>QC: <span class='qc {esc(slide['qc_status'])}'>{esc(slide['qc_status'])}"
        f"</span></p><ul class='reasons'>{reasons}</ul>"
        f"<fieldset><legend>overlays</legend>{toggles or 'none'}</fieldset>"
        f"{_channel_controls(channels) if channels else ''}"
        f"<form id='review-form'><fieldset><legend>sign-off</legend>"
        f"<p>status: {_status(slide['decision'], slide.get('note', ''))}</p>"
        f"{who}"
        "<label>comment<br><textarea id='comment' name='comment' rows='3' cols='32' "
        "maxlength='2000'></textarea></label><br>"
        "<button type='button' id='approve' data-decision='approved'>Approve</button> "
        "<button type='button' id='reject' data-decision='rejected'>Reject</button>"
        "<p id='review-message' role='status'></p></fieldset></form>"
        "</div></div>"
        f"<h2>Review history</h2>{_history(history or [])}"
        f"<h2>QC figures</h2><div class='figures'>{thumbs}</div>")
    return _page(f"{sid} - hccbio review", body, user=user,
                 scripts=("openseadragon/openseadragon.min.js", "review.js"))


def login_page(target: str, *, accounts: bool, user: dict | None = None) -> str:
    """The sign-in page: user name and password, posted as JSON to ``/api/login``.

    Parameters
    ----------
    target
        The local path to open after sign-in (already checked to be one).
    accounts
        Whether the app has accounts; without, the page says sign-in is not needed.
    user
        The reviewer already signed in, if any.
    """
    if not accounts:
        body = ("<h1>Sign in</h1><p>This review app has no reviewer accounts: sign-in is "
                "not needed (it serves this machine only). Add accounts with <code>hccbio "
                "review users add NAME --out OUT</code>.</p><p><a href='/'>all slides</a></p>")
        return _page("hccbio review: sign in", body)
    already = (f"<p>Signed in as {esc(user['name'])}. <a href='{esc(target)}'>continue</a>"
               "</p>" if user else "")
    body = (
        "<h1>Slide QC review: sign in</h1>" + already +
        f"<form id='login-form' data-next='{esc(target)}'><fieldset><legend>reviewer "
        "account</legend><label>name<br><input id='login-user' name='user' required "
        "autocomplete='username' maxlength='100'></label><br><label>password<br>"
        "<input id='login-password' name='password' type='password' required "
        "autocomplete='current-password' maxlength='1024'></label><br>"
        "<button type='submit' id='login-submit'>Sign in</button>"
        "<p id='login-message' role='status'></p></fieldset></form>"
        "<p class='hint'>Each sign-off is recorded under the account signed in. Accounts "
        "are added with <code>hccbio review users add</code>.</p>")
    return _page("hccbio review: sign in", body, scripts=("login.js",), user=user)


def error_page(title: str, message: str) -> str:
    """A page that says what is wrong and nothing else (e.g. a review log that does not
    verify)."""
    return _page(title, f"<h1>{esc(title)}</h1><p class='error'>{esc(message)}</p>")
