"""What every accuracy report does at its end: stamp and save its JSON, and write its table
into benchmarks/README.md (each report owns one block between markers)."""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from hcccore.atomic import write_text

README = Path(__file__).resolve().parent / "README.md"


def write_block(name: str, *, heading: str, date: str, body: str,
                readme: Path = README) -> None:
    """Replace the block ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->`` of the README with
    ``body`` (appended under ``## heading`` when the README has no such block yet).

    Parameters
    ----------
    name
        Block name; also the module that writes it (``benchmarks.<name>``, dashes for
        underscores).
    heading
        Section heading for a new block.
    date
        When the report was measured (stated in the block).
    body
        Markdown of the block.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    module = name.replace("-", "_")
    text = readme.read_text()
    block = (f"{begin}\n<!-- written by python -m benchmarks.{module} on {date}; do not "
             f"edit by hand -->\n\n{body}\n\n{end}")
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    write_text(readme, text)


def save_report(report: dict, out: Path, *, started: float) -> dict:
    """Stamp ``report`` (date, seconds since ``started``, machine) and write it atomically.

    Returns
    -------
    dict
        The stamped report.
    """
    report.update({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "seconds": round(time.perf_counter() - started, 1),
                   "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(report, indent=2, default=float) + "\n")
    return report
