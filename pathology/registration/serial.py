"""Serial sections in a batch: register each slide of a block onto its reference and carry
the reference's regions across.

A block (manifest ``block_id``, per patient and timepoint) has one reference slide, the first
of modality ``registration.reference_modality`` (default H&E). For every other slide of the
block, :func:`register_serial_section` (its own Dask task, once the reference is finished):

- registers the slide onto the reference (:func:`~.record.register_images`) and writes
  ``slides/<id>/registration.json`` (reused while both files and the settings are unchanged);
- writes ``slides/<id>/qc/registration.png``: checkerboard of the two tissues, outlines, and the
  reference's regions mapped onto the slide;
- when the fit passes its checks and the reference has tumour regions, maps the reference's
  region map (:func:`save_region_map`, stored when its features were computed) onto the
  slide's tissue grid and stores it (``registered_regions`` in ``store.zarr``).

:func:`registered_regions` then gives the slide's features those regions, with
``regions.source = "registered:<reference sample_id>"``; a flagged fit is never used (the
slide keeps its own regions and QC's ``registration`` check says why).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathology.config import PathologyConfig
from pathology.registration.record import (
    REGISTRATION_FILE,
    RegistrationRecord,
    read_registration,
    register_images,
    write_registration,
)
from pathology.tissue.regions import CODES, RegionMap

log = logging.getLogger("hccbio.pathology")

REGION_ARRAY = "regions"
REGISTERED_ARRAY = "registered_regions"
FIGURE_FILE = "registration.png"
SOURCE_PREFIX = "registered:"


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


# -- region maps in store.zarr ----------------------------------------------------------------

def _group(folder: Path, mode: str):
    import zarr

    return zarr.open_group(str(Path(folder) / "store.zarr"), mode=mode)


def save_region_map(folder: Path, regions: RegionMap, *, name: str = REGION_ARRAY,
                    **attrs) -> None:
    """Store a slide's region codes (its grid pixel size and source as attributes)."""
    group = _group(folder, "a")
    array = group.create_array(name, shape=regions.codes.shape, dtype="uint8",
                               chunks=(min(1024, regions.codes.shape[0]),
                                       min(1024, regions.codes.shape[1])), overwrite=True)
    array[...] = regions.codes
    array.attrs.update({"mpp": regions.mpp, "source": regions.source,
                        "reason": regions.reason, **attrs})


def load_region_map(folder: Path, *, name: str = REGION_ARRAY) -> RegionMap | None:
    """A stored region map, or ``None``."""
    path = Path(folder) / "store.zarr"
    if not path.exists():
        return None
    try:
        array = _group(folder, "r")[name]
    except KeyError:
        return None
    return RegionMap(np.asarray(array[...]), float(array.attrs["mpp"]),
                     str(array.attrs["source"]), str(array.attrs.get("reason", "")))


def _drop(folder: Path, name: str) -> None:
    path = Path(folder) / "store.zarr"
    if path.exists():
        group = _group(folder, "a")
        if name in group:
            del group[name]


def registered_regions(folder: Path, mask_shape: tuple[int, int]) -> RegionMap | None:
    """The regions carried onto this slide from its reference, if a passing registration
    produced them for this tissue grid (``None`` otherwise)."""
    folder = Path(folder)
    if not (folder / REGISTRATION_FILE).is_file():
        return None
    try:
        record = read_registration(folder / REGISTRATION_FILE)
    except ValueError:
        return None
    regions = load_region_map(folder, name=REGISTERED_ARRAY)
    if not record.usable or regions is None or regions.codes.shape != tuple(mask_shape):
        return None
    return regions


def carriable(regions: RegionMap) -> bool:
    """Whether a reference's regions may be carried to its serial sections: annotations and
    marker-derived tumour, never a proxy or no tumour."""
    return regions.source == "annotation" or regions.source.startswith("marker:")


def carry_regions(reference: RegionMap, record: RegistrationRecord, tissue: np.ndarray, *,
                  tissue_mpp: float, reference_id: str) -> tuple[RegionMap, float]:
    """Map a reference's region codes onto a moving slide's tissue grid.

    Each tissue pixel of the moving slide takes the code found where it maps in the
    reference; moving tissue that maps outside the reference's tissue (a piece missing from
    the reference section) counts as stroma, as tissue outside an annotated tumour does.

    Returns
    -------
    RegionMap, float
        Source ``registered:<reference_id>``; the fraction of the moving tissue that mapped
        outside the reference's tissue.
    """
    if record.unit != "um":
        raise ValueError(f"{record.path}: regions are carried between slides with pixel sizes "
                         "(registered in um); this registration is in pixels")
    codes = record.transform.resample(reference.codes, spacing=reference.mpp,
                                      shape=tissue.shape, target_spacing=tissue_mpp)
    tissue = tissue.astype(bool)
    uncovered = tissue & (codes == 0)
    codes = np.where(tissue, np.where(codes == 0, CODES["stroma"], codes), 0).astype(np.uint8)
    fraction = float(uncovered.sum() / tissue.sum()) if tissue.any() else 0.0
    reason = (f"{reference.source} regions of {reference_id}, carried by registration "
              f"({record.path.name}); {100 * fraction:.1f}% of this tissue fell outside the "
              "reference's tissue and counts as stroma")
    return RegionMap(codes, tissue_mpp, f"{SOURCE_PREFIX}{reference_id}", reason), fraction


def _identity(moving: Path, fixed: Path, moving_mpp, fixed_mpp,
              config: PathologyConfig) -> dict:
    from pathology.pipeline import file_signature

    settings = {k: v for k, v in config.model_dump(mode="json").items()
                if k in ("registration", "tissue", "slide")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"moving": file_signature(moving), "fixed": file_signature(fixed),
            "moving_mpp": moving_mpp, "fixed_mpp": fixed_mpp, "settings_sha256": digest}


