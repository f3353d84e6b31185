"""Run many slides into one output folder: isolation of failures, batch report, provenance.

One bad slide is reported in ``OUT/batch_report.csv`` with its reason and never stops the
others; the report is rewritten atomically after every slide, so a killed batch loses nothing
already finished. ``OUT/run.json`` records versions, the resolved configuration and its hash,
the models and their SHA-256, the inputs and the timings.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError
from datetime import datetime, timezone
from pathlib import Path

from hcccore.batch_report import read_report, write_report
from hcccore.lock import RunLock
from pathology.config import PathologyConfig
from pathology.io.folder import FEATURES, SlideFolder
from pathology.io.metadata import file_signature
from pathology.io.slide import SlideError
from pathology.run.finish import post_process_slide
from pathology.run.layout import PATHOLOGY_FEATURES, RunFolder
from pathology.run.pipeline import (
    ModelCache,
    SlideJob,
    finalize_slide,
    prepare_slide,
    process_tiles,
)
from pathology.run.progress import BatchProgress
from pathology.run.provenance import write_run_json
from pathology.run.qc_summary import write_qc_summary
from pathology.run.report import BatchRow
from pathology.run.review_log import ReviewError
from pathology.run.schedulers import (
    DaskSession,
    FixedFailure,
    dask_client,
    parse_scheduler,
    task_finalize,
    task_prepare,
    task_tiles,
    tile_batches,
)
from pathology.run.serial import SerialPair, finish_serial_sections
from pathology.run.tables import finished_slides, stale_slides, write_run_features
from pathology.segmentation.nuclei import ModelError, file_sha256, resolve_model_path

log = logging.getLogger("hccbio.pathology")

FEATURES_FILE = FEATURES

def _configured_model_sha(job: SlideJob, config: PathologyConfig) -> str | None:
    """SHA-256 of the weights the config names for this slide (None for pretrained names)."""
    seg = config.segmentation
    folder = resolve_model_path(seg.model_for(job.modality))
    weights = folder / "weights_best.h5" if folder is not None else None
    return file_sha256(weights) if weights is not None and weights.is_file() else None


def _is_complete(out: Path, job: SlideJob, config: PathologyConfig) -> bool:
    """Whether a previous run finished this slide with the same input file and configuration."""
    folder = RunFolder(out).slide(job.sample_id).root
    features = folder / FEATURES_FILE
    if not features.is_file() or not SlideFolder(folder).cells.is_file():
        return False
    try:
        recorded = json.loads(features.read_text())
    except json.JSONDecodeError:
        return False
    if not job.path.exists():
        return False
    identity = recorded.get("identity", {})
    weights_sha = _configured_model_sha(job, config)
    if weights_sha is not None and identity.get("model") != weights_sha:
        return False  # the model's weights changed: segment again
    return (recorded.get("config_sha256") == config.digest()
            and identity.get("input") == file_signature(job.path)
            and identity.get("manifest_mpp") == job.mpp
            and identity.get("modality") == job.modality)


def run_slides(jobs: Iterable[SlideJob], out: Path, config: PathologyConfig, *,
               scheduler: str = "sync", force: bool = False,
               show_progress: bool = False,
               serial: Iterable[SerialPair] = ()) -> list[BatchRow]:
    """Process slides into ``out``, in this process or on Dask workers.

    Parameters
    ----------
    jobs
        The slides (for example the ``he``, ``ihc`` and ``mif`` rows of a manifest).
    out
        The run folder (created if needed). Finished slides with the same input and
        configuration are skipped; unfinished ones resume at their first unfinished tile.
    config
        Resolved configuration.
    scheduler
        ``sync`` (this process), ``local[:N]``, ``tcp://HOST:PORT`` or ``slurm`` (see
        :func:`pathology.run.schedulers.parse_scheduler`).
    force
        Recompute slides even when finished.
    show_progress
        Live progress display (otherwise log lines only).
    serial
        Serial sections (:func:`pathology.run.serial.plan_serial_pairs`): each such
        slide is registered onto its block's reference once both are segmented, and its
        features and QC follow (docs/registration.md).

    Returns
    -------
    list of BatchRow
        One per job, in order.

    Raises
    ------
    RunLockedError
        Another run holds ``out``.
    """
    out = Path(out)
    jobs = list(jobs)
    sched = parse_scheduler(scheduler)
    with RunLock(out):
        report = read_report(out)
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows: dict[str, BatchRow] = {}

        def record(row: BatchRow) -> None:
            rows[row.sample_id] = row
            report[row.sample_id] = row
            write_report(out, report)
            progress.slide_finished(row.status)
            level = logging.WARNING if row.status == "failed" else logging.INFO
            log.log(level, "slide=%s status=%s cells=%s seconds=%.1f reason=%s",
                    row.sample_id, row.status, "-" if row.cells is None else row.cells,
                    row.seconds, row.reason or "-")

        todo = []
        pairs = list(serial)
        deferred = {p.sample_id for p in pairs}
        held: dict[str, BatchRow] = {}  # serial sections waiting for their reference
        progress = BatchProgress(len(jobs), live=show_progress)
        try:
            for job in jobs:
                if not force and job.sample_id in deferred and _is_complete(out, job, config):
                    held[job.sample_id] = BatchRow(job.sample_id, "skipped",
                                                   "already done with this input and config",
                                                   0.0)
                elif not force and _is_complete(out, job, config):
                    # Segmentation is reused; the cheap downstream steps follow the config.
                    problem = post_process_slide(job, out, config, reuse_qc=True)
                    record(BatchRow(job.sample_id, "failed" if problem else "skipped",
                                    problem or "already done with this input and config", 0.0))
                else:
                    todo.append(job)
            cluster_record = None
            if sched.kind == "sync" or not todo:  # nothing to compute: no cluster started
                models = ModelCache(config)
                for job in todo:
                    row = _run_one_sync(job, out, config, models, progress,
                                        post=job.sample_id not in deferred, fresh=force)
                    if job.sample_id in deferred and row.status != "failed":
                        held[job.sample_id] = row
                    else:
                        record(row)
                for row in finish_serial_sections(pairs, {j.sample_id: j for j in jobs}, held,
                                                  _failed_ids(rows), out, config):
                    record(row)
                model_record = models.describe()
            else:
                if sched.kind == "local":
                    resolve_auto_backends(config, {job.modality for job in todo})
                with dask_client(sched, config, out) as session:
                    progress.close()
                    progress = BatchProgress(len(jobs), live=show_progress,
                                             dashboard=session.client.dashboard_link)
                    for status in ("skipped",):
                        for _ in range(sum(r.status == status for r in rows.values())):
                            progress.slide_finished(status)
                    model_record = _run_dask(session, todo, out, config, progress, record,
                                             deferred, held, fresh=force)
                    finish_client = None if session.stopped() else session.client
                    for row in finish_serial_sections(pairs, {j.sample_id: j for j in jobs},
                                                      held, _failed_ids(rows), out, config,
                                                      client=finish_client):
                        record(row)
                    cluster_record = session.record()
        finally:
            progress.close()
        results = [rows[job.sample_id] for job in jobs]
        ran = {job.sample_id for job in jobs}
        already = {sid for sid, row in report.items() if row.status == "failed"}
        for sample_id, reason in stale_slides(out, config, skip=ran | already).items():
            report[sample_id] = BatchRow(sample_id, "failed", reason, 0.0)
            log.warning("slide=%s status=failed reason=%s", sample_id, reason)
        write_report(out, report)
        finished = finished_slides(out, report)
        # every finished slide of OUT, not only this run's (earlier runs' too); rewritten even
        # when none is left, so that a slide whose latest run failed leaves the table
        if finished or (out / PATHOLOGY_FEATURES).is_file():
            write_run_features(out, sample_ids=finished)
        if finished:
            try:
                write_qc_summary(out)
            except ReviewError as error:  # the slides are done; the summary needs the log
                log.error("qc/qc_summary.csv not written: %s", error)
        write_run_json(out, jobs, config, model_record, results, started_at, scheduler,
                       cluster=cluster_record)
    return results


def resolve_auto_backends(config: PathologyConfig, modalities: set[str]) -> None:
    """Measure ``segmentation.backend: auto``'s choice for these slide kinds now, once, when
    this CPU has none cached, so that a local cluster's workers (one thread each, started
    together) read it instead of each measuring at once. The measurement runs in a child
    process: it loads TensorFlow and both backends' networks, which this coordinating process
    need not keep. A failure here is left to the slides (their model errors say more)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if config.segmentation.backend != "auto":
        return
    try:
        models = ModelCache(config)
        missing = sorted(m for m in modalities if models.backend_for(m, measure_missing=False)
                         is None)
        if not missing:
            return
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_measure_backends, config, missing).result()
    except Exception as error:  # the workers measure, or report the model's problem
        log.debug("backend choice not measured before the cluster: %s", error)


