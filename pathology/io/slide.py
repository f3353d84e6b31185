"""Open a whole-slide image, establish its pixel size, and read regions at any resolution.

OpenSlide (openslide-python + openslide-bin) reads brightfield slides (Aperio SVS, Hamamatsu
NDPI, generic pyramidal TIFF, DICOM...); tiffslide reads what OpenSlide cannot open
(multichannel fluorescence such as Vectra QPTIFF, OME-TIFF); :class:`pathology.io.stacks.TiffStack`
(tifffile) reads multiplex channel stacks (``IYX`` / ``QYX`` multi-page TIFF, one series per
channel) and folders of single-channel TIFFs; :class:`pathology.io.czi.CziImage` (Zeiss's
pylibCZIrw) reads Zeiss CZI, brightfield and fluorescence. Label and macro images are never
read: only the pyramid levels of the main image are touched.

Channel names come from the file (OME, QPTIFF, ImageJ labels, ``PageName``; a folder's file
stems), else from a sidecar ``<file>.channels.txt``, else from the caller (the panel's
``channels``), else they are ``ch0, ch1, ...``; ``SlideInfo.channels_source`` says which.

The pixel size is never guessed. Every source is collected (OpenSlide ``openslide.mpp-x``,
tiffslide, OME ``PhysicalSizeX``, TIFF resolution tags, the manifest) with its origin; strong
sources (vendor metadata, OME, the manifest) must agree, and an implausible value is an error.
TIFF resolution tags are weak evidence: 72 and 96 dpi are placeholders that many writers fill
in, so an implausible tag value is ignored (and recorded) when another source exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from pathology.io.metadata import (
    StackError,
    metadata_channel_names,
    ome_metadata,
    read_sidecar,
    safe_channel_name,
    tiff_resolution_mpp,
)

Backend = Literal["openslide", "tiffslide", "tifffile", "pylibczirw"]


class SlideError(ValueError):
    """A slide cannot be used; the message names the file and the problem."""


class PixelSizeError(SlideError):
    """The pixel size is missing, implausible or contradictory."""


@dataclass(frozen=True)
class PixelSizeEvidence:
    """One statement of the level-0 pixel size and where it came from."""

    source: str  # e.g. "openslide:openslide.mpp-x", "ome:PhysicalSizeX", "manifest:mpp"
    mpp_x: float
    mpp_y: float
    strong: bool  # vendor/OME metadata or the manifest; False for bare TIFF resolution tags


@dataclass(frozen=True)
class PixelSize:
    """The level-0 pixel size that the pipeline uses, with its provenance."""

    mpp_x: float
    mpp_y: float
    source: str
    evidence: tuple[PixelSizeEvidence, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def mpp(self) -> float:
        """Mean of x and y pixel size (um/px)."""
        return (self.mpp_x + self.mpp_y) / 2


@dataclass(frozen=True)
class SlideInfo:
    """What is known about a slide once opened."""

    path: Path
    backend: Backend
    vendor: str | None
    dimensions: tuple[int, int]  # level-0 (width, height)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    channels: tuple[str, ...]
    dtype: str
    pixel_size: PixelSize
    channels_source: str = ""  # "ome", "qptiff", "sidecar:<file>", "panel:<name>", "none" ...

    def level_mpp(self, level: int) -> float:
        """Pixel size (um/px) of a pyramid level."""
        return self.pixel_size.mpp * self.level_downsamples[level]

    def to_json(self) -> dict:
        """A JSON-serialisable summary (for run.json / features.json)."""
        return {
            "path": str(self.path), "backend": self.backend, "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples), "channels": list(self.channels),
            "channels_source": self.channels_source, "dtype": self.dtype,
            "mpp_x": self.pixel_size.mpp_x, "mpp_y": self.pixel_size.mpp_y,
            "mpp_source": self.pixel_size.source,
            "mpp_evidence": [e.__dict__ for e in self.pixel_size.evidence],
            "mpp_notes": list(self.pixel_size.notes),
        }


def _resolve_pixel_size(path: Path, evidence: list[PixelSizeEvidence], *,
                        mpp_range: tuple[float, float], tolerance: float) -> PixelSize:
    low, high = mpp_range

    def plausible(e: PixelSizeEvidence) -> bool:
        return low <= e.mpp_x <= high and low <= e.mpp_y <= high

    def agree(a: float, b: float) -> bool:
        return abs(a - b) <= tolerance * max(a, b)

    notes: list[str] = []
    strong = [e for e in evidence if e.strong]
    for e in strong:
        if not plausible(e):
            raise PixelSizeError(
                f"{path}: implausible pixel size {e.mpp_x:.4g} x {e.mpp_y:.4g} um/px from "
                f"{e.source} (expected {low}-{high} um/px); fix the metadata or the manifest's "
                "mpp column")
    weak_usable = []
    for e in evidence:
        if e.strong:
            continue
        if plausible(e):
            weak_usable.append(e)
        else:
            dpi = 25400 / e.mpp_x if e.mpp_x else float("nan")
            notes.append(f"ignored {e.source} = {e.mpp_x:.4g} um/px ({dpi:.0f} dpi, a "
                         "placeholder resolution, not a scan resolution)")
    usable = strong + weak_usable
    if not usable:
        raise PixelSizeError(
            f"{path}: no pixel size in the file's metadata ({'; '.join(notes) or 'none found'}) "
            "and none given; add the scan's um/px in the manifest's mpp column")
    reference = usable[0]
    for e in usable[1:]:
        if not (agree(e.mpp_x, reference.mpp_x) and agree(e.mpp_y, reference.mpp_y)):
            raise PixelSizeError(
                f"{path}: pixel sizes disagree: {reference.source} says {reference.mpp_x:.4g} "
                f"um/px, {e.source} says {e.mpp_x:.4g} um/px (tolerance {tolerance:.0%}); check "
                "the scanner metadata and the manifest's mpp column")
    # File metadata is the reference when present; the manifest confirms it.
    file_sources = [e for e in usable if not e.source.startswith("manifest")]
    chosen = file_sources[0] if file_sources else reference
    return PixelSize(chosen.mpp_x, chosen.mpp_y, chosen.source, tuple(evidence), tuple(notes))


def _tiff_facts(path: Path) -> tuple[list[PixelSizeEvidence], list[str], int, str]:
    """Pixel-size evidence, channel names (empty when the file names none), sample count and
    the names' source, of the first series (tifffile)."""
    import tifffile

    evidence: list[PixelSizeEvidence] = []
    names: list[str] = []
    source = ""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        n_channels = series.shape[axes.index("C")] if "C" in axes else (
            series.shape[axes.index("S")] if "S" in axes else 1)
        if tif.is_ome and tif.ome_metadata:
            size, names = ome_metadata(tif.ome_metadata)
            source = "ome"
            if size:
                evidence.append(PixelSizeEvidence("ome:PhysicalSizeX", size[0], size[1], True))
        elif tif.is_qpi:
            source = "qptiff"
            for page in series.pages[:n_channels]:
                text = page.description or ""
                start, end = text.find("<Name>"), text.find("</Name>")
                names.append(text[start + 6:end].strip() if start >= 0 < end else
                             f"ch{len(names)}")
        elif "C" in axes:
            found = metadata_channel_names(tif, n_channels, list(series.pages[:n_channels]))
            if found is not None:
                names, source = list(found.names), found.source
        page0 = series.pages[0]
        resolution = tiff_resolution_mpp(page0) if page0 is not None else None
        if resolution:
            evidence.append(PixelSizeEvidence("tiff:XResolution", *resolution, False))
    if "C" not in axes and "S" in axes and n_channels in (3, 4) and not names:
        names, source = ["R", "G", "B", "A"][:n_channels], "rgb"
    if len(names) != n_channels:
        names, source = [], ""
    return evidence, names, n_channels, source


