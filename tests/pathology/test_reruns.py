"""Run folders never lie (issue 29, slide arm): a config change recomputes what it invalidates
in one run, ``--force`` recomputes from the pixels, a damaged tile part is named and repaired,
a slide whose latest run failed (or whose outputs are stale) leaves the tables and is listed in
``exclusions.csv``, a symlink loop fails its own row, and the user's own mistakes (a config
that is not UTF-8, ``.inf`` values, an unwritable run folder) are ordinary errors.

Every case goes through the CLI on stardist's real H&E test image written as a TIFF.
"""

from __future__ import annotations

import csv
import errno
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from integration.cli import app as cli_app
from pathology.io.folder import SlideFolder
from pathology.run import layout
from pathology.run.layout import RunFolder

HEADER = "patient_id,timepoint,sample_id,modality,stain,path,mpp\n"
CONFIG = "tissue:\n  mode: whole_image\ntiling:\n  tile_size: 256\n  halo: 48\n"
OTHER_THRESHOLD = CONFIG + "segmentation:\n  prob_thresh: 0.3\n"


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {r["sample_id"]: r for r in csv.DictReader(handle)}


def _run(manifest: Path, out: Path, config: Path, *extra: str):
    return CliRunner().invoke(cli_app, ["slides", "run", str(manifest), "--out", str(out),
                                        "--config", str(config), "--scheduler", "sync",
                                        "--quiet", *extra])


@pytest.fixture
def study(he_tiff, tmp_path) -> dict[str, Path]:
    """Three copies of the real H&E TIFF (a, b, c), a manifest of each set, two configs."""
    for name in "abc":
        shutil.copy(he_tiff, tmp_path / f"{name}.tiff")
    (tmp_path / "c1.yaml").write_text(CONFIG)
    (tmp_path / "c2.yaml").write_text(OTHER_THRESHOLD)
    for names in ("a", "abc", "bc"):
        (tmp_path / f"{names}.csv").write_text(HEADER + "".join(
            f"P{i},baseline,{n},he,HE,{n}.tiff,\n" for i, n in enumerate(names)))
    return {"root": tmp_path, "out": tmp_path / "out", "c1": tmp_path / "c1.yaml",
            "c2": tmp_path / "c2.yaml"}


def _consistent(folder: SlideFolder) -> int:
    cells = pq.read_metadata(folder.cells).num_rows
    assert pq.read_metadata(folder.classes).num_rows == cells
    return cells


def test_a_changed_threshold_recomputes_cells_classes_and_qc_in_one_run(study):
    """Issue 29.3: prob_thresh changed: the second run ends done with consistent outputs
    (it failed at QC on the old cell_classes.parquet), and the table has the new numbers."""
    manifest, out = study["root"] / "a.csv", study["out"]
    assert _run(manifest, out, study["c1"]).exit_code == 0
    folder = RunFolder(out).slide("a")
    before = _consistent(folder)
    result = _run(manifest, out, study["c2"])
    assert result.exit_code == 0, result.output
    row = _rows(out / layout.BATCH_REPORT)["a"]
    assert row["status"] == "done" and "config changed" in row["reason"]
    after = _consistent(folder)
    assert after != before  # a lower threshold finds more nuclei
    table = _rows(out / layout.PATHOLOGY_FEATURES)["a"]
    assert int(float(table["he_n_cells"])) + int(float(table["he_n_cells_excl"])) == after