def register_serial_section(out: Path, moving, reference, config: PathologyConfig) -> str:
    """Register one slide onto its block's reference and carry the regions across.

    Parameters
    ----------
    out
        The run folder; both slides are finished in it (segmentation and features).
    moving, reference
        The two :class:`~pathology.pipeline.SlideJob`.
    config
        Resolved configuration.

    Returns
    -------
    str
        Empty when the registration passed and was used; else why it was not (flagged fit,
        reference without tumour regions). Never raises for a poor fit: that is a QC flag.
    """
    from pathology.features import read_tissue_window
    from pathology.registration.overlay import write_registration_figure

    folder = Path(out) / "slides" / moving.sample_id
    ref_folder = Path(out) / "slides" / reference.sample_id
    path = folder / REGISTRATION_FILE
    identity = _identity(moving.path, reference.path, moving.mpp, reference.mpp, config)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    regions = load_region_map(ref_folder)
    if previous.get("identity") == identity and previous.get("reference") == reference.sample_id:
        result = None
        record = read_registration(path)
    else:
        result = register_images(moving.path, reference.path, config=config,
                                 moving_mpp=moving.mpp, fixed_mpp=reference.mpp)
        write_registration(path, result, sample_id=moving.sample_id,
                           reference=reference.sample_id, identity=identity)
        record = read_registration(path)
    window = read_tissue_window(folder)
    problem = ""
    _drop(folder, REGISTERED_ARRAY)
    if not record.usable:
        problem = (f"registration onto {reference.sample_id} flagged "
                   f"({'; '.join(record.reasons)}); own regions kept")
    elif regions is None or not carriable(regions):
        problem = (f"reference {reference.sample_id} has no annotated or marker-derived tumour "
                   f"region to carry across ({regions.source if regions else 'none'}); own "
                   "regions kept")
    else:
        carried, uncovered = carry_regions(regions, record, window.mask,
                                           tissue_mpp=window.mpp,
                                           reference_id=reference.sample_id)
        save_region_map(folder, carried, name=REGISTERED_ARRAY,
                        uncovered_fraction=round(uncovered, 4))
    if result is not None:
        figure_regions = None
        if regions is not None and carriable(regions):
            view = result.moving
            figure_regions = result.transform.resample(
                regions.codes, spacing=regions.mpp, shape=view.mask.shape,
                target_spacing=view.spacing)
        write_registration_figure(folder / "qc" / FIGURE_FILE, result, regions=figure_regions,
                                  title=f"{moving.sample_id} onto {reference.sample_id}: "
                                  f"{result.status}"
                                  + (f" ({', '.join(c.name for c in result.checks if c.fired)})"
                                     if result.status != "pass" else ""))
    log.info("slide=%s step=registration reference=%s status=%s%s", moving.sample_id,
             reference.sample_id, record.status, f" note={problem}" if problem else "")
    return problem


def registration_checks(folder: Path) -> list:
    """The QC ``registration`` check of a slide (empty list when it was not registered).

    Returns
    -------
    list of pathology.qc.flags.Flag
    """
    from pathology.qc.flags import Flag

    path = Path(folder) / REGISTRATION_FILE
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return [Flag("registration", True, None, "registration.json",
                     f"{path}: unreadable ({error})")]
    final = next((s for s in reversed(record.get("stages", [])) if s.get("kept")), {})
    fired = record.get("status") != "pass"
    where = f"onto {record.get('reference') or record.get('fixed', {}).get('path')}"
    reason = (f"registration {where} flagged: {'; '.join(record.get('reasons', []))}; its "
              "regions are not used" if fired else
              f"registration {where}: {final.get('name', '?')} fit, tissue Dice "
              f"{final.get('dice', float('nan')):.3f}, NMI {final.get('nmi', float('nan')):.3f}")
    return [Flag("registration", fired, final.get("dice"),
                 "registration.min_dice, registration.min_nmi, ...", reason)]


# -- the batch's serial-section phase ---------------------------------------------------------

def task_serial_section(out: Path, moving, reference, config: PathologyConfig, *,
                        register: bool, reuse_qc: bool) -> str:
    """Worker task: register one slide onto its reference (when ``register``), then its
    features and QC (:func:`pathology.distributed.post_process_slide`).

    Returns
    -------
    str
        The problems of the post-processing (empty when none); a registration that could not
        be computed is one of them, a flagged one is a QC flag, not a problem.
    """
    from pathology.distributed import post_process_slide

    problems = []
    if register:
        try:
            register_serial_section(out, moving, reference, config)
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
        Sample id -> :class:`~pathology.pipeline.SlideJob` of the batch.
    held
        Sample id -> the :class:`~pathology.batch.BatchRow` of a moving slide whose
        segmentation finished (done or skipped) and whose features wait for its reference.
    failed
        Sample ids that failed in this batch (a failed reference is not registered onto).
    out, config
        The run folder and configuration.
    client
        A ``distributed.Client``, or ``None`` to run here.

    Returns
    -------
    list of pathology.batch.BatchRow
        One per held slide.
    """
    import time

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


def _serial_row(row, problem: str, usable: bool, reference, job, seconds: float):
    from pathology.batch import BatchRow

    note = "" if usable else (f"reference {reference.sample_id if reference else '?'} failed: "
                              "not registered")
    if problem:
        return BatchRow(job.sample_id, "failed", "; ".join(p for p in (problem, note) if p),
                        row.seconds + seconds, row.cells)
    reason = "; ".join(p for p in (row.reason, note) if p)
    return BatchRow(job.sample_id, row.status, reason, row.seconds + seconds, row.cells)
