"""Dask distributed execution of slide batches: schedulers, worker-side tasks, progress.

A slide is prepared in one task (tissue, tiles, normalisation), its tiles are processed in
tasks of ``batch.tiles_per_task`` tiles that any worker may take, and a last task consolidates
its cells. Workers write tile parts straight into the slide's store (a shared filesystem on a
cluster), so results never travel through the scheduler.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathology.config import PathologyConfig
from pathology.run.auto_backend import available_cores
from pathology.run.pipeline import (
    ModelCache,
    SlideJob,
    SlidePlan,
    SlideResult,
    finalize_slide,
    prepare_slide,
    process_tiles,
)

log = logging.getLogger("hccbio.pathology")


def worker_env(threads: int | None) -> dict[str, str]:
    """Environment of a worker process whose networks and numerical libraries use ``threads``
    CPU threads (OpenVINO reads ``TF_NUM_INTRAOP_THREADS`` too); None: no limit, for a worker
    that has every core to itself. A limit set when it is not needed costs: OpenVINO then
    gives each compiled network its own threads, which contend with each other and with the
    worker's own (a one-worker local cluster ran 1.2x slower than one process).

    Examples
    --------
    >>> worker_env(2)["TF_NUM_INTRAOP_THREADS"], worker_env(2)["OMP_NUM_THREADS"]
    ('2', '2')
    >>> "TF_NUM_INTRAOP_THREADS" in worker_env(None), worker_env(None)["MALLOC_ARENA_MAX"]
    (False, '2')
    """
    # TensorFlow's start-up notes, printed before its logging starts. Two malloc arenas: the
    # read-ahead thread of every task otherwise got arenas of its own, and a worker's memory
    # crept by ~5 MB per tile (1.55 -> 2.26 GB over a 161-tile slide; flat at 1.5-1.7 GB so).
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX") or "2"}
    if threads is None:
        return env
    count = str(max(1, int(threads)))
    return {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "OPENBLAS_NUM_THREADS": count,
            "TF_NUM_INTRAOP_THREADS": count, "TF_NUM_INTEROP_THREADS": "1", **env}


SINGLE_THREAD_ENV = worker_env(1)
NANNY_ENVIRON = "distributed.nanny.pre-spawn-environ"
SCHEDULER_LOGGERS = ("distributed.scheduler", "distributed.deploy", "dask_jobqueue")
_LOCAL = re.compile(r"^local(?::(\d+))?$")


def nanny_environ_unset(keys: Iterable[str]) -> dict[str, str]:
    """Environment for worker jobs started outside this process (SLURM) under which their
    nanny sets none of ``keys`` from Dask's ``pre-spawn-environ``.

    A nanny reads its own configuration; Dask's environment-variable form lower-cases keys
    and cannot name ``MALLOC_TRIM_THRESHOLD_``, but configuration inherited through
    ``DASK_INTERNAL_INHERIT_CONFIG`` keeps them, and a key set to None is left unset.

    Examples
    --------
    >>> import dask.config
    >>> env = nanny_environ_unset(["MALLOC_TRIM_THRESHOLD_"])
    >>> dask.config.deserialize(env["DASK_INTERNAL_INHERIT_CONFIG"])
    {'distributed': {'nanny': {'pre-spawn-environ': {'MALLOC_TRIM_THRESHOLD_': None}}}}
    """
    import dask.config

    return {"DASK_INTERNAL_INHERIT_CONFIG": dask.config.serialize(
        {"distributed": {"nanny": {"pre-spawn-environ": {k: None for k in keys}}}})}


def default_local_workers() -> int:
    """Workers of ``--scheduler local`` without N.

    With a GPU (TensorFlow sees one), one per core: the CPU work per tile is then the
    bottleneck. On a CPU, one per two cores, each with two threads, so that a worker's network
    (read-ahead thread) and its measurement of the tile before run side by side: on two cores
    two single-threaded workers took 1.5x the time of one sync process on a 59-tile slide, one
    worker with both cores 1.06x (benchmarks/README.md, whole runs).
    """
    from pathology.segmentation.nuclei import gpu_available

    cores = available_cores()
    return cores if gpu_available() else max(1, cores // 2)


@dataclass(frozen=True)
class Scheduler:
    """A parsed ``--scheduler`` value."""

    kind: str  # sync | local | address | slurm
    workers: int | None = None
    address: str | None = None

    @property
    def threads_per_worker(self) -> int | None:
        """CPU threads of each local worker's networks: the cores shared among the workers;
        None for a single worker (every core is its own: no limit)."""
        workers = max(1, self.workers or 1)
        return None if workers == 1 else max(1, available_cores() // workers)


def parse_scheduler(spec: str) -> Scheduler:
    """Parse ``sync``, ``local[:N]``, ``tcp://HOST:PORT`` or ``slurm``.

    Examples
    --------
    >>> parse_scheduler("local:2")
    Scheduler(kind='local', workers=2, address=None)
    """
    spec = spec.strip()
    if spec == "sync":
        return Scheduler("sync")
    if spec == "slurm":
        return Scheduler("slurm")
    match = _LOCAL.match(spec)
    if match:
        workers = int(match.group(1)) if match.group(1) else default_local_workers()
        if workers < 1:
            raise ValueError(f"--scheduler {spec}: at least one worker is needed")
        return Scheduler("local", workers=workers)
    if re.match(r"^(tcp|tls|ucx|inproc)://\S+$", spec):
        return Scheduler("address", address=spec)
    raise ValueError(f"--scheduler {spec!r}: expected sync, local[:N], tcp://HOST:PORT or slurm")


@dataclass
class DaskSession:
    """A Dask client and, with ``--scheduler slurm``, the watch over its worker jobs."""

    client: Any
    slurm: Any = None  # pathology.run.slurm.SlurmWorkers

    def stopped(self) -> str | None:
        """Why no worker will come back (every SLURM job ended), or None."""
        return self.slurm.stop_reason if self.slurm is not None else None

    def explain(self, error: BaseException) -> str | None:
        """What became of the worker a ``KilledWorker`` names (its SLURM job's end)."""
        return self.slurm.explain(error) if self.slurm is not None else None

    def record(self) -> dict | None:
        """For run.json: the SLURM jobs and how they ended (None for other schedulers)."""
        return self.slurm.record() if self.slurm is not None else None


@contextmanager
def dask_client(scheduler: Scheduler, config: PathologyConfig,
                out: Path | None = None) -> Iterator[DaskSession]:
    """A :class:`DaskSession` for the scheduler (a LocalCluster or SLURM cluster is started
    and closed here; an existing scheduler is only connected to).

    ``batch.retries`` is the number of times a task may lose its worker (Dask's
    ``distributed.scheduler.allowed-failures``) before its slide fails, for the clusters
    started here. ``out`` (the run folder) is needed for ``slurm``: the jobs check that they
    see it, and write their logs into it unless ``batch.slurm.log_dir`` says otherwise.
    """
    import dask
    from distributed import Client, LocalCluster

    quiet = logging.ERROR if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL
    dask_environ = list(dask.config.get(NANNY_ENVIRON, {}))
    with ExitStack() as stack:
        stack.enter_context(dask.config.set(
            {"distributed.scheduler.allowed-failures": config.batch.retries,
             # Dask's default worker environment caps OMP/MKL/OpenBLAS at one thread and sets
             # MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap threshold: every
             # large numpy temporary of a tile is then mapped and unmapped again (page faults;
             # a one-worker cluster ran 1.2x slower than one process). The thread caps the
             # workers need come from worker_env instead. SLURM jobs' nannies read their own
             # configuration: they are told the same by nanny_environ_unset.
             NANNY_ENVIRON: {}}))
        if scheduler.kind == "local":
            cluster = LocalCluster(n_workers=scheduler.workers, threads_per_worker=1,
                                   processes=True,
                                   env=worker_env(scheduler.threads_per_worker),
                                   dashboard_address=":0",
                                   # a failed task's traceback ("Compute Failed") is logged at
                                   # ERROR by the worker: the batch report has the reason
                                   silence_logs=quiet)
            stack.callback(cluster.close)
        elif scheduler.kind == "slurm":
            from pathology.run.slurm import remove_probe, start_slurm_cluster

            if out is None:
                raise ValueError("--scheduler slurm needs the run folder")
            # the scheduler runs in this process: its notes on lost workers and tasks repeat
            # what the batch report and the SLURM watch say (the job, its end, its log)
            for name in SCHEDULER_LOGGERS:
                logger = logging.getLogger(name)
                stack.callback(logger.setLevel, logger.level)
                logger.setLevel(max(quiet, logger.level))
            stack.callback(remove_probe, out)
            cluster = start_slurm_cluster(
                config.batch.slurm, out,
                env={**SINGLE_THREAD_ENV, **nanny_environ_unset(dask_environ)},
                silence_logs=quiet)
            stack.callback(cluster.close)
        elif scheduler.kind == "address":
            cluster = None
        else:
            raise ValueError(f"no Dask client for scheduler kind {scheduler.kind!r}")
        client = Client(cluster if cluster is not None else scheduler.address)
        stack.callback(client.close)
        watch = None
        if scheduler.kind == "slurm":
            from pathology.run.slurm import SlurmWorkers

            watch = SlurmWorkers(cluster, client, config.batch.slurm, out)
            watch.wait_for_first_worker()
            watch.start()
            stack.callback(watch.close)
            # the workers leave before their scheduler closes, so that their logs end
            # without a 'connection closed' traceback; then the jobs are cancelled
            stack.callback(_retire_workers, client)
        yield DaskSession(client, watch)


def _retire_workers(client) -> None:
    try:
        client.retire_workers(close_workers=True)
    except Exception as error:  # closing goes on: the jobs are cancelled all the same
        log.debug("workers not retired: %s", error)


# -- worker-side tasks: module-level so that they pickle by reference ----------------------
_WORKER_MODELS: dict[str, ModelCache] = {}


def worker_models(config: PathologyConfig) -> ModelCache:
    """This process's model cache (models load once per worker, not once per task)."""
    key = config.segmentation.model_dump_json()
    if key not in _WORKER_MODELS:
        # TensorFlow, when a model needs it, is imported with TF_NUM_INTRAOP_THREADS applied
        # (pathology.segmentation.nuclei.import_tensorflow); an OpenVINO worker never imports it.
        _WORKER_MODELS[key] = ModelCache(config)
    return _WORKER_MODELS[key]


@dataclass(frozen=True)
class FixedFailure:
    """A slide failed for a reason a retry cannot change (a damaged file, no pixel size, an
    invalid model or panel): worker tasks return it instead of raising, so Dask does not
    retry the task (``batch.retries`` is for workers that die or run out of memory)."""

    reason: str


def _fixed_failure(error: ValueError) -> FixedFailure:
    return FixedFailure(" ".join(str(error).split()) or type(error).__name__)


def task_prepare(job: SlideJob, out: Path, config: PathologyConfig, fresh: bool = False
                 ) -> SlidePlan | FixedFailure:
    """Worker task: :func:`pathology.run.pipeline.prepare_slide` (``fresh``: ``--force``)."""
    try:
        return prepare_slide(job, out, config, worker_models(config), fresh=fresh)
    except ValueError as error:  # SlideError, PixelSizeError, ModelError are ValueErrors
        return _fixed_failure(error)


def task_tiles(plan: SlidePlan, out: Path, config: PathologyConfig,
               tile_indices: list[int]) -> int | FixedFailure:
    """Worker task: :func:`pathology.run.pipeline.process_tiles` on a subset of tiles."""
    try:
        return process_tiles(plan, out, config, worker_models(config), tile_indices)
    except ValueError as error:
        return _fixed_failure(error)


def task_finalize(plan: SlidePlan, out: Path, config: PathologyConfig, seconds: float,
                  computed: int) -> SlideResult | FixedFailure:
    """Worker task: :func:`pathology.run.pipeline.finalize_slide`."""
    try:
        return finalize_slide(plan, out, config, worker_models(config), seconds=seconds,
                              tiles_computed=computed)
    except ValueError as error:
        return _fixed_failure(error)


def tile_batches(plan: SlidePlan, size: int) -> list[list[int]]:
    """The plan's tile indices in consecutive groups of ``size``."""
    indices = [tile.index for tile in plan.tiles]
    return [indices[i:i + size] for i in range(0, len(indices), size)]
