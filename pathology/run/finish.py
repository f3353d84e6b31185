"""A segmented slide's remaining steps, in order, in its slide folder.

QC finds the artefacts first (:func:`pathology.qc.check.measure_slide_qc`), the features step
then removes their areas and cells (:func:`pathology.features.compute_slide_features`, given
the regions a serial section's registration carried across), and the QC overlays are drawn
last, with the cells' phenotypes and regions and the registration's check
(:func:`pathology.qc.check.run_slide_qc`). The steps take the slide folder; this module
finds it in the run folder and hands each step what another step made.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pathology.cells.panels import PanelError
from pathology.config import PathologyConfig
from pathology.features import CLASSES_FILE, compute_slide_features
from pathology.io.folder import SlideFolder
from pathology.io.slide import SlideError
from pathology.qc.artefacts import load_artefact_mask
from pathology.qc.check import QcError, measure_slide_qc, qc_digest, run_slide_qc
from pathology.qc.flags import Flag
from pathology.registration.serial import registered_regions, registration_checks
from pathology.run.layout import RunFolder
from pathology.run.pipeline import SlideJob
from pathology.segmentation.nuclei import file_sha256


def slide_features(folder: Path, *, modality: str, stain: str, config: PathologyConfig) -> dict:
    """The features step on one slide folder, with the regions its registration carried
    across when it is a registered serial section (see
    :func:`pathology.features.compute_slide_features`)."""
    return compute_slide_features(folder, modality=modality, stain=stain, config=config,
                                  carried=registered_regions(folder))


def slide_qc(folder: Path, *, slide_path: Path, manifest_mpp: float | None,
             config: PathologyConfig, modality: str | None = None, measured=None) -> dict:
    """QC's overlays and ``qc.json`` of one slide folder, with the registration's check of a
    serial section (see :func:`pathology.qc.check.run_slide_qc`)."""
    checks: Sequence[Flag] = registration_checks(folder)
    return run_slide_qc(folder, slide_path=slide_path, manifest_mpp=manifest_mpp,
                        config=config, modality=modality, measured=measured, checks=checks)


def post_process_slide(job: SlideJob, out: Path, config: PathologyConfig, *,
                       reuse_qc: bool = False) -> str:
    """Everything computed from a finished slide's cells: QC artefacts, then phenotypes,
    regions and features on clean tissue, then the QC overlays.

    The order makes every density per mm^2 of clean tissue: QC finds the artefacts first
    (:func:`pathology.qc.check.measure_slide_qc`), the features step removes their areas and
    cells, and the overlays are drawn last, with the cells' phenotypes and regions.

    Parameters
    ----------
    reuse_qc
        For slides whose segmentation was reused: keep the artefact mask when it was found
        with the current QC settings, and the ``qc/`` folder when the cell classes it was
        drawn from are unchanged too (QC re-reads the slide, the costliest step of a resumed
        batch).

    Returns
    -------
    str
        Empty when all steps succeeded, else the reasons (the cells are kept either way;
        ``hccbio slides features OUT`` and ``hccbio slides qc OUT`` redo these steps alone).
    """
    from pathology.qc.check import qc_digest

    folder = RunFolder(out).slide(job.sample_id).root
    classes = folder / CLASSES_FILE
    classes_before = file_sha256(classes) if reuse_qc and classes.is_file() else None
    problems = []
    measured = None
    qc_failed = False
    stored = load_artefact_mask(folder) if reuse_qc else None
    if stored is None or stored.qc_config_sha256 != qc_digest(config):
        classes_before = None  # new artefacts: the overlays are redrawn
        try:
            measured = measure_slide_qc(folder, slide_path=job.path, manifest_mpp=job.mpp,
                                        config=config, modality=job.modality)
        except (QcError, SlideError, ValueError, OSError) as error:
            problems.append(f"qc: {' '.join(str(error).split())}")
            qc_failed = True
    try:
        slide_features(folder, modality=job.modality, stain=job.stain, config=config)
    except (PanelError, ValueError, OSError, KeyError) as error:
        problems.append(f"features: {' '.join(str(error).split())}")
    if classes_before is not None and _qc_current(folder, config) and (
            classes.is_file() and file_sha256(classes) == classes_before):
        return "; ".join(problems)
    if qc_failed:
        return "; ".join(problems)  # QC could not read the slide: no overlays either
    try:
        slide_qc(folder, slide_path=job.path, manifest_mpp=job.mpp, config=config,
                 modality=job.modality, measured=measured)
    except (QcError, SlideError, ValueError, OSError) as error:
        problems.append(f"qc: {' '.join(str(error).split())}")
    return "; ".join(problems)


def _qc_current(folder: Path, config: PathologyConfig) -> bool:
    """Whether the slide's qc.json was made with the current QC settings."""
    path = SlideFolder(folder).qc_json
    try:
        return json.loads(path.read_text()).get("qc_config_sha256") == qc_digest(config)
    except (OSError, json.JSONDecodeError):
        return False
