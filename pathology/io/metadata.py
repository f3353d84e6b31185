"""What an image file says about itself, shared by every reader of :mod:`pathology.io`.

Channel names (the file's own metadata, a ``<file>.channels.txt`` sidecar), the pixel size
stated by TIFF resolution tags and OME-XML, and the column-safe form of a channel name. The
readers (:mod:`~pathology.io.slide`, :mod:`~pathology.io.stacks`, :mod:`~pathology.io.czi`)
import this module; it imports none of them.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

TIFF_SUFFIXES = (".tif", ".tiff")
SIDECAR_SUFFIX = ".channels.txt"


def safe_channel_name(name: str) -> str:
    """Lowercase ASCII column fragment for a channel name.

    Examples
    --------
    >>> safe_channel_name("CD8 (Opal 520)")
    'cd8_opal_520'
    """
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "channel"


class StackError(ValueError):
    """A stack or folder cannot be read as channels; the message names the file."""


@dataclass(frozen=True)
class ChannelNames:
    """Names of an image's channels, in file order, and where they came from."""

    names: tuple[str, ...]
    source: str  # e.g. "ome", "qptiff", "imagej:Labels", "tiff:PageName", "sidecar:<path>"


def sidecar_path(path: Path) -> Path:
    """The channel-name sidecar of an image file: ``<file>.channels.txt``.

    Examples
    --------
    >>> sidecar_path(Path("/data/G01_imc.tiff")).name
    'G01_imc.tiff.channels.txt'
    """
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path, n_channels: int) -> ChannelNames | None:
    """Channel names from ``<file>.channels.txt`` (one per line; blank lines and ``#``
    comments ignored), or None when there is no sidecar.

    Raises
    ------
    StackError
        The sidecar lists a different number of names than the image has channels.
    """
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    names = tuple(line.split("#", 1)[0].strip() for line in sidecar.read_text().splitlines())
    names = tuple(n for n in names if n)
    if len(names) != n_channels:
        raise StackError(f"{sidecar}: lists {len(names)} channel name(s) but {path} has "
                         f"{n_channels} channel(s); write one name per line, in file order")
    return ChannelNames(names, f"sidecar:{sidecar.name}")


def metadata_channel_names(tif, n_channels: int, pages: list) -> ChannelNames | None:
    """Channel names a TIFF carries itself: ImageJ slice labels, then ``PageName`` tags.

    (OME and QPTIFF names are read by :mod:`pathology.io.slide`.) ``pages`` are the first page of
    each channel, in order. None when the file names no channel, or not all of them.
    """
    imagej = tif.imagej_metadata or {}
    labels = imagej.get("Labels")
    if isinstance(labels, (list, tuple)) and len(labels) == n_channels and all(
            str(label).strip() for label in labels):
        return ChannelNames(tuple(str(label).strip() for label in labels), "imagej:Labels")
    names = []
    for page in pages:
        page = page.aspage() if hasattr(page, "aspage") else page  # TiffFrame: no tags
        tag = page.tags.get("PageName") if page is not None else None
        names.append(str(tag.value).strip() if tag is not None else "")
    if len(names) == n_channels and all(names):
        return ChannelNames(tuple(names), "tiff:PageName")
    return None


def tiff_resolution_mpp(page) -> tuple[float, float] | None:
    """Pixel size from TIFF XResolution/YResolution/ResolutionUnit, or None."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(int(unit))
    if per_unit_um is None:
        return None

    def value(tag) -> float:
        num, den = tag.value
        return num / den if den else 0.0

    x_res, y_res = value(tags["XResolution"]), value(tags["YResolution"])
    if x_res <= 0 or y_res <= 0:
        return None
    return per_unit_um / x_res, per_unit_um / y_res


def ome_metadata(ome_xml: str) -> tuple[tuple[float, float] | None, list[str]]:
    """Physical pixel size (converted to um) and channel names from OME-XML."""
    root = ET.fromstring(ome_xml)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None, []
    to_um = {"um": 1.0, "µm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
    size = None
    if "PhysicalSizeX" in pixels.attrib:
        x = float(pixels.attrib["PhysicalSizeX"]) * to_um.get(
            pixels.attrib.get("PhysicalSizeXUnit", "µm"), 1.0)
        y = float(pixels.attrib.get("PhysicalSizeY", pixels.attrib["PhysicalSizeX"])) * to_um.get(
            pixels.attrib.get("PhysicalSizeYUnit", "µm"), 1.0)
        size = (x, y)
    names = [ch.attrib.get("Name", f"ch{i}")
             for i, ch in enumerate(el for el in pixels if el.tag.endswith("Channel"))]
    return size, names


def file_signature(path: Path) -> dict:
    """Cheap identity of an input file: name, size and modification time.

    A folder of channel TIFFs is identified by each file's name, size and modification time;
    a channel-name sidecar (``<file>.channels.txt``) is part of its image's identity.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file()
                       and p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith("."))
        return {"path": str(path.resolve()),
                "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    stat = path.stat()
    signature = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        signature["channels_file"] = [sidecar.name, sidecar.stat().st_size,
                                      sidecar.stat().st_mtime_ns]
    return signature
