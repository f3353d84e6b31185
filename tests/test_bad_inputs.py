"""What hccbio refuses, and how: bad, odd and hostile inputs (issue 18).

Read top to bottom, this module is the list of inputs the tool turns away and the promise it
keeps for each: an error that names the file (and the line, column, channel, gate or key)
and the fix, exit status 2 for invalid input, one bad sample never stopping a batch, nothing
already computed lost, and no traceback unless ``hccbio --debug`` asks for one. Real files
from the shared data folder are used wherever the issue used them (a truncated copy of a
real SVS is made here; a real TIFF without pixel-size metadata is served by the real review
app over HTTP); inputs named *synthetic* are made up because the pathology is the point.
"""

from __future__ import annotations

import csv
import http.client
import json
import logging
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hcccore.spreadsheet import spreadsheet_safe, spreadsheet_text
from integration.cli import app as cli_app
from integration.manifest import ManifestError, read_manifest
from pathology.config import ConfigError, load_config
from pathology.run import layout
from pathology.run.layout import RunFolder

HEADER = "patient_id,timepoint,sample_id,modality,stain,path,mpp\n"
SVS = ("slides", "pathml-testdata", "small_HE.svs")  # a real Aperio file
NO_METADATA_PYRAMID = ("slides", "pathml-testdata", "small_HE_levels.tiff")  # OpenSlide, 72 dpi


def _data(shared_data: Path, parts: tuple[str, ...]) -> Path:
    return shared_data.joinpath(*parts)


def truncated_svs(shared_data: Path, folder: Path) -> Path:
    """The first 100 KB of a real SVS: an interrupted copy from the scanner."""
    path = folder / "truncated.svs"
    with open(_data(shared_data, SVS), "rb") as handle:
        path.write_bytes(handle.read(100_000))
    return path


def ome_tiff_without_pixel_size(shared_data: Path, folder: Path) -> Path:
    """Real H&E pixels (a 768 x 512 crop of the SVS) saved as an OME-TIFF without
    PhysicalSizeX, as some converters write it: tiffslide reads it, and its pixel size can
    only come from the manifest (0.499 um/px, the SVS's own)."""
    import numpy as np
    import openslide
    import tifffile

    with openslide.OpenSlide(str(_data(shared_data, SVS))) as slide:
        rgb = np.asarray(slide.read_region((0, 0), 0, (768, 512)).convert("RGB"))
    path = folder / "he_no_mpp.ome.tif"
    tifffile.imwrite(path, rgb, ome=True, photometric="rgb", tile=(256, 256))
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# -- two runs into one folder, the review app over HTTP -----------------------------------
@pytest.fixture(scope="module")
def two_runs(shared_data, tmp_path_factory) -> dict:
    """``hccbio slides run a.csv`` then ``b.csv`` into the same OUT (sync scheduler).

    a.csv: real H&E in a TIFF without pixel-size metadata (its mpp from the manifest, the README's
    route) and a truncated copy of a real SVS; b.csv: another real TIFF without metadata.
    """
    root = tmp_path_factory.mktemp("two_runs")
    config = root / "pathology.yaml"
    config.write_text("tissue:\n  mode: whole_image\ntiling:\n  tile_size: 256\n  halo: 48\n")
    truncated = truncated_svs(shared_data, root)
    ome = ome_tiff_without_pixel_size(shared_data, root)
    a = root / "a.csv"
    a.write_text(HEADER + f"P1,baseline,a_tif,he,HE,{ome},0.499\n"
                 f"P1,baseline,a_truncated,he,HE,{truncated},\n")
    b = root / "b.csv"
    b.write_text(HEADER + f"P2,baseline,b_tif,he,HE,{_data(shared_data, NO_METADATA_PYRAMID)}"
                 ",0.5\n")
    out = root / "out"
    runner = CliRunner()
    results = {}
    for name, manifest in (("a", a), ("b", b)):
        results[name] = runner.invoke(cli_app, ["slides", "run", str(manifest), "--out",
                                                str(out), "--config", str(config),
                                                "--scheduler", "sync", "--quiet"])
        run_json = json.loads((out / layout.RUN_JSON).read_text())
        results[f"{name}_run_json"] = run_json
        time.sleep(1.1)  # runs/ names carry the start time in seconds
    return {"out": out, "truncated": truncated, **results}


