"""``hccbio slides run --scheduler slurm`` against a real single-node SLURM cluster (issue 31).

The ``slurm`` fixture (conftest.py, ``slurm_cluster.py``) starts munged, slurmctld and slurmd
with this machine as the one node; the Dask workers are real sbatch jobs, started, cancelled
and ended at their wall time by SLURM itself. The slides are pathml's ``small_HE.svs`` (shared
data) and stardist's small H&E image, read from the cluster's shared folder (the jobs' ``/tmp``
is private, as on a real cluster). Each worker job has one core.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from integration.cli import app

HEADER = "patient_id,timepoint,sample_id,modality,stain,path,mpp\n"
SLIDE_FILES = ("cells.parquet", "cell_classes.parquet")


def _config(folder: Path, name: str, *, retries: int = 1, slurm: str = "") -> Path:
    """A pathology YAML: the logistic lymphocyte model, one tile per task (so that a slide's
    tiles spread over the workers), one-core worker jobs named ``name``."""
    path = folder / f"{name}.yaml"
    path.write_text(
        "phenotypes:\n  lymphocyte_model: models/lymphocyte_classifier\n"
        f"batch:\n  tiles_per_task: 1\n  retries: {retries}\n"
        "  slurm:\n    partition: hccbio\n    cores: 1\n    memory: 3GB\n    jobs: 2\n"
        f"    walltime: '00:10:00'\n    job_name: {name}\n" + slurm)
    return path


def _run(manifest: Path, out: Path, config: Path, scheduler: str = "slurm"):
    return CliRunner().invoke(app, ["slides", "run", str(manifest), "--out", str(out),
                                    "--config", str(config), "--scheduler", scheduler,
                                    "--quiet"])


def _report(out: Path) -> dict[str, dict]:
    table = pd.read_csv(out / "batch_report.csv", dtype=str, keep_default_na=False)
    return {row["sample_id"]: row for row in table.to_dict("records")}


def _assert_same_slide(out: Path, reference: Path, sample_id: str,
                       reference_id: str | None = None) -> None:
    """The slide's cells, cell classes and features equal the reference run's."""
    reference_id = reference_id or sample_id
    for name in SLIDE_FILES:
        a = pq.read_table(out / "slides" / sample_id / name)
        b = pq.read_table(reference / "slides" / reference_id / name)
        assert a.num_rows > 0 and a.equals(b), f"{sample_id}/{name} differs"
    got = json.loads((out / "slides" / sample_id / "features.json").read_text())
    want = json.loads((reference / "slides" / reference_id / "features.json").read_text())
    assert got["features"] == want["features"], sample_id
    assert got["n_nuclei"] == want["n_nuclei"]


@pytest.fixture(scope="module")
def slides(slurm, shared_data: Path) -> dict[str, Path]:
    """``small_HE.svs`` (shared data, read in place) and stardist's H&E image written as a
    0.5 um/px TIFF into the cluster's shared folder: sample id -> path."""
    from stardist.data import test_image_he_2d

    from integration.demo import write_pyramidal_tiff

    svs = shared_data / "slides" / "pathml-testdata" / "small_HE.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} not found")
    folder = slurm.shared / "slides"
    folder.mkdir()
    image = np.pad(test_image_he_2d(), ((64, 64), (64, 64), (0, 0)), constant_values=245)
    write_pyramidal_tiff(folder / "he.tiff", image, mpp=0.5)
    return {"small-he": svs, "stardist-he": folder / "he.tiff"}


def _manifest(folder: Path, rows: dict[str, Path]) -> Path:
    path = folder / "samples.csv"
    path.write_text(HEADER + "".join(f"P{i},baseline,{sample_id},he,HE,{file},\n"
                                     for i, (sample_id, file) in enumerate(rows.items())))
    return path


@pytest.fixture(scope="module")
def reference(slides, slurm) -> Path:
    """Both slides through ``slides run --scheduler sync``: the numbers to match."""
    folder = slurm.shared / "reference"
    folder.mkdir()
    result = _run(_manifest(folder, slides), folder / "out", _config(folder, "sync"), "sync")
    assert result.exit_code == 0, result.output
    return folder / "out"


