"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd of Debian's
``slurm-wlm`` packages, started as this machine's one node (its real CPUs and memory, from
``slurmd -C``) with one partition, and stopped afterwards.

Everything lives in one folder: the munge key and socket, ``slurm.conf``, the daemons' state,
spool and logs. The daemons listen on free ports, so a system SLURM or a second test session on
the same machine is not disturbed. Jobs get a private ``/tmp`` (``job_container/tmpfs``), as on
a real cluster where ``/tmp`` is local to each node: a run folder under ``/tmp`` is not visible
to the workers, which is how the tests check that hccbio notices an unshared run folder.

Root is needed (slurmd starts jobs as their user; munged and the job container mount); the
packages are ``slurmctld slurmd slurm-client munge`` (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
PARTITION = "hccbio"


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the test cluster (not root, or the packages are missing)."""


def _find(name: str) -> str | None:
    return shutil.which(name)


def missing_programs() -> list[str]:
    """The SLURM and munge programs that are not installed."""
    return [name for name in DAEMONS if _find(name) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class SlurmTestCluster:
    """munged + slurmctld + slurmd in ``root``, one node (this machine), one partition.

    Parameters
    ----------
    root
        An empty folder outside ``/tmp`` (the jobs' ``/tmp`` is private to each job).
    private_tmp
        Give each job its own empty ``/tmp`` (``job_container/tmpfs``), as on a real
        cluster; not when this checkout or its Python live under ``/tmp``.
    """

    def __init__(self, root: Path, *, private_tmp: bool = True) -> None:
        self.root = Path(root)
        self.private_tmp = private_tmp
        self.conf = self.root / "slurm.conf"
        self.partition = PARTITION
        self._processes: list[subprocess.Popen] = []
        self._logs: list = []

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, hccbio) needs in its environment."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 90.0) -> None:
        """Write the key and config, start the daemons, wait until the node is idle.

        Raises
        ------
        SlurmUnavailable
            Not root, or a program is missing.
        RuntimeError
            A daemon did not start (its log is quoted).
        """
        if os.geteuid() != 0:
            raise SlurmUnavailable("the test SLURM cluster needs root (slurmd, munged)")
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)} (apt-get install "
                                   "slurmctld slurmd slurm-client munge)")
        for name in ("munge", "state", "spool", "logs", "jobs"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        socket_path = self.root / "munge" / "munge.socket"
        self._spawn([_find("munged"), "--foreground", "--force", f"--key-file={key}",
                     f"--socket={socket_path}", f"--pid-file={self.root / 'munge' / 'pid'}",
                     f"--seed-file={self.root / 'munge' / 'seed'}",
                     f"--log-file={self.root / 'logs' / 'munged.log'}"], "munged")
        self._wait(lambda: socket_path.exists(), timeout, "munged", "munged.log")

        node = subprocess.run([_find("slurmd"), "-C"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0]  # NodeName=... CPUs=...
        name = re.search(r"NodeName=(\S+)", node).group(1)
        self.cpus = int(re.search(r"CPUs=(\d+)", node).group(1))
        self.node = name
        (self.root / "job_container.conf").write_text(
            f"AutoBasePath=true\nBasePath={self.root / 'jobs'}\n")
        self.conf.write_text("\n".join([
            "ClusterName=hccbio-test",
            f"SlurmctldHost={name}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={socket_path}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'logs' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'logs' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            *(["JobContainerType=job_container/tmpfs", "PrologFlags=Contain"]
              if self.private_tmp else []),
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "KillWait=5",
            "MinJobAge=600",
            "InactiveLimit=0",
            # this machine as the one node, with what slurmd -C measured
            f"{node} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={name} Default=YES MaxTime=INFINITE "
            "State=UP",
            ""]))
        env = dict(os.environ, **self.env)
        self._spawn([_find("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)], "slurmctld",
                    env=env)
        self._spawn([_find("slurmd"), "-D", "-f", str(self.conf)], "slurmd", env=env)
        self._wait(self._node_idle, timeout, "the node", "slurmd.log")

    def _node_idle(self) -> bool:
        state = self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()
        return state == "idle"

    def run(self, command: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (sinfo, squeue, scontrol, scancel) against this cluster."""
        return subprocess.run([_find(command[0]) or command[0], *command[1:]], check=check,
                              capture_output=True, text=True,
                              env=dict(os.environ, **self.env), timeout=60)

    def jobs(self, name: str | None = None) -> dict[str, str]:
        """Job id -> state of the jobs SLURM still lists (optionally only those named
        ``name``)."""
        command = ["squeue", "-h", "-o", "%i %T"]
        if name:
            command += ["--name", name]
        lines = self.run(command).stdout.split()
        return dict(zip(lines[::2], lines[1::2], strict=True))

    def jobs_left(self, name: str, timeout: float = 60.0) -> dict[str, str]:
        """The jobs named ``name`` still listed once those SLURM is ending (``COMPLETING``:
        their processes are being cleaned up, which takes a moment after ``scancel`` or the
        job script's exit) have ended, or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(name)
            ending = {j: s for j, s in jobs.items() if s == "COMPLETING"}
            if len(ending) < len(jobs) or not ending or time.monotonic() > deadline:
                return jobs
            time.sleep(0.5)

    def job_state(self, job_id: str) -> str:
        """``JobState`` of a job, running or ended (``scontrol show job``)."""
        text = self.run(["scontrol", "show", "job", "-o", job_id]).stdout
        return re.search(r"JobState=(\S+)", text).group(1)

    def _spawn(self, command: list, name: str, env: dict | None = None) -> None:
        log = open(self.root / "logs" / f"{name}.stdout", "wb")  # noqa: SIM115 - closed in stop
        self._logs.append(log)
        self._processes.append(subprocess.Popen([str(c) for c in command], stdout=log,
                                                stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True))

    def _wait(self, ready, timeout: float, what: str, log: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p for p in self._processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} did not start:\n{self.log_tail(log)}")
            time.sleep(0.5)

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a daemon's log (``slurmctld.log``, ``slurmd.log``, ...)."""
        texts = []
        for path in (self.root / "logs" / name,
                     self.root / "logs" / f"{name.split('.')[0]}.stdout"):
            if path.is_file():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(texts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons (slurmd, slurmctld, munged) and wait for them."""
        if len(self._processes) == 3 and all(p.poll() is None for p in self._processes):
            try:
                self.run(["scancel", "--full", f"--partition={self.partition}"], check=False)
                deadline = time.monotonic() + 30
                while self.jobs() and time.monotonic() < deadline:
                    time.sleep(0.5)
            except (subprocess.SubprocessError, OSError):
                pass  # the daemons are stopped below all the same
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in self._logs:
            log.close()
        self._processes.clear()
        self._logs.clear()
