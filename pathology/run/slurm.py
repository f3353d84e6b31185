"""``--scheduler slurm``: Dask workers as SLURM jobs (dask-jobqueue), checked and watched.

Before anything is submitted, :func:`check_slurm` asks the cluster whether the ``batch.slurm``
section can work: the SLURM commands are on ``PATH``, the partition exists (``sinfo``), and
``sbatch --test-only`` accepts the worker job as written (account, cores, memory, wall time,
extra directives). :func:`start_slurm_cluster` submits the jobs; each job first checks that it
sees the run folder (a token this run wrote into ``OUT``), so a run folder on a disk the
compute nodes do not share fails at once with a message instead of silently computing
nothing. :class:`SlurmWorkers` then watches the jobs while the batch runs: it waits for the
first worker (saying why if none can start), says which job a lost worker belonged to and how
it ended (wall time, scancel, out of memory, node failure), replaces jobs that SLURM ended
while slides remain (``batch.slurm.resubmit``; never those cancelled with scancel), and tells
the runner when no job is left, so that the unfinished slides are reported instead of waiting
forever.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pathology.config import SlurmSection
from pathology.run.layout import RunFolder

log = logging.getLogger("hccbio.pathology")

COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
PROBE_FILE = ".hccbio-slurm-probe"
PROBE_EXIT = 65  # the job's exit code when it cannot see the run folder
# squeue states of a job that is (or will be) running; anything else has ended or is ending
ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
         "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
# ended by SLURM, not by a person: replaced while slides remain (batch.slurm.resubmit)
REPLACED = {"TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
WHY = {"TIMEOUT": "its wall time (batch.slurm.walltime = {walltime}) was reached",
       "CANCELLED": "cancelled (scancel)",
       "OUT_OF_MEMORY": "it used more than batch.slurm.memory = {memory}",
       "NODE_FAIL": "its node failed", "PREEMPTED": "preempted by a job of higher priority",
       "BOOT_FAIL": "its node did not boot", "DEADLINE": "its deadline passed",
       "FAILED": "it failed", "COMPLETED": "it exited"}


class SlurmError(ValueError):
    """``--scheduler slurm`` cannot work as configured; the message names the problem, the
    ``batch.slurm`` key and the fix."""


@dataclass(frozen=True)
class JobEnd:
    """How a SLURM job ended, from ``scontrol show job`` (or ``sacct``)."""

    job_id: str
    state: str
    exit_code: str = ""
    node: str = ""
    reason: str = ""
    log: Path | None = None

    def describe(self, section: SlurmSection) -> str:
        """One line: job, node, state and why, and where its log is."""
        why = WHY.get(self.state, "").format(walltime=section.walltime, memory=section.memory)
        where = f" on {self.node}" if self.node and self.node != "(null)" else ""
        text = f"SLURM job {self.job_id}{where} ended {self.state}"
        if why:
            text += f": {why}"
        if self.exit_code and self.state == "FAILED":
            text += f" (exit code {self.exit_code})"
        if self.log is not None:
            text += f"; job log {self.log}"
        return text


def _slurm(command: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _last_lines(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[-3:]) if lines else ""


def partitions() -> dict[str, bool]:
    """The cluster's partitions (``sinfo``): name -> whether it is the default one."""
    done = _slurm(["sinfo", "--all", "-h", "-o", "%P"])
    if done.returncode != 0:
        raise SlurmError(f"sinfo failed: {_last_lines(done.stderr)} (is slurmctld reachable "
                         "from this node?)")
    names = {}
    for line in done.stdout.split():
        names[line.rstrip("*")] = line.endswith("*")
    return names


def check_slurm(section: SlurmSection, script: str) -> None:
    """Check the ``batch.slurm`` section against the cluster before anything is submitted.

    Parameters
    ----------
    section
        The ``batch.slurm`` section.
    script
        The worker job script (``SLURMCluster.job_script()``), tried with
        ``sbatch --test-only``.

    Raises
    ------
    SlurmError
        A SLURM command is missing, the partition does not exist (or there is no default
        one), or sbatch refuses the job (account, cores, memory, wall time, directives).
    """
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if missing:
        raise SlurmError(f"{', '.join(missing)} not found on PATH: --scheduler slurm submits "
                         "its Dask workers with sbatch and watches them with squeue. Run "
                         "hccbio where the SLURM commands work (a login node of the cluster) "
                         "or load them first (e.g. module load slurm)")
    known = partitions()
    listed = ", ".join(f"{name}{' (default)' if default else ''}"
                       for name, default in known.items()) or "none"
    for name in (section.partition or "").split(","):  # sbatch -p takes a list
        if name and name not in known:
            raise SlurmError(f"batch.slurm.partition: {name!r} is not a partition of this "
                             f"cluster (sinfo lists: {listed}); set batch.slurm.partition to "
                             "one of them")
    if section.partition is None and not any(known.values()):
        raise SlurmError(f"batch.slurm.partition is empty and this cluster has no default "
                         f"partition (sinfo lists: {listed}); set batch.slurm.partition")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as handle:
        handle.write(script)
    try:
        done = _slurm(["sbatch", "--test-only", handle.name])
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise SlurmError(f"sbatch refuses the worker job: {_last_lines(done.stderr)} (check "
                         "batch.slurm: partition, account, cores, memory, walltime, "
                         "job_extra_directives)")


