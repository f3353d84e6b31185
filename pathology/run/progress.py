"""Progress of a batch: a live display (rich) for people, structured log lines for logs."""

from __future__ import annotations

import logging

log = logging.getLogger("hccbio.pathology")


class BatchProgress:
    """Slides done / failed / remaining, tiles per second and time left.

    Parameters
    ----------
    n_slides
        Slides in the batch (skipped ones included).
    live
        Show a rich progress display; ``False`` (``--quiet``) leaves only log lines.
    dashboard
        The Dask dashboard address, shown when known.
    """

    def __init__(self, n_slides: int, *, live: bool, dashboard: str | None = None) -> None:
        self.n_slides = n_slides
        self.done = self.failed = self.skipped = 0
        self._progress = None
        if dashboard:
            log.info("dask dashboard: %s", dashboard)
        if live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"), transient=False)
            self._progress.start()
            self._tiles = self._progress.add_task("tiles", total=0, rate="", status=(
                f"dashboard {dashboard}" if dashboard else ""))
            self._slides = self._progress.add_task("slides", total=n_slides, rate="",
                                                   status="")

    def add_tiles(self, n: int) -> None:
        """A slide was prepared with ``n`` tiles to do."""
        if self._progress is not None:
            task = self._progress.tasks[self._tiles]
            self._progress.update(self._tiles, total=(task.total or 0) + n)

    def tiles_done(self, n: int) -> None:
        """``n`` more tiles finished."""
        if self._progress is not None:
            self._progress.advance(self._tiles, n)
            speed = self._progress.tasks[self._tiles].speed
            self._progress.update(self._tiles, rate=f"{speed:.2f} tiles/s" if speed else "")

    def slide_finished(self, status: str) -> None:
        """A slide reached ``done``, ``skipped`` or ``failed``."""
        setattr(self, status, getattr(self, status) + 1)
        if self._progress is not None:
            remaining = self.n_slides - self.done - self.failed - self.skipped
            self._progress.update(self._slides, advance=1, status=(
                f"done {self.done}  failed {self.failed}  skipped {self.skipped}  "
                f"remaining {remaining}"))

    def close(self) -> None:
        """Stop the live display."""
        if self._progress is not None:
            self._progress.stop()