def test_config_mistakes_are_named_before_anything_runs(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, {"s1": tmp_path / "absent.svs"})
    for slurm, key, words in (
            ("    extra: 1\n", "batch.slurm.extra", "Extra inputs"),
            ("    job_extra_directives: ['#SBATCH --qos=long']\n",
             "batch.slurm.job_extra_directives", "without '#SBATCH'"),
            ("    job_extra_directives: ['qos=long']\n", "batch.slurm.job_extra_directives",
             "starts with '-'")):
        config = _config(tmp_path, "bad", slurm=slurm)
        result = _run(manifest, tmp_path / "out", config)
        assert result.exit_code == 2, result.output
        assert key in result.output and words in result.output, result.output
    for line, key in (("walltime: '4 hours'", "batch.slurm.walltime"),
                      ("memory: 16 gigs", "batch.slurm.memory"),
                      ("partition: 'my queue'", "batch.slurm.partition")):
        config = _config(tmp_path, "bad")
        text = config.read_text()
        field = line.split(":")[0]
        config.write_text("\n".join(f"    {line}" if row.strip().startswith(f"{field}:")
                                    else row for row in text.splitlines()) + "\n")
        result = _run(manifest, tmp_path / "out", config)
        assert result.exit_code == 2 and key in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_the_cluster_is_asked_before_any_job_runs(slurm, slides, tmp_path: Path,
                                                  monkeypatch) -> None:
    """No sbatch, an unknown partition, a job sbatch refuses, a run folder the nodes do not
    see: each stops the run with exit 2 and a message that names the problem, and no job is
    left behind."""
    folder = slurm.shared / "checks"
    folder.mkdir()
    manifest = _manifest(folder, {"stardist-he": slides["stardist-he"]})
    config = _config(folder, "checks")

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without the SLURM commands
    result = _run(manifest, folder / "out", config)
    monkeypatch.undo()
    assert result.exit_code == 2
    assert "sbatch" in result.output and "not found on PATH" in result.output, result.output

    config.write_text(config.read_text().replace("partition: hccbio", "partition: gpu"))
    result = _run(manifest, folder / "out", config)
    assert result.exit_code == 2
    assert "batch.slurm.partition: 'gpu' is not a partition" in result.output, result.output
    assert "hccbio (default)" in result.output  # what sinfo lists

    config = _config(folder, "checks", slurm="    job_extra_directives: ['--mem=10000G']\n")
    result = _run(manifest, folder / "out", config)
    assert result.exit_code == 2
    assert "sbatch refuses the worker job" in result.output, result.output
    assert not slurm.jobs_left("checks")

    if not slurm.private_tmp:
        pytest.skip("this checkout lives under /tmp: jobs see the submitting node's /tmp")
    # A run folder under /tmp: each job's /tmp is its own, as on a real cluster.
    started = time.monotonic()
    result = _run(manifest, tmp_path / "out", _config(folder, "checks"))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"cannot see the run folder {tmp_path / 'out'}" in message, message
    assert "--out must be on a filesystem the compute nodes share" in message
    assert time.monotonic() - started < 120
    assert not slurm.jobs_left("checks")
    assert not (tmp_path / "out" / "slides").exists()


def test_slurm_run_gives_the_sync_run_numbers(slurm, slides, reference) -> None:
    folder = slurm.shared / "same"
    folder.mkdir()
    out = folder / "out"
    result = _run(_manifest(folder, slides), out, _config(folder, "same"))
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in _report(out).values()} == {"done"}
    for sample_id in slides:
        _assert_same_slide(out, reference, sample_id)
    record = json.loads((out / "run.json").read_text())["pathology"]
    assert record["scheduler"] == "slurm"
    jobs = record["slurm"]["jobs"]
    assert len(jobs) == 2, record["slurm"]
    logs = sorted(p.name for p in (out / "logs" / "slurm").iterdir())
    assert logs == sorted(f"same-{j}.{ext}" for j in jobs for ext in ("err", "out"))
    assert "Start worker" in (out / "logs" / "slurm" / f"same-{min(jobs)}.err").read_text()
    assert not slurm.jobs_left("same")  # the jobs end with the run
    # Nothing left to do: the same command again submits no job.
    result = _run(_manifest(folder, slides), out, _config(folder, "same"))
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in _report(out).values()} == {"skipped"}
    assert len(list((out / "logs" / "slurm").iterdir())) == 4


def test_scancel_mid_batch_then_the_same_command_finishes_it(slurm, slides, reference) -> None:
    folder = slurm.shared / "scancel"
    folder.mkdir()
    out = folder / "out"
    command = [sys.executable, "-m", "integration.cli", "slides", "run",
               str(_manifest(folder, slides)), "--out", str(out), "--config",
               str(_config(folder, "scancel")), "--scheduler", "slurm", "--quiet"]
    env = dict(os.environ, **slurm.env)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    parts = out / "slides" / "small-he" / "cell_parts"
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and any(parts.iterdir())) and time.monotonic() < deadline \
            and process.poll() is None:
        time.sleep(0.2)
    assert not (out / "slides" / "small-he" / "cells.parquet").exists(), "too late"
    running = slurm.jobs("scancel")
    assert running, "no worker job to cancel"
    slurm.run(["scancel", "--name", "scancel"])
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 1, output
    assert "distributed." not in output, output  # hccbio's own lines, not Dask's
    assert "slide=small-he status=failed" in output
    row = _report(out)["small-he"]
    assert row["status"] == "failed", output
    assert "CANCELLED" in row["reason"] and "run the same command again" in row["reason"]
    assert set(slurm.job_state(j) for j in running) == {"CANCELLED"}
    assert not slurm.jobs_left("scancel")  # none replaced: a person cancelled them

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {r["status"] for r in _report(out).values()} <= {"done", "skipped"}
    for sample_id in slides:
        _assert_same_slide(out, reference, sample_id)