def test_a_second_run_into_a_folder_keeps_the_first_runs_slides_in_its_tables(two_runs):
    """Issue 18.1: run b.csv after a.csv into one OUT: pathology_features.csv lists a's
    slides too (as batch_report.csv and qc_summary.csv do), as 'slides features OUT' would."""
    out = two_runs["out"]
    assert two_runs["b"].exit_code == 0, two_runs["b"].output
    features = [r["sample_id"] for r in _read_csv(out / layout.PATHOLOGY_FEATURES)]
    assert features == ["a_tif", "b_tif"]  # the truncated slide failed: not in the table
    report = {r["sample_id"]: r["status"] for r in _read_csv(out / layout.BATCH_REPORT)}
    assert report == {"a_tif": "done", "a_truncated": "failed", "b_tif": "done"}
    summary = [r["sample_id"] for r in _read_csv(RunFolder(out).qc_summary)]
    assert summary == ["a_tif", "b_tif"]


def test_every_run_keeps_its_own_provenance_record(two_runs):
    """Issue 18.6: run.json is the latest run; runs/ holds one record per run."""
    out = two_runs["out"]
    records = sorted(RunFolder(out).runs.glob("*_pathology.json"))
    assert len(records) == 2
    inputs = [[i["sample_id"] for i in json.loads(p.read_text())["inputs"]] for p in records]
    assert inputs == [["a_tif", "a_truncated"], ["b_tif"]]
    latest = json.loads((out / layout.RUN_JSON).read_text())["pathology"]
    assert (out / latest["record"]) == records[1]
    assert two_runs["a_run_json"]["pathology"]["record"] == records[0].relative_to(
        out).as_posix()


def test_a_truncated_svs_fails_its_own_row_with_the_file_and_the_fix(two_runs):
    """Issue 18.5: the first 100 KB of a real SVS: the batch goes on (exit 1, the other
    slide done) and the reason names the file and the fix, not 'unexpected IndexError'."""
    assert two_runs["a"].exit_code == 1, two_runs["a"].output
    rows = {r["sample_id"]: r for r in _read_csv(two_runs["out"] / layout.BATCH_REPORT)}
    reason = rows["a_truncated"]["reason"]
    assert str(two_runs["truncated"]) in reason
    assert "damaged or incomplete" in reason and "copy it again" in reason
    assert not reason.startswith("unexpected")
    assert "Traceback" not in two_runs["a"].output


def test_a_fixed_failure_is_returned_by_the_worker_task_not_retried(shared_data, tmp_path):
    """Issue 18.6: a damaged file fails the same way every time: the Dask task returns the
    reason instead of raising, so batch.retries is not spent on it and no worker logs a
    'Compute Failed' traceback."""
    from pathology.config import PathologyConfig
    from pathology.run.pipeline import SlideJob
    from pathology.run.schedulers import FixedFailure, task_prepare

    job = SlideJob("broken", truncated_svs(shared_data, tmp_path), "he", "HE", None)
    result = task_prepare(job, tmp_path / "out", PathologyConfig())
    assert isinstance(result, FixedFailure)
    assert "truncated.svs" in result.reason and "damaged or incomplete" in result.reason


