"""Review on a lab network (issue 32): reviewer accounts, sign-in, CSRF, rate limits and
session expiry, the hash-chained review log (tampering refused, old logs kept) and sign-offs
tied to the result they approved; through the CLI, the real server and a real browser."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from integration.cli import app as cli_app
from pathology.config import PathologyConfig, SpatialSection, TilingSection
from pathology.review.accounts import add_account, read_accounts
from pathology.review.app import create_app
from pathology.review.server import BindError, check_bind
from pathology.run.decisions import append_decision, read_decisions
from pathology.run.finish import post_process_slide
from pathology.run.pipeline import SlideJob, process_slide
from pathology.run.qc_summary import write_qc_summary
from pathology.run.review_log import (
    ACCOUNT,
    APPROVED_EARLIER,
    EARLIER_RESULT_NOTE,
    GENESIS,
    LOG_COLUMNS,
    TYPED,
    ReviewChainError,
    chain_hash,
    result_digest,
)

PASSWORD = "correct horse battery"
MANIFEST = """patient_id,timepoint,sample_id,modality,stain,path,mpp
P1,baseline,p1_he,he,HE,p1.svs,0.5
P2,baseline,p2_he,he,HE,p2.svs,0.5
P3,baseline,p3_he,he,HE,p3.svs,0.5
"""


def _run_folder(root: Path) -> Path:
    """A run folder with three slides' features (no pixels: the API needs none) and the
    tables ``hccbio integrate`` reads."""
    (root / "samples.csv").write_text(MANIFEST)
    (root / "pathology_features.csv").write_text(
        "sample_id,modality,stain,he_lym_density\np1_he,he,HE,100\np2_he,he,HE,200\n"
        "p3_he,he,HE,300\n")
    (root / "pathology_features_dictionary.csv").write_text(
        "name,label,unit,modality,method,config_keys,source\n"
        "he_lym_density,he_lym_density,cells/mm^2,,,,\n")
    for sample in ("p1_he", "p2_he", "p3_he"):
        folder = root / "slides" / sample
        folder.mkdir(parents=True)
        (folder / "features.json").write_text(json.dumps(
            {"sample_id": sample, "modality": "he", "config_sha256": "a" * 64,
             "seconds": 1.5, "slide": {"path": str(root / f"{sample}.svs")}}))
    return root


def _accounts(out: Path, *names: str) -> Path:
    """An accounts file with ``names`` (password :data:`PASSWORD`; a cheap scrypt cost so
    that the tests sign in quickly: the cost is stored with each hash)."""
    path = out / "qc" / "reviewers.json"
    for name in names:
        add_account(path, name, PASSWORD, scrypt_n=2**12)
    return path


def _sign_in(client: httpx.Client, user: str = "Dr A", password: str = PASSWORD
             ) -> httpx.Response:
    return client.post("/api/login", json={"user": user, "password": password})


def _log_bytes(out: Path) -> bytes:
    path = out / "qc" / "review.csv"
    return path.read_bytes() if path.exists() else b""


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "qc" / "review.csv").open(newline="")))


# -- accounts through the CLI ----------------------------------------------------------------


def test_users_add_list_remove_through_the_cli(tmp_path):
    out = _run_folder(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["review", "users", "add", "Dr A", "--out", str(out),
                                     "--password-stdin"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    path = out / "qc" / "reviewers.json"
    assert path.stat().st_mode & 0o777 == 0o600  # readable by its owner only
    text = path.read_text()
    assert PASSWORD not in text and "scrypt" in text  # a hash, never the password
    entry = read_accounts(path)["Dr A"]["scrypt"]
    assert entry["n"] >= 2**17 and len(entry["salt"]) > 0  # OWASP's scrypt cost by default

    # the two passwords must agree; nothing is written otherwise
    result = runner.invoke(cli_app, ["review", "users", "add", "Dr B", "--out", str(out),
                                     "--password-stdin"], input=f"{PASSWORD}\nsomething else\n")
    assert result.exit_code == 2 and "differ" in result.output
    result = runner.invoke(cli_app, ["review", "users", "add", "Dr B", "--out", str(out),
                                     "--password-stdin"], input="short\nshort\n")
    assert result.exit_code == 2 and "at least 8" in result.output
    result = runner.invoke(cli_app, ["review", "users", "add", "dr a", "--out", str(out),
                                     "--password-stdin"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 2 and "exists" in result.output  # names differ in case only
    result = runner.invoke(cli_app, ["review", "users", "add", "=cmd()", "--out", str(out),
                                     "--password-stdin"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 2 and "account name" in result.output

    # a separate accounts file
    shared = tmp_path / "lab" / "reviewers.json"
    result = runner.invoke(cli_app, ["review", "users", "add", "Dr C", "--users", str(shared),
                                     "--password-stdin"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output

    listed = runner.invoke(cli_app, ["review", "users", "list", "--out", str(out)])
    assert listed.exit_code == 0 and listed.output.split("\t")[0] == "Dr A"
    assert "Dr C" not in listed.output and "hash" not in listed.output
    assert "Dr C" in runner.invoke(cli_app, ["review", "users", "list", "--users",
                                             str(shared)]).output
    result = runner.invoke(cli_app, ["review", "users", "remove", "Dr X", "--out", str(out)])
    assert result.exit_code == 2 and "Dr A" in result.output  # names the accounts there
    result = runner.invoke(cli_app, ["review", "users", "remove", "Dr A", "--out", str(out)])
    assert result.exit_code == 0 and read_accounts(path) == {}


def test_allow_remote_refuses_to_start_without_accounts(tmp_path):
    out = _run_folder(tmp_path)
    result = CliRunner().invoke(cli_app, ["review", str(out), "--host", "0.0.0.0",
                                          "--allow-remote", "--port", "1"])
    assert result.exit_code == 2 and "without reviewer accounts" in result.output
    assert "hccbio review users add" in result.output and "review app on" not in result.output
    with pytest.raises(BindError, match="without reviewer accounts"):
        check_bind("0.0.0.0", allow_remote=True, accounts=out / "qc" / "reviewers.json")
    check_bind("0.0.0.0", allow_remote=True, accounts=_accounts(out, "Dr A"))
    check_bind("127.0.0.1", allow_remote=False)  # loopback without accounts: as before


# -- sign-in over HTTP, through the real server ---------------------------------------------


def test_sign_off_needs_a_session_and_its_csrf_token(tmp_path, review_server):
    out = _run_folder(tmp_path)
    _accounts(out, "Dr A")
    with review_server(out) as port:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as anonymous:
            for path in ("/api/slides", "/dzi/p1_he.dzi", "/qc/p1_he/x.png",
                         "/dzi/p1_he_files/0/0_0.jpeg"):
                assert anonymous.get(path).status_code == 401, path
            page = anonymous.get("/slides/p1_he")
            assert page.status_code == 303
            assert page.headers["location"] == "/login?next=%2Fslides%2Fp1_he"
            assert anonymous.get("/login").status_code == 200
            reply = anonymous.post("/api/review/p1_he", json={"decision": "approved",
                                                              "reviewer": "Mallory"})
            assert reply.status_code == 401
        assert _log_bytes(out) == b""

        with httpx.Client(base_url=base) as client:
            assert _sign_in(client, password="wrong password").status_code == 401
            assert _sign_in(client, user="Nobody").status_code == 401
            assert client.post("/api/login", json={"user": "Dr A", "password": None}
                               ).status_code == 400
            reply = _sign_in(client)
            assert reply.status_code == 200, reply.text
            token = reply.json()["csrf_token"]
            cookie = reply.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
            assert "secure" not in cookie  # plain http on loopback: a Secure cookie is lost
            assert client.get("/api/slides").status_code == 200

            body = {"decision": "approved", "reviewer": "Mallory", "comment": "ok"}
            assert client.post("/api/review/p1_he", json=body).status_code == 403
            assert client.post("/api/review/p1_he", json=body,
                               headers={"X-CSRF-Token": "not-the-token"}).status_code == 403
            assert _log_bytes(out) == b""
            reply = client.post("/api/review/p1_he", json=body,
                                headers={"X-CSRF-Token": token})
            assert reply.status_code == 200, reply.text
            assert reply.json()["reviewer"] == "Dr A"  # the account, not the body's name
            # JSON null is refused, never stored as "None"
            reply = client.post("/api/review/p2_he", json={"decision": "rejected",
                                                           "comment": None},
                                headers={"X-CSRF-Token": token})
            assert reply.status_code == 400 and "null" in reply.json()["error"]

            assert client.post("/api/logout").status_code == 403  # needs the token too
            assert client.post("/api/logout", headers={"X-CSRF-Token": token}
                               ).status_code == 200
            assert client.get("/api/slides").status_code == 401
            assert client.post("/api/review/p1_he", json=body,
                               headers={"X-CSRF-Token": token}).status_code == 401

        # behind an HTTPS reverse proxy on this machine the cookie is Secure
        with httpx.Client(base_url=base, headers={"X-Forwarded-Proto": "https"}) as proxied:
            assert "secure" in _sign_in(proxied).headers["set-cookie"].lower()

    rows = _rows(out)
    assert len(rows) == 1 and tuple(rows[0]) == LOG_COLUMNS
    assert rows[0]["reviewer"] == "Dr A" and rows[0]["reviewer_source"] == ACCOUNT
    assert rows[0]["result_sha256"] == result_digest(out / "slides" / "p1_he")
    assert rows[0]["chain_sha256"] == chain_hash(GENESIS, rows[0])


def test_wrong_passwords_are_rate_limited_and_sessions_expire(tmp_path, review_server):
    out = _run_folder(tmp_path)
    _accounts(out, "Dr A")
    with (review_server(out, login_attempts=3, login_window_s=3, session_idle_s=1.5)
          as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client):
        for _ in range(3):
            assert _sign_in(client, password="guess guess").status_code == 401
        refused = _sign_in(client)  # even the right password, without checking it
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "too many wrong passwords" in refused.json()["error"]
        time.sleep(3.2)
        assert _sign_in(client).status_code == 200  # the window has passed
        assert client.get("/api/slides").status_code == 200
        time.sleep(2.0)  # idle longer than the session may
        reply = client.get("/api/slides")
        assert reply.status_code == 401 and "expired" in reply.json()["error"]


def test_a_removed_account_is_signed_out(tmp_path, review_server):
    out = _run_folder(tmp_path)
    _accounts(out, "Dr A", "Dr B")
    with (review_server(out) as port,
          httpx.Client(base_url=f"http://127.0.0.1:{port}") as client):
        assert _sign_in(client).status_code == 200
        assert client.get("/api/slides").status_code == 200
        result = CliRunner().invoke(cli_app, ["review", "users", "remove", "Dr A", "--out",
                                              str(out)])
        assert result.exit_code == 0, result.output
        assert client.get("/api/slides").status_code == 401
        assert _sign_in(client).status_code == 401


def test_without_accounts_the_typed_name_is_kept_as_text_only(tmp_path, review_server):
    """Loopback without accounts works as before, but JSON null (or a number) is refused
    instead of being stored as the reviewer "None"."""
    out = _run_folder(tmp_path)
    with (review_server(out) as port,
          httpx.Client(base_url=f"http://127.0.0.1:{port}") as client):
        assert client.get("/").status_code == 200  # no sign-in page in the way
        for bad in (None, 5, ["Dr A"]):
            reply = client.post("/api/review/p1_he", json={"decision": "approved",
                                                           "reviewer": bad})
            assert reply.status_code == 400 and "'reviewer' must be text" in reply.text
        assert client.post("/api/review/p1_he", json={"decision": "approved"}
                           ).status_code == 400  # a name is still required
        assert _log_bytes(out) == b""
        reply = client.post("/api/review/p1_he", json={"decision": "approved",
                                                       "reviewer": "Dr Typed"})
        assert reply.status_code == 200
        assert client.post("/api/login", json={"user": "x", "password": "y"}
                           ).status_code == 404
    rows = _rows(out)
    assert [(r["reviewer"], r["reviewer_source"]) for r in rows] == [("Dr Typed", TYPED)]


# -- the hash-chained log -------------------------------------------------------------------


def _integrate(out: Path):
    return CliRunner().invoke(cli_app, ["integrate", str(out / "samples.csv"), "--out",
                                        str(out)])


def test_a_tampered_log_is_refused_by_the_app_and_by_integrate(tmp_path, review_server):
    out = _run_folder(tmp_path)
    with (review_server(out) as port,
          httpx.Client(base_url=f"http://127.0.0.1:{port}") as client):
        for sample, decision, comment in (("p1_he", "rejected", "pen over the tumour"),
                                          ("p2_he", "approved", ""),
                                          ("p3_he", "approved", "")):
            assert client.post(f"/api/review/{sample}", json={
                "decision": decision, "reviewer": "Dr A", "comment": comment}
                ).status_code == 200
        assert _integrate(out).exit_code == 0
        log = out / "qc" / "review.csv"
        good = log.read_bytes()

        # someone turns the rejection into an approval in a spreadsheet
        log.write_bytes(good.replace(b"p1_he,rejected", b"p1_he,approved"))
        reply = client.get("/api/slides")
        assert reply.status_code == 409 and "line 2" in reply.json()["error"]
        page = client.get("/")
        assert page.status_code == 409 and "does not verify" in page.text
        tampered = log.read_bytes()
        reply = client.post("/api/review/p2_he", json={"decision": "approved",
                                                       "reviewer": "Dr A"})
        assert reply.status_code == 409 and log.read_bytes() == tampered  # nothing appended

    result = _integrate(out)
    assert result.exit_code == 2
    assert "review.csv, line 2" in result.output and "chain" in result.output
    with pytest.raises(ReviewChainError, match="line 2"):
        create_app(out)
    result = CliRunner().invoke(cli_app, ["review", str(out), "--port", "1"])
    assert result.exit_code == 2 and "line 2" in result.output

    # a line removed from the middle breaks the chain at the line that followed it
    lines = good.decode().splitlines(keepends=True)
    log.write_text(lines[0] + lines[1] + lines[3])
    result = _integrate(out)
    assert result.exit_code == 2 and "review.csv, line 3" in result.output
    # a hash stripped from the last line
    log.write_text("".join(lines[:3]) + lines[3].rsplit(",", 1)[0] + ",\n")
    result = _integrate(out)
    assert result.exit_code == 2 and "line 4: no chain_sha256" in result.output
    log.write_bytes(good)  # the original verifies again
    assert _integrate(out).exit_code == 0


def test_a_log_written_before_the_chain_keeps_its_sign_offs(tmp_path, review_server):
    """The pathologist's existing sign-offs (five columns, no hashes) stay: read as before,
    chained from the first new sign-off on, and edits to them are then refused."""
    out = _run_folder(tmp_path)
    log = out / "qc" / "review.csv"
    log.parent.mkdir()
    legacy = ("sample_id,decision,reviewer,time,comment\n"
              "p1_he,rejected,Dr Old,2025-12-01T09:00:00+00:00,\"fold, ink\"\n"
              "p2_he,approved,Dr Old,2025-12-01T09:05:00+00:00,\n")
    log.write_text(legacy)
    result = _integrate(out)
    assert result.exit_code == 0 and "1 rejected at QC review" in result.output
    with (review_server(out) as port,
          httpx.Client(base_url=f"http://127.0.0.1:{port}") as client):
        states = {s["sample_id"]: (s["decision"], s["reviewer"], s["note"])
                  for s in client.get("/api/slides").json()}
        assert states["p1_he"] == ("rejected", "Dr Old", "")
        assert states["p2_he"] == ("approved", "Dr Old", "")  # no digest: not flagged
        assert client.post("/api/review/p3_he", json={"decision": "approved",
                                                      "reviewer": "Dr New"}).status_code == 200
    rows = _rows(out)
    assert tuple(rows[0]) == LOG_COLUMNS and len(rows) == 3
    assert [(r["sample_id"], r["decision"], r["reviewer"], r["comment"]) for r in rows[:2]] == [
        ("p1_he", "rejected", "Dr Old", "fold, ink"), ("p2_he", "approved", "Dr Old", "")]
    assert rows[0]["chain_sha256"] == rows[1]["chain_sha256"] == ""
    head = chain_hash(chain_hash(GENESIS, rows[0]), rows[1])  # the chain runs through them
    assert rows[2]["chain_sha256"] == chain_hash(head, rows[2])
    assert [d.sample_id for d in read_decisions(out)] == ["p1_he", "p2_he", "p3_he"]
    # the old lines are now vouched for by the new one
    log.write_text(log.read_text().replace("fold, ink", "fine"))
    result = _integrate(out)
    assert result.exit_code == 2 and "review.csv, line 4" in result.output


# -- sign-offs tied to the result they approved ---------------------------------------------


def test_an_approval_of_a_recomputed_slide_is_flagged_in_app_and_tables(tmp_path,
                                                                        review_server):
    out = _run_folder(tmp_path)
    features = out / "slides" / "p2_he" / "features.json"
    with (review_server(out) as port,
          httpx.Client(base_url=f"http://127.0.0.1:{port}") as client):
        assert client.post("/api/review/p2_he", json={"decision": "approved",
                                                      "reviewer": "Dr A"}).status_code == 200
        # the same result computed again (only its timing differs): still approved
        record = json.loads(features.read_text())
        features.write_text(json.dumps({**record, "seconds": 99.0}))
        notes = {s["sample_id"]: s["note"] for s in client.get("/api/slides").json()}
        assert notes["p2_he"] == ""
        # recomputed with another configuration
        features.write_text(json.dumps({**record, "config_sha256": "b" * 64}))
        slides = {s["sample_id"]: s for s in client.get("/api/slides").json()}
        assert slides["p2_he"]["decision"] == "approved"
        assert slides["p2_he"]["note"] == EARLIER_RESULT_NOTE
        # a page opened before the recomputation cannot approve the new result unseen
        reply = client.post("/api/review/p3_he", json={
            "decision": "approved", "reviewer": "Dr A", "result_sha256": "c" * 64})
        assert reply.status_code == 409 and "computed again" in reply.json()["error"]

    result = _integrate(out)
    assert result.exit_code == 0, result.output
    wide = pd.read_csv(out / "features.csv").set_index("patient_id")
    assert wide.loc["P2", "qc_review"] == "not_reviewed"  # not read as approved
    assert wide.loc["P2", "he_lym_density"] == 200  # but still used
    long = pd.read_csv(out / "features_long.csv")
    assert set(long.loc[long["sample_id"] == "p2_he", "qc_review"]) == {APPROVED_EARLIER}
    summary = json.loads((out / "integration.json").read_text())
    assert summary["counts"]["slides_approved_earlier_result"] == 1
    assert any("approved an earlier result" in n and "p2_he" in n for n in summary["notes"])


# -- in the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_run(he_tiff, small_tile_config, models, tmp_path_factory) -> Path:
    """A run folder with one real, checked slide and the account "Dr A"."""
    out = tmp_path_factory.mktemp("review_auth_run")
    job = SlideJob("he_1", he_tiff, "he")
    process_slide(job, out, small_tile_config, models)
    post_process_slide(job, out, small_tile_config)  # QC, features, overlays, as slides run
    write_qc_summary(out)
    result = CliRunner().invoke(cli_app, ["review", "users", "add", "Dr A", "--out", str(out),
                                          "--password-stdin"],
                                input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    return out


def test_sign_in_and_sign_off_in_the_browser(browser_run, browser, serving, tmp_path,
                                             small_tile_config, he_tiff):
    out = tmp_path / "run"
    shutil.copytree(browser_run, out)
    with serving(out) as url:
        context = browser.new_context()
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/slides/he_1")
        assert page.url == url + "/login?next=%2Fslides%2Fhe_1"  # sent to sign in first
        page.fill("#login-user", "Dr A")
        page.fill("#login-password", "not my password")
        page.click("#login-submit")
        page.wait_for_function("() => document.getElementById('login-message')"
                               ".textContent.startsWith('not signed in')")
        assert "wrong user name or password" in page.inner_text("#login-message")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(url + "/slides/he_1")
        cookie = next(c for c in context.cookies() if c["name"] == "hccbio_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert "hccbio_session" not in page.evaluate("() => document.cookie")
        assert page.inner_text("#signed-in-user") == "Dr A"
        assert page.locator("#reviewer").count() == 0  # no name to type: the account signs
        page.fill("#comment", "clean; approved")
        page.click("#approve")
        page.wait_for_function("() => document.getElementById('review-message')"
                               ".textContent.startsWith('saved')")
        assert page.locator("[data-status]").first.inner_text() == "approved"
        page.reload()
        history = page.locator("#history tbody tr")
        assert history.count() == 1 and "Dr A" in history.inner_text()
        assert "this result" in history.inner_text()

        # the slide is recomputed with another configuration: the approval is flagged
        other = PathologyConfig(tiling=TilingSection(tile_size=128, halo=48),
                                spatial=SpatialSection(quadrat_um=50.0))
        folder, job = out / "slides" / "he_1", SlideJob("he_1", he_tiff, "he")
        before = json.loads((folder / "features.json").read_text())["features_config_sha256"]
        post_process_slide(job, out, small_tile_config)
        assert result_digest(folder) == _rows(out)[-1]["result_sha256"]  # same config: same
        post_process_slide(job, out, other)
        assert json.loads((folder / "features.json").read_text())[
            "features_config_sha256"] != before
        page.goto(url + "/")
        row = page.locator("tr[data-sample='he_1']")
        assert row.locator("[data-status]").inner_text() == "approved"
        assert row.locator("[data-note]").inner_text() == EARLIER_RESULT_NOTE
        assert page.locator("#chain-head").inner_text() == _rows(out)[-1]["chain_sha256"]
        page.goto(url + "/slides/he_1")
        assert "an earlier result" in page.locator("#history").inner_text()

        page.goto(url + "/")
        page.click("#sign-out")
        page.wait_for_url(url + "/login")
        page.goto(url + "/")
        assert page.url.startswith(url + "/login")
        assert errors == []
        context.close()
    rows = _rows(out)
    assert [(r["reviewer"], r["reviewer_source"], r["comment"]) for r in rows] == [
        ("Dr A", ACCOUNT, "clean; approved")]
    write_qc_summary(out)
    summary = {r["sample_id"]: r for r in csv.DictReader((out / "qc" / "qc_summary.csv").open())}
    assert summary["he_1"]["review_note"] == EARLIER_RESULT_NOTE


def test_sign_offs_append_in_order_under_one_chain(tmp_path):
    """Direct appends (two reviewers, a change of mind) keep every line and one chain."""
    out = _run_folder(tmp_path)
    append_decision(out, "p1_he", decision="approved", reviewer="Dr A")
    append_decision(out, "p1_he", decision="rejected", reviewer="Dr B", comment="fold")
    rows = _rows(out)
    assert [r["decision"] for r in rows] == ["approved", "rejected"]
    assert rows[1]["chain_sha256"] == chain_hash(rows[0]["chain_sha256"], rows[1])
    assert [d.decision for d in read_decisions(out)] == ["approved", "rejected"]