def slurm_log_dir(section: SlurmSection, out: Path) -> Path:
    """Where the worker jobs write their logs: ``batch.slurm.log_dir``, else
    ``OUT/logs/slurm``."""
    if section.log_dir is None:
        return RunFolder(out).slurm_logs.resolve()
    return Path(os.path.expandvars(os.path.expanduser(section.log_dir))).resolve()


def start_slurm_cluster(section: SlurmSection, out: Path, *, env: dict[str, str],
                        silence_logs: int = logging.CRITICAL):
    """A dask-jobqueue ``SLURMCluster`` with ``section.jobs`` worker jobs submitted.

    Parameters
    ----------
    section
        The ``batch.slurm`` section.
    out
        The run folder: each job checks that it sees it, and (by default) writes its log into
        ``OUT/logs/slurm``.
    env
        Environment variables exported in each job (one thread per worker).
    silence_logs
        Level of the Dask scheduler's own log messages.

    Returns
    -------
    dask_jobqueue.SLURMCluster

    Raises
    ------
    SlurmError
        dask-jobqueue is not installed, or :func:`check_slurm` fails.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SlurmError("--scheduler slurm needs dask-jobqueue: pip install "
                         "'hccbio[slurm]' (or dask-jobqueue)") from None
    out = Path(out).resolve()
    logs = slurm_log_dir(section, out)
    logs.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    probe = out / PROBE_FILE
    out.mkdir(parents=True, exist_ok=True)
    probe.write_text(token + "\n")
    check = (f"grep -qx {token} {shlex.quote(str(probe))} 2>/dev/null || {{ echo \"hccbio: "
             f"the run folder {shlex.quote(str(out))} is not visible on $(hostname): put it "
             "on a filesystem the compute nodes share (docs/hpc.md)\" >&2; "
             f"exit {PROBE_EXIT}; }}")
    prologue = [*section.prologue, *(f"export {k}={v}" for k, v in env.items()), check]
    cluster = SLURMCluster(
        queue=section.partition, account=section.account, cores=section.cores,
        processes=section.cores, memory=section.memory, walltime=section.walltime,
        job_name=section.job_name, log_directory=str(logs), job_script_prologue=prologue,
        job_extra_directives=list(section.job_extra_directives),
        python=section.python or sys.executable, interface=section.interface,
        local_directory=section.local_directory, silence_logs=silence_logs,
        scheduler_options={"dashboard_address": ":0"})
    try:
        check_slurm(section, cluster.job_script())
    except BaseException:
        cluster.close()
        probe.unlink(missing_ok=True)
        raise
    cluster.scale(jobs=section.jobs)
    log.info("slurm: %d job(s) of %d core(s), %s, wall time %s, partition %s; job logs %s",
             section.jobs, section.cores, section.memory, section.walltime,
             section.partition or "(default)", logs)
    return cluster


def job_end(job_id: str) -> JobEnd | None:
    """How job ``job_id`` ended (None while it is still pending, running or completing)."""
    done = _slurm(["scontrol", "show", "job", "-o", job_id])
    if done.returncode == 0 and "JobState=" in done.stdout:
        fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout))
        state = fields.get("JobState", "UNKNOWN")
        if state in ALIVE or state == "COMPLETING":
            return None
        log_path = fields.get("StdErr") or fields.get("StdOut")
        if log_path:  # scontrol shows the pattern sbatch was given (-e DIR/NAME-%J.err)
            log_path = (log_path.replace("%%", "\0").replace("%J", job_id)
                        .replace("%j", job_id).replace("%x", fields.get("JobName", ""))
                        .replace("\0", "%"))
        return JobEnd(job_id, state, fields.get("ExitCode", ""), fields.get("NodeList", ""),
                      fields.get("Reason", ""), Path(log_path) if log_path else None)
    done = _slurm(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,NodeList"])
    parts = done.stdout.strip().split("|") if done.returncode == 0 else []
    if len(parts) == 3 and parts[0]:
        state = parts[0].split()[0]
        return None if state in ALIVE else JobEnd(job_id, state, parts[1], parts[2])
    return JobEnd(job_id, "UNKNOWN")


def _log_tail(path: Path | None, lines: int = 5) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


class SlurmWorkers:
    """The worker jobs of one run, watched while the batch runs (a thread polls ``squeue``).

    Parameters
    ----------
    cluster
        The ``SLURMCluster`` (:func:`start_slurm_cluster`).
    client
        A ``distributed.Client`` of that cluster.
    section
        The ``batch.slurm`` section.
    out
        The run folder.
    poll
        Seconds between looks at ``squeue``.
    """

    def __init__(self, cluster, client, section: SlurmSection, out: Path, *,
                 poll: float = 3.0) -> None:
        self.out = Path(out).resolve()
        self.logs = slurm_log_dir(section, self.out)
        self.cluster = cluster
        self.client = client
        self.section = section
        self.poll = poll
        self.jobs: dict[str, str] = {}  # dask-jobqueue name -> SLURM job id
        self._every_job: dict[str, str] = {}  # the same, replaced jobs included
        self.connected: set[str] = set()  # names whose worker joined the scheduler
        self.ended: dict[str, JobEnd] = {}  # job id -> how it ended
        self._seen_end: set[str] = set()  # job ids whose end the watch has acted on
        self._unsubmitted: dict[str, float] = {}  # worker spec -> when first seen without id
        self.replaced = 0
        self.stop_reason: str | None = None
        self._lock = threading.Lock()
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the runner asks ---------------------------------------------------------------
    def wait_for_first_worker(self, *, submit_timeout: float = 120.0) -> None:
        """Return once a worker has joined; meanwhile say which jobs are pending and why.

        Raises
        ------
        SlurmError
            Every job ended before a worker of it started (the jobs' logs are quoted), or
            sbatch submitted nothing.
        """
        started = last_note = time.monotonic()
        while True:
            self._look()
            if self.connected:
                return
            ids = [job_id for job_id in self.jobs.values() if job_id]
            if ids and all(job_id in self.ended for job_id in ids):
                raise SlurmError(self._nothing_started(ids))
            if not ids and time.monotonic() - started > submit_timeout:
                raise SlurmError("sbatch submitted no worker job in "
                                 f"{submit_timeout:.0f} s (check squeue and batch.slurm)")
            if time.monotonic() - last_note > 60:
                last_note = time.monotonic()
                log.info("slurm: waiting for the worker jobs: %s", self._queue_note(ids))
            time.sleep(1.0)

    def start(self) -> None:
        """Watch the jobs in a thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="hccbio-slurm-watch",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching."""
        self._quit.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def explain(self, error: BaseException) -> str | None:
        """Which job a lost worker (``KilledWorker``) belonged to and how that job ended."""
        worker = getattr(error, "last_worker", None)
        name = getattr(worker, "name", None)
        if name is None:
            return None
        self._refresh_jobs()
        job_id = next((j for n, j in self._every_job.items()
                       if str(name) == n or str(name).startswith(f"{n}-")), None)
        if job_id is None:
            return None
        end = self.ended.get(job_id)
        deadline = time.monotonic() + 30  # SLURM marks the job as it kills the workers
        while end is None and time.monotonic() < deadline:
            end = job_end(job_id)
            if end is None:
                time.sleep(1.0)
        if end is None:
            return f"SLURM job {job_id} lost its worker while still running"
        self.ended.setdefault(job_id, end)
        return end.describe(self.section)

    def record(self) -> dict:
        """For run.json: the jobs, how each ended, the logs folder."""
        ids = sorted({*self._every_job.values(), *self.ended}, key=lambda j: (len(j), j))
        for job_id in ids:
            if job_id not in self.ended:
                end = job_end(job_id)
                if end is not None:
                    self.ended[job_id] = end
        return {"jobs": {job_id: (self.ended[job_id].state if job_id in self.ended
                                  else "running at the end of the batch") for job_id in ids},
                "replaced": self.replaced, "logs": str(self.logs)}

    # -- the watch ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._quit.wait(self.poll):
            try:
                self._look()
            except Exception as error:  # the watch must never take the batch down
                log.debug("slurm: watch failed once: %s", error)

    def _refresh_jobs(self) -> None:
        with self._lock:
            for name, job in list(self.cluster.workers.items()):
                job_id = getattr(job, "job_id", None)
                self.jobs[name] = str(job_id) if job_id else self.jobs.get(name, "")
                if self.jobs[name]:
                    self._every_job[name] = self.jobs[name]

    def _look(self) -> None:
        self._refresh_jobs()
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {}) \
            if not self.client.status == "closed" else {}
        for info in workers.values():
            worker_name = str(info.get("name", ""))
            for name in self.jobs:
                if worker_name == name or worker_name.startswith(f"{name}-"):
                    self.connected.add(name)
        queued = self._squeue()
        finished: list[str] = []
        for name, job_id in list(self.jobs.items()):
            if not job_id or job_id in self._seen_end:
                continue
            if queued.get(job_id) in ALIVE:
                continue
            end = self.ended.get(job_id) or job_end(job_id)
            if end is None:
                continue
            self.ended[job_id] = end
            self._seen_end.add(job_id)
            finished.append(name)
            text = end.describe(self.section)
            tail = _log_tail(end.log) if name not in self.connected else ""
            log.warning("slurm: %s%s", text, f"; it ends: {tail}" if tail else "")
        replace = [name for name in finished if self.ended[self.jobs[name]].state in REPLACED
                   and name in self.connected]
        if replace and self.stop_reason is None:
            room = self.section.resubmit - self.replaced
            if room > 0:
                self._replace(replace[:room])
        alive = [name for name in list(self.cluster.worker_spec) if self._alive(name)]
        if not alive and self.connected and self.stop_reason is None:
            ends = ", ".join(f"job {job_id} {end.state}" for job_id, end in self.ended.items())
            self.stop_reason = (f"no SLURM worker job was left to finish this slide ({ends}"
                                "); its finished tiles are kept: run the same command "
                                "again to resume")
            log.warning("slurm: no worker job is left (%s): the slides not finished are "
                        "reported failed; run the same command again to resume", ends)

    def _alive(self, name: str) -> bool:
        """Whether the job of this worker spec is (or will soon be) running: submitted and
        not ended, or still being submitted (for at most two minutes)."""
        job_id = self.jobs.get(name, "")
        if job_id:
            self._unsubmitted.pop(name, None)
            return job_id not in self._seen_end
        first = self._unsubmitted.setdefault(name, time.monotonic())
        return time.monotonic() - first < 120

    def _replace(self, names: list[str]) -> None:
        async def forget() -> None:
            for name in names:
                self.cluster.worker_spec.pop(name, None)
                self.cluster.workers.pop(name, None)

        self.cluster.sync(forget)
        with self._lock:
            for name in names:
                self.jobs.pop(name, None)
        self.replaced += len(names)
        self.cluster.scale(jobs=self.section.jobs)
        log.warning("slurm: %d new worker job(s) replace those SLURM ended (%d of "
                    "batch.slurm.resubmit = %d)", len(names), self.replaced,
                    self.section.resubmit)

    def _squeue(self) -> dict[str, str]:
        done = _slurm(["squeue", "-h", "--name", self.section.job_name, "-o", "%i %T"])
        if done.returncode != 0:
            return {job_id: "RUNNING" for job_id in self.jobs.values()}  # ask again later
        words = done.stdout.split()
        return dict(zip(words[::2], words[1::2], strict=False))

    def _queue_note(self, ids: list[str]) -> str:
        done = _slurm(["squeue", "-h", "--name", self.section.job_name, "-o", "%i %T %R"])
        lines = [line for line in done.stdout.splitlines() if line.split()[:1] and
                 line.split()[0] in ids]
        return "; ".join(lines) or "submitting"

    def _nothing_started(self, ids: list[str]) -> str:
        parts = []
        for job_id in ids:
            end = self.ended[job_id]
            text = end.describe(self.section)
            tail = _log_tail(end.log)
            if "is not visible on" in tail:
                where = f" on {end.node}" if end.node else ""
                return (f"SLURM job {job_id}{where} cannot see the run folder {self.out}: "
                        "the workers write into it, so --out must be on a filesystem the "
                        "compute nodes share (NFS, Lustre, GPFS; not /tmp or a disk of this "
                        f"machine), see docs/hpc.md; job log {end.log}")
            if end.log is not None and not end.log.exists():
                text += (" and SLURM could not write that log on the node: the log folder "
                         "(OUT/logs/slurm, or batch.slurm.log_dir) must be on a filesystem "
                         "the compute nodes share (docs/hpc.md)")
            elif tail:
                text += f"; it ends: {tail}"
            parts.append(text)
        return ("no SLURM worker job started a Dask worker: " + "; ".join(parts) +
                " (check batch.slurm.prologue and batch.slurm.python)")


def remove_probe(out: Path) -> None:
    """Remove the token the jobs checked (:func:`start_slurm_cluster`)."""
    (Path(out) / PROBE_FILE).unlink(missing_ok=True)