def test_dask_does_not_retry_a_slide_that_fails_for_a_fixed_reason(shared_data, tmp_path,
                                                                   monkeypatch):
    """Issue 18.6: through a real (in-process) Dask cluster with batch.retries = 2, the
    truncated SVS is opened once, not three times, and its row gives the reason."""
    from distributed import Client

    import pathology.run.schedulers as schedulers
    from pathology.config import BatchSection, PathologyConfig
    from pathology.run.batch import BatchRow, _run_dask
    from pathology.run.pipeline import SlideJob
    from pathology.run.progress import BatchProgress

    calls = []
    real_prepare = schedulers.prepare_slide

    def counted(*args, **kwargs):
        calls.append(args[0].sample_id)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(schedulers, "prepare_slide", counted)
    config = PathologyConfig(batch=BatchSection(retries=2))
    job = SlideJob("broken", truncated_svs(shared_data, tmp_path), "he", "HE", None)
    rows: list[BatchRow] = []
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        _run_dask(client, [job], tmp_path / "out", config,
                  BatchProgress(1, live=False), rows.append)
    assert calls == ["broken"]
    assert [r.status for r in rows] == ["failed"]
    assert "truncated.svs" in rows[0].reason and "damaged or incomplete" in rows[0].reason


def test_an_unexpected_slide_error_is_one_log_line_unless_debug(caplog, tmp_path):
    """Issue 18.6: under --quiet an unexpected error is one line; its traceback is a debug
    line (shown by hccbio --debug)."""
    from pathology.run.batch import _failed
    from pathology.run.pipeline import SlideJob

    job = SlideJob("s1", tmp_path / "s1.svs", "he", "HE", None)
    try:
        {}["x"]  # a synthetic bug, raised so that it has a traceback
    except KeyError as bug:
        error = bug
    with caplog.at_level(logging.INFO, logger="hccbio"):
        row = _failed(job, error, 1.0)
    assert row.reason == "unexpected KeyError: 'x'"
    assert "Traceback" not in caplog.text and "--debug" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="hccbio"):
        _failed(job, error, 1.0)
    assert "Traceback" in caplog.text and "test_bad_inputs.py" in caplog.text


def _request(port: int, method: str, path: str, *, host: str | None = None,
             body: dict | None = None, origin: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host or f"127.0.0.1:{port}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if origin is not None:
        headers["Origin"] = origin
    connection.request(method, path, body=json.dumps(body) if body is not None else None,
                       headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def test_the_viewer_serves_a_slide_whose_pixel_size_came_from_the_manifest(two_runs,
                                                                          review_server):
    """Issue 18.2: a real TIFF without pixel-size metadata (mpp from the manifest) is tiled
    by the review app (was HTTP 500, PixelSizeError: the viewer reopened it without it)."""
    with review_server(two_runs["out"]) as port:
        status, dzi = _request(port, "GET", "/dzi/a_tif.dzi")
        assert status == 200, dzi
        assert b'Width="768"' in dzi
        status, tile = _request(port, "GET", "/dzi/a_tif_files/9/0_0.jpeg")
        assert status == 200 and tile[:2] == b"\xff\xd8"
        status, page = _request(port, "GET", "/slides/a_tif")
        assert status == 200


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}",
                                  "127.0.0.1.attacker.example:{port}", "localhost.evil:{port}"])
def test_a_request_for_a_foreign_host_is_refused(two_runs, host, review_server):
    """Issue 18.3 (DNS rebinding): a request naming another host, with an Origin that
    matches it, records no decision (403); loopback names are served."""
    out = two_runs["out"]
    before = _read_csv(RunFolder(out).review_log) if RunFolder(out).review_log.is_file() else []
    with review_server(out) as port:
        name = host.format(port=port)
        status, body = _request(port, "POST", "/api/review/a_tif", host=name,
                                origin=f"http://{name}",
                                body={"decision": "approved", "reviewer": "Mallory"})
        assert status == 403, body
        assert _request(port, "GET", "/", host=name)[0] == 403
        assert _request(port, "GET", "/api/slides", host=f"localhost:{port}")[0] == 200
        assert _request(port, "GET", "/api/slides", host=f"[::1]:{port}")[0] == 200
    after = _read_csv(RunFolder(out).review_log) if RunFolder(out).review_log.is_file() else []
    assert after == before


def test_a_request_without_a_host_header_is_refused(two_runs, review_server):
    with (review_server(two_runs["out"]) as port,
          socket.create_connection(("127.0.0.1", port)) as s):
        s.sendall(b"GET /api/slides HTTP/1.0\r\n\r\n")
        assert s.recv(64).split()[1] == b"400"


