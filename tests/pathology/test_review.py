"""The review app: in a real headless browser (Debian's chromium driven by Playwright), and
its safety rules and Deep Zoom tiles without one."""

from __future__ import annotations

import csv
import http.client
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from integration.cli import app as cli_app
from pathology.features import compute_slide_features
from pathology.io.slide import Slide
from pathology.qc.check import run_slide_qc
from pathology.review.deepzoom import SlideDeepZoom, TileSource
from pathology.review.server import BindError, check_bind
from pathology.run.pipeline import SlideJob, process_slide
from pathology.run.qc_summary import write_qc_summary


@pytest.fixture(scope="module")
def review_run(he_tiff, small_tile_config, models, tmp_path_factory) -> Path:
    """A run folder with two checked slides (the second a copy of the first)."""
    out = tmp_path_factory.mktemp("review_run")
    process_slide(SlideJob("he_1", he_tiff, "he"), out, small_tile_config, models)
    compute_slide_features(out / "slides" / "he_1", modality="he", stain="",
                           config=small_tile_config)
    run_slide_qc(out / "slides" / "he_1", slide_path=he_tiff, manifest_mpp=None,
                 config=small_tile_config)
    shutil.copytree(out / "slides" / "he_1", out / "slides" / "he_2")
    qc_path = out / "slides" / "he_2" / "qc" / "qc.json"
    record = json.loads(qc_path.read_text())
    record.update(sample_id="he_2", status="flagged", flags=["focus"],
                  reasons=["out-of-focus fraction 0.5 > 0.1 <demo>"])
    qc_path.write_text(json.dumps(record))
    # a folder whose name is not a valid id is never served
    shutil.copytree(out / "slides" / "he_1", out / "slides" / "bad..id")
    write_qc_summary(out)
    return out


def test_list_page_shows_every_slide(review_run, browser, serving):
    with serving(review_run) as url:
        page = browser.new_page()
        page.goto(url + "/")
        rows = page.locator("#slides tbody tr")
        assert sorted(rows.evaluate_all("r => r.map(x => x.dataset.sample)")) == ["he_1", "he_2"]
        flagged = page.locator("tr[data-sample='he_2']")
        assert "focus" in flagged.inner_text() and "<demo>" in flagged.inner_text()
        assert page.locator("tr[data-sample='he_1'] [data-status]").inner_text() == "not_reviewed"
        page.close()


def test_viewer_loads_tiles_and_an_overlay_toggles(review_run, browser, serving):
    with serving(review_run) as url:
        page = browser.new_page()
        tiles = []
        page.on("response", lambda r: tiles.append(r) if "_files/" in r.url else None)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/slides/he_1")
        page.wait_for_function("() => window.hccbioViewer && window.hccbioViewer.world"
                               ".getItemCount() > 0 && window.hccbioViewer.world"
                               ".getItemAt(0).getFullyLoaded()", timeout=30000)
        assert tiles and all(r.status == 200 for r in tiles)
        assert tiles[0].headers["content-type"] == "image/jpeg"
        page.wait_for_function("() => window.hccbioLayers && window.hccbioLayers.tissue",
                               timeout=30000)
        opacity = "() => window.hccbioLayers.tissue.getOpacity()"
        assert page.evaluate(opacity) == 0
        page.locator("input.layer-toggle[data-layer='tissue']").check()
        assert page.evaluate(opacity) == pytest.approx(0.85)
        page.locator("input.layer-toggle[data-layer='tissue']").uncheck()
        assert page.evaluate(opacity) == 0
        assert errors == []
        page.close()


def test_an_approval_persists_across_a_restart(review_run, browser, serving):
    with serving(review_run) as url:
        page = browser.new_page()
        page.goto(url + "/slides/he_2")
        page.fill("#reviewer", "Dr <Who>")
        page.fill("#comment", "focus acceptable; 'fine' & signed")
        page.click("#approve")
        page.wait_for_function("() => document.getElementById('review-message')"
                               ".textContent.startsWith('saved')")
        assert page.locator("[data-status]").inner_text() == "approved"
        page.close()
    rows = list(csv.DictReader((review_run / "qc" / "review.csv").open()))
    assert rows[-1]["sample_id"] == "he_2" and rows[-1]["decision"] == "approved"
    assert rows[-1]["comment"] == "focus acceptable; 'fine' & signed"
    with serving(review_run) as url:  # a new server process state: read back from disk
        page = browser.new_page()
        page.goto(url + "/")
        row = page.locator("tr[data-sample='he_2']")
        assert row.locator("[data-status]").inner_text() == "approved"
        assert "Dr <Who>" in row.inner_text()  # shown as text, not markup
        assert "Dr &lt;Who&gt;" in page.content()
        page.close()
    summary = list(csv.DictReader((review_run / "qc" / "qc_summary.csv").open()))
    assert {r["sample_id"]: r["review_decision"] for r in summary}["he_2"] == "approved"