def _measure_backends(config: PathologyConfig, modalities: list[str]) -> None:
    models = ModelCache(config)
    for modality in modalities:
        models.backend_for(modality)


def _failed_ids(rows: dict[str, BatchRow]) -> set[str]:
    return {sid for sid, row in rows.items() if row.status == "failed"}


def _run_one_sync(job: SlideJob, out: Path, config: PathologyConfig, models: ModelCache,
                  progress: BatchProgress, post: bool = True, fresh: bool = False
                  ) -> BatchRow:
    started = time.perf_counter()
    try:
        plan = prepare_slide(job, out, config, models, fresh=fresh)
        progress.add_tiles(len(plan.tiles))
        computed = 0
        for batch in tile_batches(plan, config.batch.tiles_per_task):
            computed += process_tiles(plan, out, config, models, batch)
            progress.tiles_done(len(batch))
        result = finalize_slide(plan, out, config, models,
                                seconds=time.perf_counter() - started, tiles_computed=computed)
        problem = post_process_slide(job, out, config) if post else ""
        return BatchRow(job.sample_id, "failed" if problem else "done", problem or result.note,
                        time.perf_counter() - started, result.n_cells)
    except Exception as error:  # one slide never stops the batch
        return _failed(job, error, time.perf_counter() - started)


