"""Multiplex images that OpenSlide and tiffslide cannot open: channel stacks and folders.

Labs export multiplex immunofluorescence, imaging mass cytometry (IMC) and MIBI as

- a **multi-page TIFF stack**: one page per channel, axes ``CYX``, ``IYX`` or ``QYX`` (steinbock,
  imctools, ImageJ, QuPath's "multi-page TIFF"), pyramidal (SubIFDs) or not;
- a **multi-series TIFF**: one series per channel, each ``YX`` of the same size;
- a **folder of single-channel TIFFs**, one file per marker, channel name = file stem (MIBI,
  many IMC exports), given as the manifest's ``path``.

:class:`TiffStack` reads them through tifffile's Zarr view, channel by channel, so a region
read decodes only the strips or tiles it touches (a whole page only when the file stores a
page as one strip). It offers the part of tiffslide's interface that
:class:`pathology.io.slide.Slide` uses (``dimensions``, ``level_dimensions``,
``level_downsamples``, ``read_region``, ``close``) plus the channel names and pixel-size
evidence found in the files.

Channel names come, in this order, from the file's metadata (OME ``Channel Name``, QPTIFF
``<Name>``, ImageJ slice labels, TIFF ``PageName``), from a sidecar ``<file>.channels.txt``
(one name per line, in file order), or from the panel's ``channels`` list
(:func:`pathology.io.slide.Slide`'s ``channel_names``); folders take them from the file stems.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pathology.io.metadata import (
    TIFF_SUFFIXES,
    ChannelNames,
    StackError,
    metadata_channel_names,
    ome_metadata,
    tiff_resolution_mpp,
)

CHANNEL_AXES = "CIQ"  # tifffile's channel, generic image and generic (unknown) axes


def stack_kind(tif) -> str | None:
    """How a TIFF holds channels that tiffslide cannot read, or None when tiffslide can.

    ``"axis"``: the first series has a channel-like axis (C, I or Q) that is not simply
    ``CYX`` (e.g. ``IYX``, ``QYX``, ``ZCYX`` with one plane); ``"series"``: the first series is
    ``YX`` and further series of the same shape and type follow (one series per channel).
    """
    series = tif.series[0]
    axes = _squeezed_axes(series)
    if axes in ("YX", "YXS") and len(tif.series) > 1:
        same = [s for s in tif.series if s.shape == series.shape and s.dtype == series.dtype]
        return "series" if axes == "YX" and len(same) > 1 else None
    if axes == "CYX" and series.axes == "CYX":
        return None  # tiffslide reads CYX (OME-TIFF, QPTIFF)
    if len(axes) == 3 and axes[1:] == "YX" and axes[0] in CHANNEL_AXES:
        return "axis"
    return None


def _squeezed_axes(series) -> str:
    return "".join(a for a, n in zip(series.axes, series.shape, strict=True)
                   if n > 1 or a in "YX")


class _Plane:
    """One channel of one pyramid level: a Zarr array and the index that selects the plane."""

    def __init__(self, array, index: tuple) -> None:
        self.array, self.index = array, index

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(self.array[(*self.index, slice(y0, y1), slice(x0, x1))])


class TiffStack:
    """A multichannel TIFF stack or a folder of single-channel TIFFs, read channel by channel.

    Parameters
    ----------
    path
        A TIFF file (multi-page or multi-series) or a folder of single-channel TIFFs.

    Attributes
    ----------
    channels
        :class:`ChannelNames` found in the files (None when a stack names none).
    n_channels, dtype, evidence
        Channel count, pixel type, and pixel-size statements as ``(source, mpp_x, mpp_y,
        strong)`` tuples (OME ``PhysicalSizeX``, TIFF resolution tags, ImageJ calibration).

    Raises
    ------
    StackError
        Not a stack, channels of different sizes or types, or an empty folder.

    Examples
    --------
    >>> with TiffStack("field/") as stack:  # doctest: +SKIP
    ...     region = stack.read_region((0, 0), 0, (256, 256))  # (256, 256, channels)
    """

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self.path = Path(path)
        self._files: list = []
        self.properties: dict[str, str | None] = {"tifffile.vendor": None}
        try:
            if self.path.is_dir():
                planes, names = self._open_folder(tifffile)
            else:
                planes, names = self._open_file(tifffile)
        except Exception:
            self.close()
            raise
        self._planes = planes  # [level][channel] -> _Plane
        self.channels = names
        self.n_channels = len(planes[0])
        first = planes[0][0].array
        self.dtype = np.dtype(first.dtype)
        shapes = [tuple(p.array.shape[-2:]) for p in planes[0]]
        if len(set(shapes)) != 1:
            raise StackError(f"{self.path}: channels differ in size ({sorted(set(shapes))})")
        self.level_dimensions = tuple((int(level[0].array.shape[-1]),
                                       int(level[0].array.shape[-2])) for level in planes)
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = tuple(self.dimensions[0] / w for w, _ in self.level_dimensions)

    # -- opening ---------------------------------------------------------------------------
    def _open_file(self, tifffile) -> tuple[list[list[_Plane]], ChannelNames | None]:
        import zarr

        tif = tifffile.TiffFile(self.path)
        self._files.append(tif)
        kind = stack_kind(tif)
        if kind is None:
            raise StackError(f"{self.path}: not a channel stack (axes {tif.series[0].axes})")
        self.evidence = _file_evidence(tif)
        if kind == "series":
            first = tif.series[0]
            members = [s for s in tif.series if s.shape == first.shape and s.dtype == first.dtype]
            n_levels = min(len(s.levels) for s in members)
            planes = [[_Plane(zarr.open(s.aszarr(level=level), mode="r"),
                              tuple(0 for _ in s.shape[:-2])) for s in members]
                      for level in range(n_levels)]
            pages = [s.pages[0] for s in members]
        else:
            series = tif.series[0]
            axis = next(i for i, (a, n) in enumerate(zip(series.axes, series.shape, strict=True))
                        if a in CHANNEL_AXES and n > 1)
            n = series.shape[axis]
            planes = []
            for level in range(len(series.levels)):
                array = zarr.open(series.aszarr(level=level), mode="r")
                planes.append([_Plane(array, tuple(c if i == axis else 0
                                                   for i in range(len(series.shape) - 2)))
                               for c in range(n)])
            pages = list(series.pages[:n]) if len(series.pages) >= n else []
        names = metadata_channel_names(tif, len(planes[0]), pages)
        return planes, names

    def _open_folder(self, tifffile) -> tuple[list[list[_Plane]], ChannelNames]:
        import zarr

        files = sorted((p for p in self.path.iterdir() if p.is_file()
                        and p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")),
                       key=lambda p: (p.stem.lower(), p.name))
        if not files:
            raise StackError(f"{self.path}: a folder given as a slide must hold one TIFF per "
                             "channel (.tif / .tiff, name = channel); none found")
        stems = [p.stem for p in files]
        duplicates = sorted({s for s in stems if [t.lower() for t in stems].count(s.lower()) > 1})
        if duplicates:
            raise StackError(f"{self.path}: two files name the same channel: "
                             f"{', '.join(duplicates)}")
        columns = []
        evidence = None
        for file in files:
            tif = tifffile.TiffFile(file)
            self._files.append(tif)
            series = tif.series[0]
            if _squeezed_axes(series) != "YX":
                raise StackError(f"{file}: a channel file of folder {self.path} must hold one "
                                 f"plane (YX), found axes {series.axes} of shape {series.shape}")
            file_evidence = _file_evidence(tif)
            if evidence is None:
                evidence = file_evidence
            elif [e[1:3] for e in file_evidence] != [e[1:3] for e in evidence]:
                raise StackError(f"{file}: pixel size metadata differs from {files[0].name}'s "
                                 f"({file_evidence} against {evidence})")
            index = tuple(0 for _ in series.shape[:-2])
            columns.append([_Plane(zarr.open(series.aszarr(level=level), mode="r"), index)
                            for level in range(len(series.levels))])
        n_levels = min(len(c) for c in columns)
        for level in range(n_levels):  # keep only levels that every channel has, same size
            if len({tuple(c[level].array.shape[-2:]) for c in columns}) != 1:
                n_levels = level
                break
        if n_levels == 0:
            shapes = {f.name: tuple(c[0].array.shape[-2:]) for f, c in zip(files, columns,
                                                                          strict=True)}
            raise StackError(f"{self.path}: channel files differ in size: {shapes}")
        dtypes = {str(c[0].array.dtype) for c in columns}
        if len(dtypes) != 1:
            raise StackError(f"{self.path}: channel files differ in pixel type "
                             f"({', '.join(sorted(dtypes))})")
        self.evidence = evidence or []
        planes = [[c[level] for c in columns] for level in range(n_levels)]
        return planes, ChannelNames(tuple(stems), "folder:file names")

    # -- reading ---------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int], *,
                    as_array: bool = True, padding: bool = True) -> np.ndarray:
        """A box of ``size`` (width, height) at ``level``, its top-left corner ``location``
        in level-0 pixels, as ``(height, width, channels)``; outside the image is 0."""
        del as_array, padding  # always an array, always padded (tiffslide's keywords)
        downsample = self.level_downsamples[level]
        x = int(math.floor(location[0] / downsample))
        y = int(math.floor(location[1] / downsample))
        width, height = int(size[0]), int(size[1])
        full_w, full_h = self.level_dimensions[level]
        out = np.zeros((height, width, self.n_channels), dtype=self.dtype)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, full_w), min(y + height, full_h)
        if x1 <= x0 or y1 <= y0:
            return out
        for channel, plane in enumerate(self._planes[level]):
            out[y0 - y:y1 - y, x0 - x:x1 - x, channel] = plane.read(y0, y1, x0, x1)
        return out

    def close(self) -> None:
        """Close every file."""
        for tif in self._files:
            tif.close()
        self._files = []

    def __enter__(self) -> TiffStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _file_evidence(tif) -> list[tuple[str, float, float, bool]]:
    """Pixel-size statements of one TIFF: OME, resolution tags (weak), ImageJ calibration."""
    evidence: list[tuple[str, float, float, bool]] = []
    if tif.is_ome and tif.ome_metadata:
        size, _ = ome_metadata(tif.ome_metadata)
        if size:
            evidence.append(("ome:PhysicalSizeX", size[0], size[1], True))
    page = tif.series[0].pages[0]
    if page is None:
        return evidence
    resolution = tiff_resolution_mpp(page)
    if resolution:
        evidence.append(("tiff:XResolution", *resolution, False))
    imagej = tif.imagej_metadata or {}
    unit = str(imagej.get("unit", "")).lower()
    if unit in ("micron", "microns", "um", "\\u00b5m", "µm") and "XResolution" in page.tags:
        num, den = page.tags["XResolution"].value
        y_num, y_den = page.tags.get("YResolution", page.tags["XResolution"]).value
        if num and y_num:  # ImageJ: pixels per unit, unit micron
            evidence.append(("imagej:unit", den / num, y_den / y_num, True))
    return evidence


def is_stack(path: Path) -> bool:
    """Whether ``path`` is a folder of TIFFs or a TIFF that :class:`TiffStack` must read."""
    if path.is_dir():
        return True
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return stack_kind(tif) is not None
    except Exception:  # not a TIFF: other readers decide
        return False
