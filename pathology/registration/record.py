"""Register two images end to end, and store / read / apply the result (``registration.json``).

:func:`register_images` is what ``hccbio slides register`` and the batch call;
:func:`map_points_csv` is ``hccbio slides map-points``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from hcccore.atomic import write_text
from hcccore.provenance import package_versions
from pathology.config import PathologyConfig
from pathology.io.folder import REGISTRATION
from pathology.registration.align import Alignment, align
from pathology.registration.images import (
    ImageSource,
    Kind,
    Overview,
    RegistrationInputError,
    open_source,
    read_overview,
    registration_spacing,
)
from pathology.registration.quality import Check, evaluate
from pathology.registration.transform import Transform, TransformError

REGISTRATION_FILE = REGISTRATION
FORMAT = "hccbio.registration/1"


@dataclass(frozen=True)
class Registration:
    """A computed registration with its views (the views are not stored)."""

    moving: Overview
    fixed: Overview
    alignment: Alignment
    checks: tuple[Check, ...]
    seconds: float
    settings: dict

    @property
    def transform(self) -> Transform:
        """The final transform (moving -> fixed)."""
        return self.alignment.transform

    @property
    def status(self) -> str:
        """``pass`` or ``flagged``."""
        return "flagged" if any(c.fired for c in self.checks) else "pass"

    def to_json(self, **extra) -> dict:
        """The content of ``registration.json`` (``extra`` keys first, e.g. sample ids)."""
        fired = [c for c in self.checks if c.fired]
        return {
            "format": FORMAT, **extra,
            "status": self.status,
            "flags": [c.name for c in fired],
            "reasons": [c.reason for c in fired],
            "checks": [c.to_json() for c in self.checks],
            "moving": _source_json(self.moving), "fixed": _source_json(self.fixed),
            "transform": self.transform.to_json(),
            "summary": {"flipped": self.transform.is_flipped(),
                        "rotation_deg": round(self.transform.rotation_deg(), 3),
                        "scale": [round(v, 5) for v in self.transform.singular_values()],
                        "nonrigid": self.transform.field is not None,
                        "min_jacobian": self.alignment.min_jacobian},
            "stages": [s.to_json() for s in self.alignment.stages],
            "candidates": list(self.alignment.candidates),
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
            "versions": _versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


@dataclass(frozen=True)
class RegistrationRecord:
    """What a stored ``registration.json`` says (what the code reads back)."""

    path: Path
    status: str
    reasons: tuple[str, ...]
    transform: Transform
    moving_path: Path
    fixed_path: Path
    moving_size: tuple[int, int]
    fixed_size: tuple[int, int]
    reference: str | None  # the reference sample id (batch), None from the command line
    unit: str  # "um" (both pixel sizes known) or "px"

    @property
    def usable(self) -> bool:
        """Whether no check fired."""
        return self.status == "pass"


def _source_json(view: Overview) -> dict:
    source = view.source
    return {"path": str(source.path), "size": list(source.size), "mpp": source.mpp,
            "unit": source.unit, "kind": source.kind, "reader": source.reader,
            "overview_shape": list(view.mask.shape),
            "overview_spacing": [round(v, 6) for v in view.spacing],
            "tissue_fraction": round(float(view.mask.mean()), 4)}


def _versions() -> dict:
    return package_versions(("hccbio", "SimpleITK", "scikit-image", "numpy"), python=False)


def register_images(moving: str | Path | ImageSource, fixed: str | Path | ImageSource, *,
                    config: PathologyConfig, moving_mpp: float | None = None,
                    fixed_mpp: float | None = None, moving_kind: Kind | None = None,
                    fixed_kind: Kind | None = None) -> Registration:
    """Register a moving image (slide or plain RGB image) onto a fixed one.

    Both are read at low resolution (``registration.max_size_px`` across), reduced to
    stain-independent signals and tissue masks, aligned (:func:`~.align.align`) and checked
    (:func:`~.quality.evaluate`).

    Parameters
    ----------
    moving, fixed
        Files, or sources from :func:`~.images.open_source`.
    config
        Resolved configuration (``registration``, ``tissue``, ``slide``, ``cells``).
    moving_mpp, fixed_mpp
        Level-0 pixel sizes (um/px) to use (checked against a slide's metadata); an image
        without one is registered in pixel units, and then so is the other.
    moving_kind, fixed_kind
        Force ``brightfield`` or ``fluorescence``.

    Returns
    -------
    Registration

    Raises
    ------
    RegistrationInputError
        A file is missing or unreadable.

    Examples
    --------
    >>> result = register_images("ihc.svs", "he.svs", config=PathologyConfig())  # doctest: +SKIP
    >>> result.status, result.transform.map_level0([[100, 200]])  # doctest: +SKIP
    """
    started = time.perf_counter()
    sources = []
    for item, mpp, kind in ((moving, moving_mpp, moving_kind), (fixed, fixed_mpp, fixed_kind)):
        if isinstance(item, ImageSource):
            sources.append(item)
        else:
            sources.append(open_source(item, mpp=mpp, kind=kind, backend=config.slide.backend,
                                       mpp_range=config.slide.mpp_range,
                                       mpp_tolerance=config.slide.mpp_tolerance,
                                       nuclear_channels=config.slide.nuclear_channels))
    m_source, f_source = sources
    if m_source.unit != f_source.unit:
        # One image has no pixel size: both in pixel units (the affine absorbs the scale).
        m_source, f_source = (replace(s, mpp=None) for s in (m_source, f_source))
    rc = config.registration
    spacing = registration_spacing(m_source, f_source, max_size_px=rc.max_size_px)
    m_view = read_overview(m_source, spacing, tissue=config.tissue,
                           background=config.cells.background_intensity)
    f_view = read_overview(f_source, spacing, tissue=config.tissue,
                           background=config.cells.background_intensity)
    if not m_view.mask.any() or not f_view.mask.any():
        raise RegistrationInputError(
            f"{m_source.path if not m_view.mask.any() else f_source.path}: no tissue found at "
            "registration resolution; nothing to register")
    alignment = align(m_view, f_view, config=rc)
    checks = evaluate(alignment, moving_tissue=float(m_view.mask.mean()),
                      fixed_tissue=float(f_view.mask.mean()),
                      physical=m_source.unit == "um", config=rc)
    return Registration(m_view, f_view, alignment, tuple(checks),
                        time.perf_counter() - started, rc.model_dump(mode="json"))


def write_registration(path: Path, registration: Registration, **extra) -> dict:
    """Write ``registration.json`` atomically; returns its content."""
    record = registration.to_json(**extra)
    write_text(Path(path), json.dumps(record, indent=2) + "\n")
    return record


FIGURE_FILE = "registration.png"


def register_to_folder(moving: str | Path, fixed: str | Path, out: str | Path, *,
                       config: PathologyConfig, moving_mpp: float | None = None,
                       fixed_mpp: float | None = None) -> dict:
    """:func:`register_images`, then ``OUT/registration.json`` and the QC figure
    ``OUT/registration.png`` (``hccbio slides register``).

    Returns
    -------
    dict
        The content of ``registration.json``.
    """
    from pathology.registration.overlay import write_registration_figure

    out = Path(out)
    registration = register_images(moving, fixed, config=config, moving_mpp=moving_mpp,
                                   fixed_mpp=fixed_mpp)
    record = write_registration(out / REGISTRATION_FILE, registration)
    write_registration_figure(out / FIGURE_FILE, registration, title=(
        f"{Path(moving).name} -> {Path(fixed).name}: {record['status']}"
        + (f" ({', '.join(record['flags'])})" if record["flags"] else "")))
    return record


def read_registration(path: str | Path) -> RegistrationRecord:
    """Read a ``registration.json``.

    Raises
    ------
    RegistrationInputError
        Missing file, not JSON, or not a registration written by hccbio.
    """
    path = Path(path)
    if not path.is_file():
        raise RegistrationInputError(f"{path}: registration file not found (run 'hccbio slides "
                                     "register MOVING FIXED --out DIR' first)")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RegistrationInputError(f"{path}: cannot read JSON ({error})") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RegistrationInputError(f"{path}: not a registration file (expected \"format\": "
                                     f"\"{FORMAT}\")")
    try:
        transform = Transform.from_json(record["transform"])
        return RegistrationRecord(
            path, str(record["status"]), tuple(record.get("reasons", [])), transform,
            Path(record["moving"]["path"]), Path(record["fixed"]["path"]),
            tuple(record["moving"]["size"]), tuple(record["fixed"]["size"]),
            record.get("reference"), str(record["moving"]["unit"]))
    except (KeyError, TypeError, TransformError) as error:
        raise RegistrationInputError(f"{path}: malformed registration ({error})") from error


def map_points_csv(registration: str | Path, points: str | Path, out: str | Path, *,
                   allow_flagged: bool = False) -> int:
    """Map the ``x``, ``y`` columns of a CSV (level-0 px of the moving image) to the fixed
    image's level-0 px; every other column is kept, in order.

    Parameters
    ----------
    registration
        A ``registration.json``.
    points
        CSV with columns ``x`` and ``y`` (case-sensitive), any others kept.
    out
        Output CSV (written atomically).
    allow_flagged
        Use a flagged registration (otherwise an error says why it was flagged).

    Returns
    -------
    int
        Number of points mapped.

    Raises
    ------
    RegistrationInputError
        Missing or malformed files, missing columns, non-numeric coordinates, or a flagged
        registration without ``allow_flagged``.
    """
    record = read_registration(registration)
    if not record.usable and not allow_flagged:
        raise RegistrationInputError(
            f"{record.path}: the registration is flagged ({'; '.join(record.reasons)}); its "
            "transform may be wrong. Check the overlay, or pass --allow-flagged to use it anyway")
    points = Path(points)
    if not points.is_file():
        raise RegistrationInputError(f"{points}: points file not found")
    try:
        table = pd.read_csv(points)
    except (OSError, ValueError) as error:
        raise RegistrationInputError(f"{points}: cannot read as CSV ({error})") from error
    missing = [c for c in ("x", "y") if c not in table.columns]
    if missing:
        raise RegistrationInputError(
            f"{points}: missing column(s) {', '.join(missing)}; expected columns x and y "
            f"(level-0 pixels of the moving image), found {', '.join(map(str, table.columns))}")
    xy = table[["x", "y"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 2
        raise RegistrationInputError(f"{points}, line {line}: x / y is not a finite number")
    mapped = record.transform.map_level0(xy) if len(xy) else xy
    result = table.copy()
    result["x"], result["y"] = mapped[:, 0], mapped[:, 1]
    write_text(Path(out), result.to_csv(index=False))
    return len(result)
