"""Serial sections, a dependency the runner resolves: each slide of a block is registered onto
the block's reference once both are segmented (and the reference's regions stored by its
features step), then its own features and QC follow.

A block (manifest ``block_id``, per patient and timepoint) has one reference slide, the first
of modality ``registration.reference_modality`` (default H&E): :func:`plan_serial_pairs`.
The batch holds each other slide of the block after its segmentation and hands it to
:func:`finish_serial_sections` at the end (one Dask task per slide on a cluster), which calls
the registration step (:func:`pathology.registration.serial.register_serial_section`) and then
the slide's remaining steps (:func:`pathology.run.finish.post_process_slide`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pathology.config import PathologyConfig
from pathology.registration.serial import register_serial_section
from pathology.run.finish import post_process_slide
from pathology.run.layout import RunFolder
from pathology.run.pipeline import SlideJob
from pathology.run.report import BatchRow


@dataclass(frozen=True)
class BlockMember:
    """A slide with the block it was cut from (from a manifest row)."""

    sample_id: str
    modality: str
    block: str  # e.g. "<patient_id>/<timepoint>/<block_id>"; empty: not in a block


@dataclass(frozen=True)
class SerialPair:
    """A slide to register (``sample_id``) onto its block's reference slide."""

    sample_id: str
    reference: str


def plan_serial_pairs(members: Iterable[BlockMember], *, reference_modality: str
                      ) -> tuple[list[SerialPair], list[str]]:
    """Pair every slide of a block with the block's reference.

    The reference is the first member (in manifest order) of ``reference_modality``.

    Returns
    -------
    pairs, notes
        The pairs, and one note per block without a reference (its slides keep their own
        regions).

    Examples
    --------
    >>> pairs, _ = plan_serial_pairs([BlockMember("A-he", "he", "p1/baseline/B1"),
    ...                               BlockMember("A-cd8", "ihc", "p1/baseline/B1")],
    ...                              reference_modality="he")
    >>> pairs
    [SerialPair(sample_id='A-cd8', reference='A-he')]
    """
    blocks: dict[str, list[BlockMember]] = {}
    for member in members:
        if member.block:
            blocks.setdefault(member.block, []).append(member)
    pairs, notes = [], []
    for block, group in blocks.items():
        reference = next((m for m in group if m.modality == reference_modality), None)
        if reference is None:
            notes.append(f"block {block}: no {reference_modality} slide to register onto; "
                         f"{', '.join(m.sample_id for m in group)} keep their own regions")
            continue
        pairs.extend(SerialPair(m.sample_id, reference.sample_id) for m in group
                     if m is not reference)
    return pairs, notes


def task_serial_section(out: Path, moving, reference, config: PathologyConfig, *,
                        register: bool, reuse_qc: bool) -> str:
    """Worker task: register one slide onto its reference (when ``register``), then its
    features and QC (:func:`pathology.run.finish.post_process_slide`).

    Returns
    -------
    str
        The problems of the post-processing (empty when none); a registration that could not
        be computed is one of them, a flagged one is a QC flag, not a problem.
    """
    problems = []
    if register:
        run = RunFolder(out)
        try:
            register_serial_section(run.slide(moving.sample_id).root,
                                    run.slide(reference.sample_id).root, moving=moving,
                                    reference=reference, config=config)
        except (ValueError, OSError, RuntimeError) as error:  # one pair never stops the batch
            problems.append(f"registration onto {reference.sample_id}: "
                            f"{' '.join(str(error).split())}")
    problem = post_process_slide(moving, out, config, reuse_qc=reuse_qc)
    return "; ".join(p for p in (*problems, problem) if p)


def finish_serial_sections(pairs: Iterable[SerialPair], jobs: dict, held: dict, failed: set,
                           out: Path, config: PathologyConfig, *, client=None) -> list:
    """The batch's last phase: every held slide registered onto its finished reference, then
    its features and QC; one Dask task per slide when ``client`` is given.

    Parameters
    ----------
    pairs
        From :func:`plan_serial_pairs`.
    jobs
        Sample id -> :class:`~pathology.run.pipeline.SlideJob` of the batch.
    held
        Sample id -> the :class:`~pathology.run.report.BatchRow` of a moving slide whose
        segmentation finished (done or skipped) and whose features wait for its reference.
    failed
        Sample ids that failed in this batch (a failed reference is not registered onto).
    out, config
        The run folder and configuration.
    client
        A ``distributed.Client``, or ``None`` to run here.

    Returns
    -------
    list of pathology.run.report.BatchRow
        One per held slide.
    """
    work = []
    for pair in pairs:
        if pair.sample_id not in held:
            continue
        reference = jobs.get(pair.reference)
        usable = reference is not None and pair.reference not in failed
        work.append((held[pair.sample_id], jobs[pair.sample_id], reference, usable))
    rows = []
    if client is None:
        for row, job, reference, usable in work:
            started = time.perf_counter()
            problem = task_serial_section(out, job, reference, config, register=usable,
                                          reuse_qc=row.status == "skipped")
            rows.append(_serial_row(row, problem, usable, reference, job,
                                    time.perf_counter() - started))
        return rows
    futures = [client.submit(task_serial_section, out, job, reference, config,
                             register=usable, reuse_qc=row.status == "skipped", pure=False,
                             retries=config.batch.retries)
               for row, job, reference, usable in work]
    for (row, job, reference, usable), future in zip(work, futures, strict=True):
        started = time.perf_counter()
        try:
            problem = future.result()
        except Exception as error:  # a dead worker fails this slide only
            problem = f"registration / features: {' '.join(str(error).split())}"
        rows.append(_serial_row(row, problem, usable, reference, job,
                                time.perf_counter() - started))
    return rows


def _serial_row(row: BatchRow, problem: str, usable: bool, reference: SlideJob | None,
                job: SlideJob, seconds: float) -> BatchRow:
    note = "" if usable else (f"reference {reference.sample_id if reference else '?'} failed: "
                              "not registered")
    if problem:
        return BatchRow(job.sample_id, "failed", "; ".join(p for p in (problem, note) if p),
                        row.seconds + seconds, row.cells)
    reason = "; ".join(p for p in (row.reason, note) if p)
    return BatchRow(job.sample_id, row.status, reason, row.seconds + seconds, row.cells)