def _damaged_hint(path: Path) -> str:
    """The fix for a file no reader accepts: most often an incomplete copy."""
    try:
        size = f"{path.stat().st_size:,} bytes"
    except OSError:
        size = "size unknown"
    return (f"if it is one of the supported formats (SVS, NDPI, TIFF, OME-TIFF, QPTIFF, DICOM) "
            f"the file is damaged or incomplete ({size}): copy it again from the scanner or "
            "archive")


def _needs_tiffslide(path: Path) -> bool:
    """OME-TIFF, QPTIFF and anything but 8-bit RGB: OpenSlide would flatten them to RGB."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return bool(tif.is_ome or tif.is_qpi or series.dtype != np.uint8
                        or "C" in series.axes or series.axes[-1:] != "S")
    except Exception:  # not a TIFF: OpenSlide decides
        return False


class Slide:
    """A whole-slide image opened for region reads at any resolution.

    Parameters
    ----------
    path
        The slide file, or a folder of single-channel TIFFs (one per marker, name = channel).
    manifest_mpp
        The manifest's ``mpp`` for this slide, if any (um/px at level 0).
    backend
        ``"auto"`` (OpenSlide; tiffslide for what OpenSlide cannot open; tifffile for channel
        stacks and folders; pylibCZIrw for ``.czi``), ``"openslide"`` or ``"tiffslide"``
        (stacks and folders still go to tifffile, CZI to pylibCZIrw, which tiffslide cannot
        read).
    mpp_range, mpp_tolerance
        Plausible pixel sizes and the largest relative disagreement between sources.
    channel_names
        Names of the channels in file order, used only when neither the file nor a sidecar
        ``<file>.channels.txt`` names them (e.g. a panel's ``channels`` list).
    channel_names_source
        Where ``channel_names`` came from (recorded in ``SlideInfo.channels_source``).

    Raises
    ------
    SlideError
        Missing, unreadable or unsupported file; :class:`PixelSizeError` for pixel-size problems.

    Examples
    --------
    >>> with Slide("slide.svs") as slide:  # doctest: +SKIP
    ...     tile = slide.read_region_at(0, 0, 512, 512, mpp=0.5)
    """

    def __init__(self, path: str | Path, *, manifest_mpp: float | None = None,
                 backend: Literal["auto", "openslide", "tiffslide"] = "auto",
                 mpp_range: tuple[float, float] = (0.1, 2.0),
                 mpp_tolerance: float = 0.02,
                 channel_names: Sequence[str] | None = None,
                 channel_names_source: str = "caller") -> None:
        self.path = Path(path)
        if not self.path.exists():
            if self.path.is_symlink():
                raise SlideError(f"{self.path}: a symbolic link that leads to no file (a "
                                 "broken link or a loop); point it at the slide file")
            raise SlideError(f"{self.path}: slide file not found")
        if not self.path.is_file() and not self.path.is_dir():
            raise SlideError(f"{self.path}: not a file or a folder of channel TIFFs")
        self._handle, used = self._open(backend)
        try:
            evidence = self._collect_evidence(used)
            self._name_channels(channel_names, channel_names_source)
        except (SlideError, ValueError):
            self._handle.close()
            raise
        except Exception as error:  # a reader's internals on a damaged file (IndexError ...)
            raise SlideError(f"{self.path}: cannot read the slide's metadata "
                             f"({type(error).__name__}: {error}); {_damaged_hint(self.path)}"
                             ) from error
        if manifest_mpp is not None:
            evidence.append(PixelSizeEvidence("manifest:mpp", manifest_mpp, manifest_mpp, True))
        pixel_size = _resolve_pixel_size(self.path, evidence, mpp_range=mpp_range,
                                         tolerance=mpp_tolerance)
        handle = self._handle
        self.info = SlideInfo(
            path=self.path, backend=used,
            vendor=handle.properties.get(f"{used}.vendor") or None,
            dimensions=tuple(handle.dimensions),
            level_dimensions=tuple(tuple(d) for d in handle.level_dimensions),
            level_downsamples=tuple(float(d) for d in handle.level_downsamples),
            channels=tuple(self._channels), dtype=self._dtype, pixel_size=pixel_size,
            channels_source=self._channels_source,
        )

    # -- opening ---------------------------------------------------------------------------
    def _open(self, backend: str):
        from pathology.io.czi import CziError, CziImage, is_czi
        from pathology.io.stacks import StackError, TiffStack, is_stack

        errors = []
        if backend != "openslide" and is_czi(self.path) and self.path.is_file():
            try:
                return CziImage(self.path), "pylibczirw"
            except CziError as error:
                raise SlideError(str(error)) from error
        if self.path.is_dir() and backend == "openslide":
            raise SlideError(f"{self.path}: a folder of channel TIFFs needs slide.backend auto "
                             "or tiffslide (read by tifffile), not openslide")
        if backend != "openslide" and is_stack(self.path):
            try:
                return TiffStack(self.path), "tifffile"
            except StackError as error:
                raise SlideError(str(error)) from error
            except Exception as error:  # tifffile / zarr raise many types for broken files
                raise SlideError(f"{self.path}: cannot read the channel stack "
                                 f"({type(error).__name__}: {error}); "
                                 f"{_damaged_hint(self.path)}") from error
        if backend == "auto" and _needs_tiffslide(self.path):
            backend = "tiffslide"
        if backend in ("auto", "openslide"):
            import openslide

            try:
                return openslide.OpenSlide(str(self.path)), "openslide"
            except openslide.OpenSlideUnsupportedFormatError as error:
                errors.append(f"OpenSlide: unsupported format ({error})")
                if backend == "openslide":
                    raise SlideError(f"{self.path}: {errors[-1]}") from error
            except openslide.OpenSlideError as error:
                # OpenSlide recognised the format but the file is broken or a variant it
                # refuses: falling back could read garbage, so this is the slide's error.
                raise SlideError(f"{self.path}: OpenSlide recognised the file but cannot read "
                                 f"it: {error}") from error
        import tiffslide

        try:
            handle = tiffslide.TiffSlide(self.path)
            # tiffslide opens lazily: touch what every slide has, so a truncated file fails here
            handle.properties, handle.dimensions, handle.level_dimensions  # noqa: B018
        except Exception as error:  # tifffile raises many types for non-TIFF input
            errors.append(f"tiffslide: {type(error).__name__}: {error}")
            raise SlideError(f"{self.path}: no reader can open this file ("
                             f"{'; '.join(errors)}); {_damaged_hint(self.path)}") from error
        return handle, "tiffslide"

    def _collect_evidence(self, used: str) -> list[PixelSizeEvidence]:
        handle = self._handle
        if used in ("tifffile", "pylibczirw"):
            self._channels = list(handle.channels.names) if handle.channels else []
            self._channels_source = handle.channels.source if handle.channels else ""
            self._n_channels = handle.n_channels
            self._dtype = str(handle.dtype)
            return [PixelSizeEvidence(*e) for e in handle.evidence]
        evidence: list[PixelSizeEvidence] = []
        vendor = handle.properties.get(f"{used}.vendor")
        strong_vendor = vendor not in (None, "", "generic-tiff")
        mpp_x = handle.properties.get(f"{used}.mpp-x")
        mpp_y = handle.properties.get(f"{used}.mpp-y")
        if mpp_x not in (None, "") and mpp_y not in (None, ""):
            evidence.append(PixelSizeEvidence(f"{used}:{used}.mpp-x", float(mpp_x), float(mpp_y),
                                              strong_vendor))
        self._channels: list[str] = ["R", "G", "B"]
        self._channels_source = "rgb"
        self._n_channels = 3
        self._dtype = "uint8"
        try:
            tiff_evidence, names, _, names_source = _tiff_facts(self.path)
        except Exception:  # not a TIFF (e.g. DICOM, MIRAX): OpenSlide's word stands alone
            tiff_evidence, names, names_source = [], [], ""
        if used == "tiffslide":
            first = np.asarray(handle.read_region((0, 0), 0, (1, 1), as_array=True))
            self._dtype = str(first.dtype)
            self._n_channels = 1 if first.ndim == 2 else int(first.shape[-1])
            self._channels, self._channels_source = names, names_source
            # tiffslide's mpp for non-vendor files comes from the same resolution tags.
            evidence = [PixelSizeEvidence(e.source, e.mpp_x, e.mpp_y, e.strong and strong_vendor)
                        for e in evidence]
        for e in tiff_evidence:
            if not any(abs(e.mpp_x - o.mpp_x) < 1e-9 for o in evidence) or e.strong:
                evidence.append(e)
        if used == "openslide":
            evidence.extend(self._cross_check_tiffslide())
        return evidence

    def _name_channels(self, given: Sequence[str] | None, given_source: str) -> None:
        """Channel names: the file's, else the sidecar's, else ``given``, else ch0, ch1..."""
        n = self._n_channels
        if len(self._channels) != n:
            try:
                sidecar = read_sidecar(self.path, n) if self.path.is_file() else None
            except StackError as error:
                raise SlideError(str(error)) from error
            if sidecar is not None:
                self._channels, self._channels_source = list(sidecar.names), sidecar.source
            elif given:
                if len(given) != n:
                    raise SlideError(f"{self.path}: {given_source} lists {len(given)} channel "
                                     f"name(s) ({', '.join(given)}) but the image has {n} "
                                     "channel(s)")
                self._channels, self._channels_source = list(given), given_source
            else:
                self._channels, self._channels_source = [f"ch{i}" for i in range(n)], "none"
        keys = [safe_channel_name(c) for c in self._channels]
        clashes = sorted({c for c, k in zip(self._channels, keys, strict=True)
                          if keys.count(k) > 1})
        if clashes:
            raise SlideError(f"{self.path}: channel names {', '.join(clashes)} (from "
                             f"{self._channels_source}) give the same column name; rename "
                             "them (e.g. in a <file>.channels.txt sidecar)")

    def _cross_check_tiffslide(self) -> list[PixelSizeEvidence]:
        """tiffslide's reading of the same file, when it can open it: a second opinion."""
        try:
            import tiffslide

            with tiffslide.TiffSlide(self.path) as other:
                vendor = other.properties.get("tiffslide.vendor")
                mpp_x = other.properties.get("tiffslide.mpp-x")
                mpp_y = other.properties.get("tiffslide.mpp-y")
        except Exception:
            return []
        if mpp_x in (None, "") or mpp_y in (None, "") or vendor in (None, ""):
            return []
        return [PixelSizeEvidence("tiffslide:tiffslide.mpp-x", float(mpp_x), float(mpp_y), True)]

    # -- reading ---------------------------------------------------------------------------
    def best_level(self, mpp: float) -> int:
        """The coarsest pyramid level whose pixels are no larger than ``mpp``.

        Reading from it and downsampling the rest never upsamples unless level 0 itself is
        coarser than ``mpp``.
        """
        best = 0
        for level in range(len(self.info.level_downsamples)):
            if self.info.level_mpp(level) <= mpp * 1.001:
                best = level
        return best

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a box of a pyramid level in that level's pixel coordinates.

        Returns ``(height, width, channels)``. Brightfield RGBA from OpenSlide is composited on
        white (transparent = no tissue). Areas outside the image come back as background.
        """
        downsample = self.info.level_downsamples[level]
        location = (int(round(x * downsample)), int(round(y * downsample)))
        try:
            if self.info.backend == "openslide":
                rgba = np.asarray(self._handle.read_region(location, level, (width, height)))
                alpha = rgba[..., 3:4].astype(np.float32) / 255.0
                rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)
                return np.rint(rgb).astype(np.uint8)
            array = self._handle.read_region(location, level, (width, height), as_array=True,
                                             padding=True)
        except Exception as error:
            raise SlideError(f"{self.path}: cannot read level {level} at ({x}, {y}) size "
                             f"{width}x{height}: {error}") from error
        array = np.asarray(array)
        return array[..., None] if array.ndim == 2 else array

    def working_shape(self, mpp: float) -> tuple[int, int]:
        """(height, width) of the whole slide at ``mpp`` um/px."""
        width, height = self.info.dimensions
        scale = self.info.pixel_size.mpp / mpp
        return max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))

    def read_region_at(self, x: int, y: int, width: int, height: int, *, mpp: float,
                       order: int = 1, channels: tuple[int, ...] | None = None) -> np.ndarray:
        """Read a box given in pixel coordinates of a virtual image at ``mpp`` um/px.

        The value of each output pixel depends only on its position, not on the box: pixel
        centres are mapped exactly to the source level and interpolated (with a Gaussian
        anti-aliasing prefilter when downsampling), so adjacent or overlapping boxes agree.
        ``channels`` keeps only those channel indices (interpolated alone: cheaper for one
        channel of a many-channel stack).

        Returns
        -------
        numpy.ndarray
            ``(height, width, channels)`` in the slide's dtype.
        """
        level = self.best_level(mpp)
        ratio = mpp / self.info.level_mpp(level)  # source pixels per output pixel (>= ~1)
        pick = list(channels) if channels is not None else slice(None)
        if abs(ratio - 1) < 1e-6:
            return self.read_level(level, x, y, width, height)[..., pick]
        sigma = max(0.0, (ratio - 1) / 2)
        margin = int(math.ceil(4 * sigma)) + 2
        src_x0 = int(math.floor((x + 0.5) * ratio - 0.5)) - margin
        src_y0 = int(math.floor((y + 0.5) * ratio - 0.5)) - margin
        src_w = int(math.ceil(width * ratio)) + 2 * margin + 2
        src_h = int(math.ceil(height * ratio)) + 2 * margin + 2
        source = self.read_level(level, src_x0, src_y0, src_w, src_h)[..., pick].astype(
            np.float32)
        if sigma > 0.05:
            source = ndi.gaussian_filter(source, sigma=(sigma, sigma, 0), mode="nearest",
                                         truncate=4.0)
        rows = (np.arange(y, y + height) + 0.5) * ratio - 0.5 - src_y0
        cols = (np.arange(x, x + width) + 0.5) * ratio - 0.5 - src_x0
        grid_r, grid_c = np.meshgrid(rows, cols, indexing="ij")
        out = np.empty((height, width, source.shape[2]), dtype=np.float32)
        for channel in range(source.shape[2]):
            out[..., channel] = ndi.map_coordinates(source[..., channel], [grid_r, grid_c],
                                                    order=order, mode="nearest")
        dtype = np.dtype(self.info.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(dtype)
        return out.astype(dtype)

    def read_overview(self, mpp: float, *, chunk: int = 2048) -> np.ndarray:
        """The whole slide at a coarse ``mpp`` (e.g. 8 um/px), read chunk by chunk.

        Memory stays bounded by ``chunk`` source pixels squared, whatever the slide size.
        """
        height, width = self.working_shape(mpp)
        if height < 1 or width < 1:
            raise SlideError(f"{self.path}: slide is smaller than one pixel at {mpp} um/px")
        channels = len(self.info.channels)
        out = np.empty((height, width, channels), dtype=np.dtype(self.info.dtype))
        ratio = mpp / self.info.level_mpp(self.best_level(mpp))
        chunk = max(64, int(chunk / max(ratio, 1.0)))  # ``chunk`` counts source pixels
        for y in range(0, height, chunk):
            for x in range(0, width, chunk):
                h, w = min(chunk, height - y), min(chunk, width - x)
                out[y:y + h, x:x + w] = self.read_region_at(x, y, w, h, mpp=mpp)
        return out

    def close(self) -> None:
        """Release the file handle."""
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def nuclear_channel_index(channels: tuple[str, ...], preferred: tuple[str, ...]) -> int | None:
    """Index of the first channel whose name starts with a preferred name (case-insensitive).

    ``None`` for an RGB-encoded single stain (R, G, B channels), meaning "use the brightest
    channel per pixel". A multichannel image without a nuclear channel is an error.
    """
    lowered = [c.lower() for c in channels]
    for name in preferred:
        for index, channel in enumerate(lowered):
            if channel.startswith(name.lower()):
                return index
    if tuple(lowered[:3]) == ("r", "g", "b") or len(channels) == 1:
        return None if len(channels) > 1 else 0
    raise SlideError(f"no nuclear channel among {', '.join(channels)}; expected one of "
                     f"{', '.join(preferred)} (slide.nuclear_channels in the config)")
