"""Batch at scale: Dask workers, locking, and a real process kill mid-batch."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from hcccore.lock import RunLock, RunLockedError
from pathology.config import BatchSection, PathologyConfig, TilingSection
from pathology.run.batch import run_slides
from pathology.run.pipeline import SlideJob
from pathology.run.schedulers import (
    NANNY_ENVIRON,
    available_cores,
    nanny_environ_unset,
    parse_scheduler,
    worker_env,
)


@pytest.fixture(scope="module")
def three_slides(he_tiff, tmp_path_factory):
    """Three copies of the real H&E slide under different names (a small batch)."""
    folder = tmp_path_factory.mktemp("batch")
    paths = []
    for name in ("s1", "s2", "s3"):
        path = folder / f"{name}.tiff"
        shutil.copy(he_tiff, path)
        paths.append(path)
    return paths


def _config() -> PathologyConfig:
    return PathologyConfig(tiling=TilingSection(tile_size=128, halo=48),
                           batch=BatchSection(tiles_per_task=3))


def test_parse_scheduler():
    assert parse_scheduler("sync").kind == "sync"
    assert parse_scheduler("local:3").workers == 3
    assert parse_scheduler("tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    with pytest.raises(ValueError, match="expected sync"):
        parse_scheduler("local:x")


def test_local_workers_share_the_cores(monkeypatch):
    """``local`` without N on a CPU: one worker per two cores, each worker's networks and
    numerical libraries on cores / N threads (this machine's real core count; the GPU check
    is pinned to 'none' so the rule under test is the CPU one)."""
    from pathology.segmentation import nuclei

    monkeypatch.setattr(nuclei, "gpu_available", lambda: False)
    cores = available_cores()
    default = parse_scheduler("local")
    assert default.workers == max(1, cores // 2)
    # a single worker owns every core: no thread cap (a cap made OpenVINO's networks contend)
    assert parse_scheduler("local:1").threads_per_worker is None
    assert "TF_NUM_INTRAOP_THREADS" not in worker_env(None)
    for workers in range(2, cores + 1):
        threads = parse_scheduler(f"local:{workers}").threads_per_worker
        assert threads == cores // workers
        env = worker_env(threads)
        assert env["TF_NUM_INTRAOP_THREADS"] == env["OMP_NUM_THREADS"] == str(threads)
    monkeypatch.setattr(nuclei, "gpu_available", lambda: True)
    assert parse_scheduler("local").workers == cores


_WORKER_ENV_PROBE = """
import os
from distributed import Client, LocalCluster
with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                  dashboard_address=":0") as cluster, Client(cluster) as client:
    seen = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset"))
print(next(iter(seen.values())))
"""


def test_worker_jobs_nanny_leaves_dask_malloc_setting_unset(tmp_path):
    """A SLURM job's nanny reads the configuration of its own process: started (as a job is)
    with the environment the jobs export, a real nanny spawns its worker without Dask's
    MALLOC_TRIM_THRESHOLD_ (which turns off glibc's adaptive mmap threshold); without it,
    Dask's default reaches the worker."""
    import dask
    import distributed  # noqa: F401  (registers Dask's distributed defaults)

    keys = list(dask.config.get(NANNY_ENVIRON))
    assert "MALLOC_TRIM_THRESHOLD_" in keys  # Dask's default, the case this guards
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}

    def probe(env: dict) -> str:
        done = subprocess.run([sys.executable, "-c", _WORKER_ENV_PROBE], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=True)
        return done.stdout.strip().splitlines()[-1]

    assert probe(base) != "unset"
    assert probe({**base, **nanny_environ_unset(keys)}) == "unset"