def _raw_get(url: str, path: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", path)  # sent as is: no client-side normalisation
    status = connection.getresponse().status
    connection.close()
    return status


def test_path_traversal_and_foreign_ids_are_refused(review_run, browser, serving):
    with serving(review_run) as url:
        page = browser.new_page()
        for path in ("/qc/he_1/..%2Fcells.parquet", "/qc/he_1/qc.json",
                     "/slides/..%2F..%2Fetc%2Fpasswd", "/dzi/bad..id.dzi",
                     "/qc/he_1/%2E%2E%2F%2E%2E%2Frun.json"):
            assert page.goto(url + path).status == 404, path
        assert page.goto(url + "/qc/he_1/layer_tissue.png").status == 200
        page.close()
        for path in ("/qc/he_1/../cells.parquet", "/slides/../../etc/passwd",
                     "/static/../app.py", "/dzi/he_1_files/0/../../../x.jpeg",
                     "/dzi/he_1_files/99/0_0.jpeg"):
            assert _raw_get(url, path) == 404, path
        assert _raw_get(url, "/slides/he_1") == 200
        import httpx

        log = review_run / "qc" / "review.csv"
        before = log.read_bytes() if log.exists() else b""
        post = httpx.post(url + "/api/review/he_1", data={"decision": "rejected"})
        assert post.status_code == 415  # a cross-site form cannot sign off
        post = httpx.post(url + "/api/review/he_1", json={"decision": "approved",
                                                          "reviewer": "x"},
                          headers={"Origin": "http://evil.example"})
        assert post.status_code == 403
        post = httpx.post(url + "/api/review/bad..id", json={"decision": "approved",
                                                             "reviewer": "x"})
        assert post.status_code == 404
        assert (log.read_bytes() if log.exists() else b"") == before
        headers = httpx.get(url + "/").headers
        assert "script-src 'self'" in headers["content-security-policy"]


def test_non_loopback_bind_is_refused_unless_allowed(tmp_path):
    for host in ("127.0.0.1", "localhost", "::1"):
        check_bind(host, allow_remote=False)
    with pytest.raises(BindError, match="--allow-remote"):
        check_bind("0.0.0.0", allow_remote=False)
    with pytest.raises(BindError, match="without reviewer accounts"):  # issue 32
        check_bind("0.0.0.0", allow_remote=True)
    result = CliRunner().invoke(cli_app, ["review", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "allow-remote" in result.output


def test_our_deep_zoom_matches_openslide(he_tiff):
    from openslide.deepzoom import DeepZoomGenerator

    openslide_source = TileSource(he_tiff, backend="openslide")
    with Slide(he_tiff, backend="tiffslide") as slide:
        ours = SlideDeepZoom(slide)
        reference = DeepZoomGenerator(openslide_source._handle, tile_size=254, overlap=1)
        assert ours.level_count == reference.level_count
        assert ours.level_tiles == reference.level_tiles
        assert ours.level_dimensions == reference.level_dimensions
        top = ours.level_count - 1
        for address in ((0, 0), (1, 1), (2, 1)):
            expected = np.asarray(reference.get_tile(top, address).convert("RGB"))
            np.testing.assert_array_equal(ours.get_tile_array(top, address), expected)
        expected = np.asarray(reference.get_tile(top - 1, (0, 0)).convert("RGB"), float)
        got = ours.get_tile_array(top - 1, (0, 0)).astype(float)
        assert got.shape == expected.shape and np.abs(got - expected).mean() < 6
        with pytest.raises(ValueError):
            ours.get_tile_array(top, (99, 0))
    openslide_source.close()


def test_multichannel_slides_are_tiled_as_a_composite(shared_data):
    path = shared_data / "slides" / "pathml-testdata" / "small_vectra.qptiff"
    source = TileSource(path, backend="tiffslide")
    top = source.level_count - 1
    tile = source.tile_array(top, 0, 0)
    assert tile.dtype == np.uint8 and tile.shape[2] == 3 and tile.shape[:2] == (255, 255)
    assert tile[..., 2].max() > 150  # DAPI, scaled to the slide's range, shows as blue
    with Slide(path) as slide:
        raw = slide.read_level(0, 0, 0, 255, 255).astype(float)
    # rendered as a composite of the channels (not their bytes taken as R, G, B)
    assert np.corrcoef(tile[..., 2].ravel(), raw[..., 0].ravel())[0, 1] > 0.8
    assert "<Size" in source.dzi()
    source.close()


def test_channel_display_picks_channels_colours_and_contrast(shared_data):
    path = shared_data / "slides" / "pathml-testdata" / "small_vectra.qptiff"
    source = TileSource(path, backend="tiffslide")
    controls = source.channel_controls()
    with Slide(path) as slide:
        names = slide.info.channels
        raw = slide.read_level(0, 0, 0, 255, 255).astype(float)
    assert [c["name"] for c in controls] == list(names) == ["DAPI", "FITC", "Cy3"]
    assert all(0 < c["max"] <= c["limit"] for c in controls)
    top = source.level_count - 1
    # only channel 0 (DAPI), drawn in red: green and blue stay black, red follows DAPI
    only_dapi = source.parse_display(f"0-ff0000-{controls[0]['max']:.6g}")
    tile = source.tile_array(top, 0, 0, only_dapi).astype(float)
    assert tile[..., 1:].max() == 0
    assert np.corrcoef(tile[..., 0].ravel(), raw[..., 0].ravel())[0, 1] > 0.8
    # a lower display maximum is a brighter picture
    brighter = source.parse_display(f"0-ff0000-{controls[0]['max'] / 4:.6g}")
    assert source.tile_array(top, 0, 0, brighter)[..., 0].mean() > tile[..., 0].mean() * 1.5
    # nothing shown: black; the default differs from the one-channel view
    assert source.tile_array(top, 0, 0, source.parse_display("")).max() == 0
    assert not np.array_equal(source.tile_array(top, 0, 0), tile.astype(np.uint8))
    for bad in ("0-ff0000", "99-ff0000-1", "0-ff0000-1,0-00ff00-1", "0-ff0000-0", "x"):
        with pytest.raises(ValueError):
            source.parse_display(bad)
    source.close()


def test_rgb_slides_have_no_channel_controls(he_tiff):
    source = TileSource(he_tiff, backend="tiffslide")
    assert source.channel_controls() == []
    with pytest.raises(ValueError, match="multichannel"):
        source.parse_display("0-ff0000-1")
    source.close()


def test_static_index_works_without_a_server(review_run, browser):
    write_qc_summary(review_run)
    page = browser.new_page()
    page.goto((review_run / "qc" / "index.html").as_uri())
    assert page.locator("table tbody tr").count() == 2
    widths = page.evaluate("() => Array.from(document.images).map(i => i.naturalWidth)")
    assert len(widths) >= 8 and all(w > 0 for w in widths)  # relative links resolve
    assert "&lt;demo&gt;" in page.content()
    page.close()


def test_a_rejection_in_the_browser_reaches_the_study_table(review_run, browser, tmp_path, serving):
    """The pathologist rejects he_1 in the browser; ``hccbio integrate`` then leaves it out
    with the reviewer's comment, and keeps he_2 (approved in the browser earlier or not)."""
    import pandas as pd

    from pathology.run.tables import write_run_features

    out = tmp_path / "run"
    shutil.copytree(review_run, out)
    with serving(out) as url:
        page = browser.new_page()
        page.goto(url + "/slides/he_1")
        page.fill("#reviewer", "Dr Reject")
        page.fill("#comment", "ink over the tumour")
        page.click("#reject")
        page.wait_for_function("() => document.getElementById('review-message')"
                               ".textContent.startsWith('saved')")
        assert page.locator("[data-status]").inner_text() == "rejected"
        page.screenshot(path=str(tmp_path / "rejected.png"))
        page.close()
    write_run_features(out, sample_ids=["he_1", "he_2"])
    (out / "samples.csv").write_text(
        "patient_id,timepoint,sample_id,modality,stain,path,mpp\n"
        "P1,baseline,he_1,he,HE,he.tiff,0.5\nP2,baseline,he_2,he,HE,he.tiff,0.5\n")
    result = CliRunner().invoke(cli_app, ["integrate", str(out / "samples.csv"), "--out",
                                          str(out)])
    assert result.exit_code == 0, result.output
    exclusions = pd.read_csv(out / "exclusions.csv").set_index("sample_id")
    assert list(exclusions.index) == ["he_1"]
    assert "Dr Reject" in exclusions.loc["he_1", "reason"]
    assert "ink over the tumour" in exclusions.loc["he_1", "reason"]
    wide = pd.read_csv(out / "features.csv").set_index("patient_id")
    assert list(wide.index) == ["P2"]  # P1's only sample was rejected
    assert wide.loc["P2"].filter(like="he_").notna().any()
