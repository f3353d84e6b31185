"""An exclusive lock on a run folder, so two runs never write into the same outputs.

``fcntl.flock`` on ``OUT/.hccbio.lock``: the kernel releases it when the holding process dies,
so a crashed run never leaves a stale lock behind. (On network filesystems flock must be
supported by the mount; NFSv4 and Lustre do.) The lock file holds the holder's pid, host and
start time, which a refused run names.

Every command that writes into a run folder takes it (``slides run``, ``blood run``,
``rnaseq run``, ``integrate``). It is not re-entrant: a second :class:`RunLock` on the same
folder is refused even inside the process that holds the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

LOCK_FILE = ".hccbio.lock"


class RunLockedError(RuntimeError):
    """Another process holds the run folder."""


class RunFolderError(ValueError):
    """The run folder cannot be a folder (a file has its name, or a parent is a file)."""


class RunLock:
    """Context manager holding ``OUT/.hccbio.lock``.

    Parameters
    ----------
    out
        The run folder (created if needed).

    Raises
    ------
    RunLockedError
        When another live process holds it; the message names the folder and that process.
    RunFolderError
        When the folder cannot be created because a file stands in the way.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> with RunLock(out):
    ...     try:
    ...         RunLock(out).__enter__()
    ...     except RunLockedError as error:
    ...         print("refused:", "another hccbio run" in str(error))
    refused: True
    """

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / LOCK_FILE
        self._handle: IO[str] | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunFolderError(
                f"{self.path.parent}: not a folder (a file has this name or a parent's); "
                "give --out a new folder or an earlier run's folder") from None
        handle = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise RunLockedError(
                f"{self.path.parent}: another hccbio run is writing into this folder "
                f"({holder}; lock file {self.path}); wait for it to finish or choose "
                "another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": datetime.now(timezone.utc).isoformat(
                                     timespec="seconds")}))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