def _failed(job: SlideJob, error: BaseException, seconds: float,
            session: DaskSession | None = None) -> BatchRow:
    lost = session.explain(error) if session is not None else None
    stopped = session.stopped() if session is not None else None
    if isinstance(error, (SlideError, ModelError, OSError, ValueError)):
        reason = _one_line(error)
    elif type(error).__name__ == "KilledWorker" and lost:
        reason = f"the worker processing this slide was lost: {lost}"
    elif type(error).__name__ == "KilledWorker":
        reason = ("the worker processing this slide died (out of memory or crashed) "
                  f"after retries: {_one_line(error)}")
    elif isinstance(error, CancelledError) and stopped:
        reason = stopped
    else:
        reason = f"unexpected {type(error).__name__}: {_one_line(error)}"
        log.error("slide=%s unexpected error (hccbio --debug shows the traceback): %s",
                  job.sample_id, reason)
        log.debug("slide=%s traceback\n%s", job.sample_id, "".join(
            traceback.format_exception(error)))
    return BatchRow(job.sample_id, "failed", reason, seconds)


def _finished(session: DaskSession, pending, meta: dict) -> Iterator:
    """``pending``'s futures as they finish. When no worker can come back (every SLURM job
    ended), the futures left are cancelled, so that they finish too, with that reason."""
    cancelled = False
    while not pending.is_empty():
        done = pending.next_batch(block=False)
        if done:
            yield from done
            continue
        if not cancelled and session.stopped():
            cancelled = True
            session.client.cancel(list(meta))
        time.sleep(0.05)