def test_force_recomputes_from_the_pixels_and_a_damaged_part_is_repaired(study):
    """Issue 29.4: --force segments every tile again (it rebuilt the cells from the saved
    parts); a damaged part fails its slide with one short line and is computed again on the
    next run."""
    manifest, out = study["root"] / "a.csv", study["out"]
    assert _run(manifest, out, study["c1"]).exit_code == 0
    folder = RunFolder(out).slide("a")
    cells = _consistent(folder)
    parts = sorted(folder.cell_parts.glob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    result = _run(manifest, out, study["c1"], "--force")
    assert result.exit_code == 0, result.output
    assert _rows(out / layout.BATCH_REPORT)["a"]["reason"] == (
        "recomputed from the pixels (--force)")
    assert all(p.stat().st_mtime_ns != s for p, s in zip(parts, stamps, strict=True))
    assert _consistent(folder) == cells

    parts[0].write_bytes(b"PAR1 not really")  # a damaged part, the slide to be redone
    folder.cells.unlink()
    result = _run(manifest, out, study["c1"])
    assert result.exit_code == 1
    reason = _rows(out / layout.BATCH_REPORT)["a"]["reason"]
    assert str(parts[0]) in reason and "damaged" in reason and "run again" in reason
    assert len(reason) < 300 and "schema" not in reason
    result = _run(manifest, out, study["c1"])
    assert result.exit_code == 0, result.output
    assert _consistent(folder) == cells


def test_failed_and_stale_slides_leave_the_table_and_are_excluded_with_their_reason(study):
    """Issue 29.2: b's file is replaced by a truncated copy and its rerun fails; a is left
    from a run with another configuration. Neither stays in pathology_features.csv, and
    integrate lists both in exclusions.csv with the reason (it used their old rows)."""
    root, out = study["root"], study["out"]
    assert _run(root / "abc.csv", out, study["c1"]).exit_code == 0
    data = (root / "b.tiff").read_bytes()
    (root / "b.tiff").write_bytes(data[:len(data) // 3])
    result = _run(root / "bc.csv", out, study["c2"])
    assert result.exit_code == 1
    report = _rows(out / layout.BATCH_REPORT)
    assert report["b"]["status"] == "failed" and report["c"]["status"] == "done"
    assert report["a"]["status"] == "failed" and report["a"]["reason"].startswith("stale")
    assert "--config" in report["a"]["reason"]
    assert list(_rows(out / layout.PATHOLOGY_FEATURES)) == ["c"]
    result = CliRunner().invoke(cli_app, ["integrate", str(root / "abc.csv"), "--out",
                                          str(out)])
    assert result.exit_code == 0, result.output
    assert "1 of 3 samples used" in result.output
    excluded = _rows(out / "exclusions.csv")
    assert set(excluded) == {"a", "b"}
    assert "stale" in excluded["a"]["reason"]
    assert str(root / "b.tiff") in excluded["b"]["reason"]
    assert _run(root / "a.csv", out, study["c2"]).exit_code == 0  # a again, with this config
    report = _rows(out / layout.BATCH_REPORT)
    assert report["a"]["status"] == "done"
    assert str(root / "b.tiff") in report["b"]["reason"]  # its failure, not marked stale
    assert list(_rows(out / layout.PATHOLOGY_FEATURES)) == ["a", "c"]


def test_a_symlink_loop_fails_its_own_row_and_the_batch_goes_on(study):
    """Issue 29.5: a manifest path that is a symlink loop aborted the whole batch
    ('unexpected RuntimeError: Symlink loop', no batch report)."""
    root, out = study["root"], study["out"]
    (root / "loop.tiff").symlink_to("loop.tiff")
    manifest = root / "loop.csv"
    manifest.write_text(HEADER + "P1,baseline,loop,he,HE,loop.tiff,\n"
                        "P2,baseline,a,he,HE,a.tiff,\n")
    result = _run(manifest, out, study["c1"])
    assert result.exit_code == 1, result.output
    assert "unexpected" not in result.output
    report = _rows(out / layout.BATCH_REPORT)
    assert report["a"]["status"] == "done"
    assert report["loop"]["status"] == "failed"
    assert "symbolic link" in report["loop"]["reason"]


@pytest.mark.parametrize(("text", "words"), [
    (b"tissue:\n  mode: whole_image  # caf\xe9\n", "not UTF-8"),
    (b"slide:\n  working_mpp: .inf\n", "slide.working_mpp"),
])
def test_a_config_users_get_wrong_is_an_ordinary_error(tmp_path, text, words):
    """Issue 29 (item 8): a Latin-1 config and an .inf value were 'unexpected ... please
    report it' (or, for .inf, accepted); they exit 2 with the file and the key."""
    config = tmp_path / "pathology.yaml"
    config.write_bytes(text)
    manifest = tmp_path / "samples.csv"
    manifest.write_text(HEADER + "P1,baseline,s1,he,HE,a.svs,\n")
    result = _run(manifest, tmp_path / "out", config)
    assert result.exit_code == 2, result.output
    assert str(config) in result.output and words in result.output
    assert "unexpected" not in result.output


def test_an_unwritable_run_folder_is_an_ordinary_error(monkeypatch, capsys, tmp_path):
    """Issue 29 (item 8): a read-only OUT was 'unexpected PermissionError ... please report
    it'. The tests run as root (chmod does not stop root), so the refusal is planted."""
    import integration.cli as cli
    import pathology.run.batch as batch

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr(batch, "run_slides", read_only)
    monkeypatch.setitem(cli._STATE, "debug", False)
    manifest = tmp_path / "samples.csv"
    manifest.write_text(HEADER + "P1,baseline,s1,he,HE,a.svs,\n")
    with pytest.raises(SystemExit) as exited:
        cli.app(args=["slides", "run", str(manifest), "--out", str(tmp_path / "out")],
                prog_name="hccbio")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "out") in err and "Permission denied" in err
    assert "unexpected" not in err and "report" not in err