def test_a_job_past_its_walltime_fails_only_its_slides(slurm, slides, reference) -> None:
    """One worker job at a time, a one-minute wall time, no retries. The first job takes 40 s
    to start its worker (as a slow module load would) and is given copies of small_HE for
    about a minute of work, so that SLURM ends it mid-batch (it checks time limits every 30
    s): the slides it was working on fail with that reason, a new job replaces it and
    finishes the batch (the small stardist slide, queued last, at least)."""
    folder = slurm.shared / "walltime"
    folder.mkdir()
    out = folder / "out"
    seconds = float(_report(reference)["small-he"]["seconds"])  # this machine's speed
    copies = min(8, max(3, math.ceil(90 / seconds)))
    rows = {f"small-he-{i}": slides["small-he"] for i in range(copies)}
    rows["stardist-he"] = slides["stardist-he"]
    marker = folder / "first-job"
    config = _config(folder, "walltime", retries=0, slurm=(
        "    prologue: ['if mkdir " + str(marker) + " 2>/dev/null; then sleep 40; fi']\n"))
    config.write_text(config.read_text().replace("walltime: '00:10:00'", "walltime: '1'")
                      .replace("jobs: 2", "jobs: 1"))
    result = _run(_manifest(folder, rows), out, config)
    report = _report(out)
    record = json.loads((out / "run.json").read_text())["pathology"]["slurm"]
    first = min(record["jobs"], key=int)
    assert record["jobs"][first] == "TIMEOUT", (record, result.output)
    assert record["replaced"] >= 1 and len(record["jobs"]) >= 2, record
    failed = {s for s, r in report.items() if r["status"] == "failed"}
    assert failed and result.exit_code == 1, result.output
    for sample_id in failed:
        reason = report[sample_id]["reason"]
        assert "ended TIMEOUT: its wall time (batch.slurm.walltime = 1) was reached" in reason
        assert "job log" in reason and "walltime-" in reason, reason
    table = pd.read_csv(out / "pathology_features.csv")
    assert set(table["sample_id"]) == set(report) - failed  # failed slides stay out of it
    done = set(report) - failed
    for sample_id in done:
        assert report[sample_id]["status"] == "done"
        _assert_same_slide(out, reference, sample_id,
                           "small-he" if sample_id.startswith("small") else sample_id)
    # the batch went on: slides finished after SLURM ended the first job
    text = slurm.run(["scontrol", "show", "job", "-o", first]).stdout
    ended = datetime.fromisoformat(re.search(r"EndTime=(\S+)", text).group(1)).timestamp()
    later = [s for s in done
             if (out / "slides" / s / "features.json").stat().st_mtime > ended]
    assert later, (ended, report)


def test_study_run_says_which_arms_run_on_the_cluster(slurm) -> None:
    """A small study (three patients' H&E crops at two time points, RNA-seq) with
    ``scheduler: slurm``: the slides run on the cluster, the other arms in the process, and
    ``hccbio study run`` says so."""
    pytest.importorskip("sksurv")
    import yaml

    from integration.demo import build_demo_study

    folder = slurm.shared / "study"
    analysis = {"landmark_months": 0.5,
                "cox": {"covariates": ["age"], "min_patients": 4, "n_km_plots": 1},
                "elastic_net": {"enabled": False}, "subtypes": {"enabled": False},
                "response": {"min_per_group": 1}}
    path = build_demo_study(folder / "data", out=folder / "out", n_patients=3, crop=128,
                            modalities=("he",), rnaseq=True, scrna=False, analysis=analysis)
    study = yaml.safe_load(path.read_text())
    pathology = path.parent / study["study"]["pathology_config"]
    settings = yaml.safe_load(pathology.read_text())
    settings.setdefault("batch", {})["slurm"] = {
        "partition": "hccbio", "cores": 1, "memory": "3GB", "jobs": 2, "job_name": "study"}
    pathology.write_text(yaml.safe_dump(settings))
    study["study"]["scheduler"] = "slurm"
    path.write_text(yaml.safe_dump(study))

    result = CliRunner().invoke(app, ["study", "run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("pathology") and "ran on the SLURM cluster: 2 job(s) of 1 "
               "core(s) and 3GB, wall time 04:00:00, partition hccbio; job logs "
               f"{folder / 'out' / 'logs' / 'slurm'}" in line for line in lines), lines
    for arm in ("blood", "transcriptome", "integration", "analysis"):
        assert f"{arm:16s} ran in this process (not on the workers)" in lines, lines
    report = _report(folder / "out")
    slides = {s: r for s, r in report.items() if s.endswith("_he")}
    assert len(slides) == 6 and {r["status"] for r in slides.values()} == {"done"}
    record = json.loads((folder / "out" / "run.json").read_text())["pathology"]
    assert record["scheduler"] == "slurm" and len(record["slurm"]["jobs"]) == 2
    assert (folder / "out" / "report.html").is_file()