def _run_dask(session, todo: list[SlideJob], out: Path, config: PathologyConfig,
              progress: BatchProgress, record, deferred: set[str] = frozenset(),
              held: dict | None = None, *, fresh: bool = False) -> dict:
    """The slides' tasks on a :class:`DaskSession` (or a plain ``distributed.Client``)."""
    from distributed import as_completed

    if not isinstance(session, DaskSession):
        session = DaskSession(session)
    client = session.client
    retries = config.batch.retries
    pending = as_completed()
    meta: dict = {}
    state: dict[str, dict] = {}

    def submit(step: str, job: SlideJob, function, *args) -> None:
        future = client.submit(function, *args, retries=retries, pure=False)
        meta[future] = (step, job)
        pending.add(future)
        if session.stopped():  # no worker will take it
            future.cancel()

    for job in todo:
        state[job.sample_id] = {"started": time.perf_counter(), "left": 0, "computed": 0,
                                "failed": False}
        submit("prepare", job, task_prepare, job, out, config, fresh)
    for future in _finished(session, pending, meta):
        step, job = meta.pop(future)
        slide = state[job.sample_id]
        if slide["failed"]:
            continue
        try:
            value = future.result()
        except Exception as error:
            slide["failed"] = True
            record(_failed(job, error, time.perf_counter() - slide["started"], session))
            continue
        if isinstance(value, FixedFailure):  # returned, not raised: Dask did not retry it
            slide["failed"] = True
            record(BatchRow(job.sample_id, "failed", value.reason,
                            time.perf_counter() - slide["started"]))
            continue
        if step == "prepare":
            slide["plan"] = value
            batches = tile_batches(value, config.batch.tiles_per_task)
            progress.add_tiles(len(value.tiles))
            slide["left"] = len(batches)
            for batch in batches:
                submit("tiles", job, task_tiles, value, out, config, batch)
            if not batches:
                submit("finalize", job, task_finalize, value, out, config, 0.0, 0)
        elif step == "finalize":
            slide["note"], slide["cells"] = value.note, value.n_cells
            slide["backend"] = value.backend
            if job.sample_id in deferred and held is not None:  # after its reference
                held[job.sample_id] = BatchRow(job.sample_id, "done", value.note,
                                               time.perf_counter() - slide["started"],
                                               value.n_cells)
                continue
            submit("post", job, post_process_slide, job, out, config)
        elif step == "tiles":
            slide["computed"] += value
            slide["left"] -= 1
            progress.tiles_done(config.batch.tiles_per_task)
            if slide["left"] == 0:
                submit("finalize", job, task_finalize, slide["plan"], out, config,
                       time.perf_counter() - slide["started"], slide["computed"])
        else:
            record(BatchRow(job.sample_id, "failed" if value else "done",
                            value or slide["note"], time.perf_counter() - slide["started"],
                            slide.get("cells")))
    models: dict = {}
    used: dict[str, set[str]] = {}  # what ran the network, per kind (the workers' backend)
    for slide in state.values():
        plan = slide.get("plan")
        if plan is not None:
            models.setdefault(plan.kind, plan.identity["model"])
            if slide.get("backend"):
                used.setdefault(plan.kind, set()).add(slide["backend"])
    record = {kind: {"sha256": sha, "backend": " + ".join(sorted(used.get(kind, ())))}
              for kind, sha in models.items()}
    classes = {slide["plan"].identity["cell_classes"]: slide["plan"].kind
               for slide in state.values()
               if slide.get("plan") is not None and "cell_classes" in slide["plan"].identity}
    for sha, kind in classes.items():  # the H&E nucleus-class network follows that backend
        record[f"cell_classes:{sha[:12]}"] = {"sha256": sha, "kind": "patch_cnn",
                                              "backend": record[kind]["backend"]}
    return record


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
