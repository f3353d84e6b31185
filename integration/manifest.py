"""The study manifest (``samples.csv``): one row per sample, validated against the data contract.

Columns: ``patient_id, timepoint, sample_id, modality, stain, path[, mpp][, block_id]``.
Relative paths are resolved against the manifest's own folder, so a study folder can be moved
as a whole. ``block_id`` names the tissue block a slide was cut from: slides of one block (per
patient and timepoint) are serial sections, registered onto the block's reference slide.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from integration.csvrows import read_records

REQUIRED_COLUMNS = ("patient_id", "timepoint", "sample_id", "modality", "stain", "path")
TIMEPOINTS = ("baseline", "on_treatment", "progression")
MODALITIES = ("he", "ihc", "mif", "flow", "elisa", "scrna", "rnaseq")
SLIDE_MODALITIES = ("he", "ihc", "mif")
BLOOD_MODALITIES = ("flow", "elisa", "scrna")
SAMPLE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ManifestError(ValueError):
    """The manifest breaks the data contract; the message names file, row and column."""


@dataclass(frozen=True)
class Sample:
    """One validated manifest row."""

    patient_id: str
    timepoint: str
    sample_id: str
    modality: str
    stain: str
    path: Path
    mpp: float | None
    row: int  # 1-based line number in the CSV (header = line 1)
    block_id: str = ""  # tissue block (serial sections); empty when not given

    @property
    def block(self) -> str:
        """``patient_id/timepoint/block_id`` (block ids repeat across patients), or empty."""
        return f"{self.patient_id}/{self.timepoint}/{self.block_id}" if self.block_id else ""


def read_manifest(path: str | Path, *, check_files: bool = False) -> list[Sample]:
    """Read and validate a study manifest.

    Parameters
    ----------
    path
        The ``samples.csv`` file.
    check_files
        Also require every ``path`` to exist. Batch runs leave this off so that one missing
        file fails only its own sample.

    Returns
    -------
    list of Sample
        In file order.

    Raises
    ------
    ManifestError
        Missing columns, empty or invalid values, unknown timepoint or modality, duplicate
        ``sample_id``, non-numeric or non-positive ``mpp``.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    header, records = _read_rows(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; the manifest needs "
                            f"{', '.join(REQUIRED_COLUMNS)}[, mpp]")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line, record in records:
        where = f"{path}, line {line}"
        values = {k: record.get(k, "").strip() for k in header}
        for column in REQUIRED_COLUMNS:
            if column != "stain" and not values[column]:
                raise ManifestError(f"{where}: column '{column}' is empty")
        if values["timepoint"] not in TIMEPOINTS:
            raise ManifestError(f"{where}: column 'timepoint' is '{values['timepoint']}', "
                                f"expected one of {', '.join(TIMEPOINTS)}")
        modality = values["modality"].lower()
        if modality not in MODALITIES:
            raise ManifestError(f"{where}: column 'modality' is '{values['modality']}', "
                                f"expected one of {', '.join(MODALITIES)}")
        sample_id = values["sample_id"]
        if not SAMPLE_ID_PATTERN.match(sample_id):
            raise ManifestError(f"{where}: column 'sample_id' is '{sample_id}'; use letters, "
                                "digits, '_', '-' and '.', starting with a letter or digit")
        if sample_id in seen:
            raise ManifestError(f"{where}: sample_id '{sample_id}' duplicates line "
                                f"{seen[sample_id]}")
        seen[sample_id] = line
        mpp = _parse_mpp(values.get("mpp", ""), where)
        sample_path = _absolute(Path(values["path"]), path.parent)
        if check_files and not sample_path.exists():
            raise ManifestError(f"{where}: file {sample_path} not found")
        samples.append(Sample(values["patient_id"], values["timepoint"], sample_id, modality,
                              values["stain"], sample_path, mpp, line,
                              values.get("block_id", "")))
    return samples


def _absolute(sample_path: Path, base: Path) -> Path:
    """``sample_path`` made absolute against the manifest's folder, links resolved where they
    can be: a link that loops or cannot be read is kept as written, so that its own sample
    fails with the reason and the batch goes on."""
    if sample_path.is_absolute():
        return sample_path
    try:
        return (base / sample_path).resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return Path(os.path.abspath(base / sample_path))


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and every non-blank row (as a dict) with the line it starts on.

    Rows may be shorter than the header (optional trailing columns), never longer.
    """
    header, records = read_records(path, error=ManifestError, what="manifest",
                                   allow_short=True)
    return header, [(line, dict(zip(header, fields, strict=False)))
                    for line, fields in records]


def _parse_mpp(text: str, where: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(
            f"{where}: column 'mpp' is '{text}', not a number (um per pixel)") from None
    if not math.isfinite(value) or value <= 0:
        raise ManifestError(f"{where}: column 'mpp' is {text}; it must be a positive number")
    return value