def test_spreadsheet_formulas_are_neutralised_in_every_table_a_reviewer_may_open(
        two_runs, review_server):
    """Issue 18.4: a reviewer or comment starting with = + - @ is written with a leading
    quote in review.csv and qc_summary.csv (no spreadsheet runs it) and read back as typed."""
    from pathology.run.decisions import latest_decisions

    out = two_runs["out"]
    reviewer, comment = "=HYPERLINK(\"http://x\",\"Dr\")", "+cmd|' /C calc'!A0 -fold @x"
    with review_server(out) as port:
        status, body = _request(port, "POST", "/api/review/b_tif", origin=f"http://127.0.0.1:{port}",
                                body={"decision": "rejected", "reviewer": reviewer,
                                      "comment": comment})
        assert status == 200, body
        listed = json.loads(_request(port, "GET", "/api/slides")[1])
    row = [r for r in _read_csv(RunFolder(out).review_log) if r["sample_id"] == "b_tif"][-1]
    assert row["reviewer"] == "'" + reviewer and row["comment"] == "'" + comment
    summary = {r["sample_id"]: r for r in _read_csv(RunFolder(out).qc_summary)}["b_tif"]
    assert summary["reviewer"] == "'" + reviewer and summary["review_comment"] == "'" + comment
    assert latest_decisions(out)["b_tif"].reviewer == reviewer  # read back as typed
    assert {s["sample_id"]: s["reviewer"] for s in listed}["b_tif"] == reviewer


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "'=1",
                                  "''-x", "plain", "", "a=b", "'quoted'"])
def test_spreadsheet_escape_round_trips(text):
    """Synthetic cells: every formula-like text gets a quote; reading undoes it exactly."""
    safe = spreadsheet_safe(text)
    assert not safe.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert spreadsheet_text(safe) == text


def test_a_comment_over_the_limit_is_refused_not_cut(two_runs, review_server):
    """Issue 18.5: a 2,001-character comment gets a 400 saying the length and the limit;
    nothing is recorded (it was cut silently)."""
    out = two_runs["out"]
    before = _read_csv(RunFolder(out).review_log) if RunFolder(out).review_log.is_file() else []
    with review_server(out) as port:
        status, body = _request(port, "POST", "/api/review/a_tif",
                                origin=f"http://127.0.0.1:{port}",
                                body={"decision": "rejected", "reviewer": "Dr A",
                                      "comment": "x" * 2001})
    assert status == 400
    message = json.loads(body)["error"]
    assert "2,001" in message and "2,000" in message and "shorten" in message
    after = _read_csv(RunFolder(out).review_log) if RunFolder(out).review_log.is_file() else []
    assert after == before


