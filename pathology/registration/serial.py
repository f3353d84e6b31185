"""Serial sections: register a slide onto its block's reference slide and carry the
reference's regions across.

A block (manifest ``block_id``, per patient and timepoint) has one reference slide, the first
of modality ``registration.reference_modality`` (default H&E); which slide is registered onto
which, and when, is the runner's (:mod:`pathology.run.serial`). For one slide and its
reference, both segmented and the reference's regions stored, :func:`register_serial_section`:

- registers the slide onto the reference (:func:`~.record.register_images`) and writes
  ``slides/<id>/registration.json`` (reused while both files and the settings are unchanged);
- writes ``slides/<id>/qc/registration.png``: checkerboard of the two tissues, outlines, and the
  reference's regions mapped onto the slide;
- when the fit passes its checks and the reference has tumour regions, maps the reference's
  region map (:func:`pathology.tissue.regions.save_region_map`, stored when its features were
  computed) onto the slide's tissue grid and stores it (``registered_regions`` in
  ``store.zarr``).

:func:`registered_regions` then gives the slide's features step those regions, with
``regions.source = "registered:<reference sample_id>"``; a flagged fit is never used (the
slide keeps its own regions and QC's ``registration`` check says why).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from pathology.config import PathologyConfig
from pathology.io.metadata import file_signature
from pathology.registration.record import (
    REGISTRATION_FILE,
    RegistrationRecord,
    read_registration,
    register_images,
    write_registration,
)
from pathology.tissue.detect import read_tissue_mask
from pathology.tissue.regions import (
    CODES,
    RegionMap,
    drop_region_map,
    load_region_map,
    save_region_map,
)

log = logging.getLogger("hccbio.pathology")

REGISTERED_ARRAY = "registered_regions"
FIGURE_FILE = "registration.png"
SOURCE_PREFIX = "registered:"


def registered_regions(folder: Path, mask_shape: tuple[int, int] | None = None
                       ) -> RegionMap | None:
    """The regions carried onto this slide from its reference, if a passing registration
    produced them (for this tissue grid, when ``mask_shape`` is given); ``None`` otherwise."""
    folder = Path(folder)
    if not (folder / REGISTRATION_FILE).is_file():
        return None
    try:
        record = read_registration(folder / REGISTRATION_FILE)
    except ValueError:
        return None
    regions = load_region_map(folder, name=REGISTERED_ARRAY)
    if not record.usable or regions is None or (
            mask_shape is not None and regions.codes.shape != tuple(mask_shape)):
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
    settings = {k: v for k, v in config.model_dump(mode="json").items()
                if k in ("registration", "tissue", "slide")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"moving": file_signature(moving), "fixed": file_signature(fixed),
            "moving_mpp": moving_mpp, "fixed_mpp": fixed_mpp, "settings_sha256": digest}


def register_serial_section(folder: Path, reference_folder: Path, *, moving, reference,
                            config: PathologyConfig) -> str:
    """Register one slide onto its block's reference and carry the regions across.

    Parameters
    ----------
    folder, reference_folder
        The two slide folders: both slides are segmented, the reference's features (and so
        its region map) computed.
    moving, reference
        The two slides: anything with ``sample_id``, ``path`` (the slide file) and ``mpp``
        (the manifest's pixel size or None), such as :class:`pathology.run.pipeline.SlideJob`.
    config
        Resolved configuration.

    Returns
    -------
    str
        Empty when the registration passed and was used; else why it was not (flagged fit,
        reference without tumour regions). Never raises for a poor fit: that is a QC flag.
    """
    from pathology.registration.overlay import write_registration_figure

    folder, ref_folder = Path(folder), Path(reference_folder)
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
    mask, mask_mpp = read_tissue_mask(folder)
    problem = ""
    drop_region_map(folder, REGISTERED_ARRAY)
    if not record.usable:
        problem = (f"registration onto {reference.sample_id} flagged "
                   f"({'; '.join(record.reasons)}); own regions kept")
    elif regions is None or not carriable(regions):
        problem = (f"reference {reference.sample_id} has no annotated or marker-derived tumour "
                   f"region to carry across ({regions.source if regions else 'none'}); own "
                   "regions kept")
    else:
        carried, uncovered = carry_regions(regions, record, mask, tissue_mpp=mask_mpp,
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