def test_two_workers_give_the_same_outputs_as_one(three_slides, shared_data, tmp_path):
    corrupt = shared_data / "slides" / "openslide-fixtures" / "unreadable.svs"
    jobs = [SlideJob("s1", three_slides[0], "he"), SlideJob("bad", corrupt, "he"),
            SlideJob("s2", three_slides[1], "he")]
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        rows = run_slides(jobs, out, _config(), scheduler=f"local:{workers}")
        results[workers] = {r.sample_id: r.status for r in rows}
        assert "Bogus marker" in next(r.reason for r in rows if r.sample_id == "bad")
    assert results[1] == results[2] == {"s1": "done", "bad": "failed", "s2": "done"}
    for sample in ("s1", "s2"):
        one = pq.read_table(tmp_path / "w1" / "slides" / sample / "cells.parquet")
        two = pq.read_table(tmp_path / "w2" / "slides" / sample / "cells.parquet")
        assert one.num_rows > 50
        assert one.equals(two)


def test_second_run_into_a_locked_folder_is_refused(three_slides, tmp_path):
    with RunLock(tmp_path / "out"), pytest.raises(RunLockedError, match="another hccbio run"):
        run_slides([SlideJob("s1", three_slides[0], "he")], tmp_path / "out", _config())
    # Released on exit: the next run goes ahead.
    rows = run_slides([SlideJob("s1", three_slides[0], "he")], tmp_path / "out", _config())
    assert rows[0].status == "done"


def _manifest(tmp_path, slides) -> str:
    path = tmp_path / "samples.csv"
    lines = ["patient_id,timepoint,sample_id,modality,stain,path,mpp"]
    lines += [f"P{i},baseline,s{i},he,HE,{p},0.5" for i, p in enumerate(slides, start=1)]
    path.write_text("\n".join(lines) + "\n")
    config = tmp_path / "pathology.yaml"
    config.write_text("tiling: {tile_size: 128, halo: 48}\nbatch: {tiles_per_task: 3}\n")
    return str(path), str(config)


def _statuses(out) -> dict[str, str]:
    path = out / "batch_report.csv"
    if not path.is_file():
        return {}
    with open(path) as handle:
        return {r["sample_id"]: r["status"] for r in csv.DictReader(handle)}


def test_killed_batch_resumes_without_losing_finished_slides(three_slides, tmp_path):
    manifest, config = _manifest(tmp_path, three_slides)
    command = [sys.executable, "-m", "integration.cli", "slides", "run", manifest, "--config",
               config, "--scheduler", "sync", "--quiet", "--out"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    reference = tmp_path / "reference"
    subprocess.run(command + [str(reference)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + [str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while "done" not in _statuses(killed).values() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {s for s, status in _statuses(killed).items() if status == "done"}
    assert finished and len(finished) < 3, "the kill must land mid-batch"

    result = subprocess.run(command + [str(killed)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # --quiet: one structured status line per slide, no library chatter.
    lines = [line for line in result.stderr.splitlines() if " status=" in line]
    assert len(lines) == 3, result.stderr
    assert all(re.search(r"slide=s\d status=(done|skipped) cells=\S+ seconds=", line)
               for line in lines), lines
    assert "distributed." not in result.stderr
    statuses = _statuses(killed)
    assert all(statuses[s] == "skipped" for s in finished)
    assert set(statuses.values()) <= {"done", "skipped"}
    for sample in ("s1", "s2", "s3"):
        a = pq.read_table(reference / "slides" / sample / "cells.parquet")
        b = pq.read_table(killed / "slides" / sample / "cells.parquet")
        assert a.equals(b)


def test_a_tissue_mask_cut_short_by_a_kill_is_computed_again(tmp_path):
    """A run killed between creating the tissue mask and writing its pixel size (seen in CI:
    the resumed slide failed with KeyError 'mpp') leaves a mask the store does not trust."""
    import numpy as np

    from pathology.run.store import TISSUE_MASK, SlideStore

    store = SlideStore(tmp_path / "s1", {"input": "x"})
    store.group.create_array(TISSUE_MASK, shape=(4, 4), dtype="uint8", overwrite=True)
    assert SlideStore(tmp_path / "s1", {"input": "x"}).tissue_mask() is None
    store.save_tissue_mask(np.ones((4, 4), bool), 8.0)
    mask, mpp = SlideStore(tmp_path / "s1", {"input": "x"}).tissue_mask()
    assert mask.all() and mpp == 8.0