def test_review_on_a_port_in_use_fails_before_printing_its_url(two_runs):
    """Issue 18.5: exit 2 with the port and the fix; no 'review app on http://...' line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["review", str(two_runs["out"]), "--port",
                                              str(port)])
    assert result.exit_code == 2, result.output
    assert "http://" not in result.output
    assert f"127.0.0.1:{port}" in result.output and "--port" in result.output


# -- inputs refused before any work: manifest, config, --out ------------------------------
MANIFEST_CASES = [
    # (synthetic manifest text, words the error must hold)
    pytest.param(HEADER + "\nP1,baseline,s1,he,\"multi\nline\",a.svs,\n\n"
                 "P2,week6,s2,he,HE,b.svs,\n",
                 ["line 6", "timepoint", "week6"], id="blank-lines-and-multiline-field"),
    pytest.param(HEADER + "P1,baseline,s1,he,HE,a.svs,,extra\n",
                 ["line 2", "8 fields", "7", "quote"], id="extra-field"),
    pytest.param(HEADER + "P1,baseline,s1,he,HE,a.svs,abc\n", ["line 2", "mpp", "abc"],
                 id="mpp-not-a-number"),
]


@pytest.mark.parametrize(("text", "words"), MANIFEST_CASES)
def test_manifest_errors_name_the_line_the_row_starts_on(tmp_path, text, words):
    """Issue 18.5: blank lines and quoted multi-line fields no longer shift line numbers."""
    path = tmp_path / "samples.csv"
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert str(path) in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_a_row_of_empty_fields_is_skipped(tmp_path):
    """Issue 18.5: spreadsheets export ',,,,,,' rows; they no longer stop the manifest."""
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + "P1,baseline,s1,he,HE,a.svs,\n,,,,,,\n  , ,,,,,\n"
                    "P1,baseline,s2,ihc,CD8,b.svs,\n")
    samples = read_manifest(path)
    assert [(s.sample_id, s.row) for s in samples] == [("s1", 2), ("s2", 5)]


def test_a_manifest_that_is_not_utf8_names_the_fix(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_bytes(HEADER.encode() + "P1,baseline,s1,he,HÉ,a.svs,\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="UTF-8"):
        read_manifest(path)


def test_a_reversed_mpp_range_is_a_config_error(tmp_path):
    """Issue 18.5: slide.mpp_range [2.0, 0.1] is refused when the config is read (every
    slide used to fail, blaming the manifest's mpp)."""
    path = tmp_path / "pathology.yaml"
    path.write_text("slide:\n  mpp_range: [2.0, 0.1]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "slide.mpp_range" in str(caught.value)
    assert "low < high" in str(caught.value)


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_out_on_a_file_exits_2_with_one_line(tmp_path, where):
    """Issue 18.5: --out naming a file (or a folder inside one) was a 44-line traceback."""
    manifest = tmp_path / "samples.csv"
    manifest.write_text(HEADER + "P1,baseline,s1,he,HE,a.svs,\n")
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "run"
    result = CliRunner().invoke(cli_app, ["slides", "run", str(manifest), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(blocker) in lines[0] and "--out" in lines[0]


def test_the_run_lock_refuses_a_file_as_folder(tmp_path):
    """The same through the Python API: a ValueError naming the folder, not OSError."""
    from hcccore.lock import RunFolderError, RunLock

    blocker = tmp_path / "taken"
    blocker.write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"), RunLock(blocker):
        pass


def test_an_unexpected_error_is_one_line_unless_debug(monkeypatch, capsys, tmp_path):
    """Issue 18: no traceback reaches the user unless --debug (a synthetic bug is planted)."""
    import integration.cli as cli

    def broken(path):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(cli, "read_manifest", broken)
    monkeypatch.setitem(cli._STATE, "debug", False)  # restored after the --debug call
    args = ["slides", "run", str(tmp_path / "samples.csv"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exited:
        cli.app(args=args, prog_name="hccbio")
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "unexpected RuntimeError: planted bug" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="planted bug"):
        cli.app(args=["--debug", *args], prog_name="hccbio")


# -- blood -------------------------------------------------------------------------------
def test_a_gate_on_a_channel_the_file_lacks_names_gate_and_channel(shared_data, project_root,
                                                                    tmp_path):
    """Issue 18.5: a compensated gate on a channel 100715.fcs does not have (was
    'KeyError: FCS')."""
    from blood.errors import BloodInputError
    from blood.flow.pipeline import analyse_fcs

    gates = (project_root / "configs" / "gates" / "tcell_100715.yaml").read_text()
    assert "channel: R780-A, min: 0.3" in gates
    bad = tmp_path / "gates.yaml"
    bad.write_text(gates.replace("channel: R780-A, min: 0.3", "channel: R999-A, min: 0.3"))
    fcs = shared_data / "flow" / "flowkit" / "100715.fcs"
    with pytest.raises(BloodInputError) as caught:
        analyse_fcs(fcs, bad, tmp_path / "out", plots=False)
    message = str(caught.value)
    assert str(fcs) in message and str(bad) in message
    assert "gate 'cd3'" in message and "'R999-A'" in message and "R780-A" in message
