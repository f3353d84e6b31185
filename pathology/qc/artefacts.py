"""Artefact masks of a slide: out-of-focus tiles, pen ink, folds / very dark and bright areas.

Pen, dark and bright areas are found on a low-resolution overview (``qc.overview_mpp``); focus
is scored on tiles read at ``qc.focus_mpp`` on a lattice over the tissue, so memory stays
bounded by one tile whatever the slide size. Every mask lives on the overview grid.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hsv

from pathology.config import QcSection
from pathology.io.folder import ARTEFACT_MASK, ARTEFACT_META, SlideFolder
from pathology.io.slide import Slide

ARTEFACTS = ("focus", "pen", "dark", "bright")
ARTEFACT_CODES = {"focus": 1, "pen": 2, "dark": 4, "bright": 8}
ARTEFACT_MASK_FILE = ARTEFACT_MASK  # in the slide folder's qc/
ARTEFACT_META_FILE = ARTEFACT_META


@dataclass(frozen=True)
class ArtefactMask:
    """A slide's artefacts as QC found them: the bit mask the features step subtracts.

    Attributes
    ----------
    codes
        ``uint8`` bit mask on the QC overview grid (focus 1, pen 2, dark 4, bright 8).
    mpp
        Pixel size (um) of the grid, origin at the slide's top-left corner.
    qc_config_sha256
        Hash of the ``qc`` settings that found them.
    """

    codes: np.ndarray
    mpp: float
    qc_config_sha256: str

    def at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Whether points (um) lie on an artefact (False outside the grid).

        Examples
        --------
        >>> m = ArtefactMask(np.array([[0, 2]], np.uint8), 10.0, "")
        >>> m.at(np.array([5.0, 15.0, 99.0]), np.array([5.0, 5.0, 5.0])).tolist()
        [False, True, False]
        """
        rows = np.floor(np.asarray(y_um, dtype=np.float64) / self.mpp).astype(np.int64)
        cols = np.floor(np.asarray(x_um, dtype=np.float64) / self.mpp).astype(np.int64)
        inside = (rows >= 0) & (cols >= 0) & (rows < self.codes.shape[0]) & (
            cols < self.codes.shape[1])
        out = np.zeros(rows.shape, dtype=bool)
        out[inside] = self.codes[rows[inside], cols[inside]] > 0
        return out

    def pixel_centres_um(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres (um) of the artefact pixels, x then y."""
        rows, cols = np.nonzero(self.codes)
        return (cols + 0.5) * self.mpp, (rows + 0.5) * self.mpp


def save_artefact_mask(folder: Path, codes: np.ndarray, *, mpp: float, qc_config_sha256: str,
                       names: dict[str, int] | None = None) -> None:
    """Write ``qc/artefact_mask.png`` and ``qc/artefacts.json`` (grid size, hash) atomically."""
    from PIL import Image

    from hcccore.atomic import write_bytes, write_text

    target = SlideFolder(Path(folder)).qc
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(codes, dtype=np.uint8)).save(buffer, format="PNG")
    write_bytes(target / ARTEFACT_MASK_FILE, buffer.getvalue())
    meta = {"file": ARTEFACT_MASK_FILE, "mpp": float(mpp), "shape": list(codes.shape),
            "codes": names or ARTEFACT_CODES, "qc_config_sha256": qc_config_sha256}
    write_text(target / ARTEFACT_META_FILE, json.dumps(meta, indent=2) + "\n")


def load_artefact_mask(folder: Path) -> ArtefactMask | None:
    """The artefact mask QC saved for a slide folder, or None when QC has not run."""
    from PIL import Image

    target = SlideFolder(Path(folder)).qc
    meta_path, png = target / ARTEFACT_META_FILE, target / ARTEFACT_MASK_FILE
    if not (meta_path.is_file() and png.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    with Image.open(png) as image:
        codes = np.asarray(image, dtype=np.uint8)
    return ArtefactMask(codes, float(meta["mpp"]), str(meta.get("qc_config_sha256", "")))


def resize_mask(mask: np.ndarray, shape: tuple[int, int], *, mask_mpp: float,
                target_mpp: float) -> np.ndarray:
    """Nearest-neighbour resampling of a boolean mask onto another pixel grid.

    Parameters
    ----------
    mask
        Boolean mask at ``mask_mpp`` um/px, origin at the slide's top-left corner.
    shape
        ``(height, width)`` of the target grid.
    mask_mpp, target_mpp
        Pixel sizes (um) of the source and target grids.

    Returns
    -------
    numpy.ndarray
        Boolean mask of ``shape``; target pixels beyond the source are ``False``.

    Examples
    --------
    >>> m = np.array([[True, False]])
    >>> resize_mask(m, (2, 4), mask_mpp=2.0, target_mpp=1.0).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0]]
    """
    rows = np.floor((np.arange(shape[0]) + 0.5) * target_mpp / mask_mpp).astype(np.int64)
    cols = np.floor((np.arange(shape[1]) + 0.5) * target_mpp / mask_mpp).astype(np.int64)
    inside_r, inside_c = rows < mask.shape[0], cols < mask.shape[1]
    out = np.zeros(shape, dtype=bool)
    out[np.ix_(inside_r, inside_c)] = mask[np.ix_(rows[inside_r], cols[inside_c])]
    return out


def drop_small(mask: np.ndarray, *, min_area_um2: float, mpp: float) -> np.ndarray:
    """Remove connected pieces (8-connectivity) smaller than ``min_area_um2``."""
    min_px = int(math.ceil(min_area_um2 / mpp**2))
    if min_px <= 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def optical_density(rgb: np.ndarray, *, background: float = 255.0) -> np.ndarray:
    """Mean optical density of the RGB channels, ``-log10(I / I0)`` averaged."""
    values = np.clip(rgb[..., :3].astype(np.float32), 1.0, background) / background
    return -np.log10(values).mean(axis=2)


def pen_mask(overview: np.ndarray, *, mpp: float, config: QcSection) -> np.ndarray:
    """Marker ink (green, blue, cyan, yellow) on a brightfield overview.

    H&E and hematoxylin-DAB tissue has hues 0.70-0.95 (purple to pink) or brown (< 0.10);
    saturated pixels between are ink. Red ink cannot be told from eosin by colour and is
    not detected.
    """
    hsv = rgb2hsv(overview[..., :3])
    low, high = config.pen_hue_range
    ink = (hsv[..., 0] >= low) & (hsv[..., 0] <= high) & (hsv[..., 1] >= config.pen_min_saturation)
    ink = ndi.binary_closing(ink, structure=np.ones((3, 3), bool), border_value=0)
    return drop_small(ink, min_area_um2=config.pen_min_area_um2, mpp=mpp)


def dark_mask(od: np.ndarray, tissue: np.ndarray, *, mpp: float,
              config: QcSection) -> np.ndarray:
    """Folds and very dark areas: tissue whose mean optical density exceeds ``dark_min_od``."""
    dark = (od > config.dark_min_od) & tissue
    return drop_small(dark, min_area_um2=config.dark_min_area_um2, mpp=mpp)


def bright_mask(od: np.ndarray, tissue: np.ndarray, *, mpp: float,
                config: QcSection) -> np.ndarray:
    """Bubbles, tears and glass inside the tissue: optical density below ``bright_max_od``.

    Only pixels at least ``bright_edge_um`` inside the tissue border count, so the glass at
    the edge that the tissue mask's closing takes in is not an artefact.
    """
    edge = int(round(config.bright_edge_um / mpp))
    inner = ndi.binary_erosion(tissue, iterations=edge, border_value=0) if edge else tissue
    bright = (od < config.bright_max_od) & inner
    return drop_small(bright, min_area_um2=config.bright_min_area_um2, mpp=mpp)


@dataclass(frozen=True)
class FocusResult:
    """Focus scores of the tiles read, and the out-of-focus mask on the overview grid.

    Attributes
    ----------
    scores
        Variance of the Laplacian of each scored tile (intensity in [0, 1]).
    boxes
        ``(n, 4)`` level-0 pixel boxes ``x, y, width, height`` of the scored tiles.
    blurred
        Out-of-focus tissue on the overview grid (each scored tile marks its block).
    tiles_total
        Tissue tiles on the full lattice (scored or not).
    stride
        Lattice stride: 1 when every tissue tile was scored.
    saturated_fraction
        Per channel, the fraction of scored tissue pixels at the dtype's maximum.
    """

    scores: np.ndarray
    boxes: np.ndarray
    blurred: np.ndarray
    tiles_total: int
    stride: int
    saturated_fraction: dict[str, float]


def _tile_intensity(image: np.ndarray, *, kind: str, nuclear: int | None,
                    scale: float) -> np.ndarray:
    if kind == "brightfield":
        return image[..., :3].astype(np.float32).mean(axis=2) / 255.0
    channel = image.max(axis=2) if nuclear is None else image[..., nuclear]
    return channel.astype(np.float32) / scale


def focus_scores(slide: Slide, tissue: np.ndarray, *, overview_mpp: float, kind: str,
                 nuclear: int | None, intensity_scale: float,
                 config: QcSection) -> FocusResult:
    """Variance of the Laplacian per tile, on tissue pixels only.

    Parameters
    ----------
    slide
        The open slide.
    tissue
        Tissue mask on the overview grid (``overview_mpp``).
    overview_mpp
        Pixel size of ``tissue``.
    kind
        ``"brightfield"`` (mean RGB intensity / 255) or ``"fluorescence"`` (nuclear channel, or
        the brightest channel when ``nuclear`` is None, divided by ``intensity_scale``).
    nuclear
        Fluorescence: nuclear channel index.
    intensity_scale
        Fluorescence: intensity that maps to 1 (the tissue's 99th percentile).
    config
        The ``qc`` section.

    Returns
    -------
    FocusResult
    """
    mpp = config.focus_mpp
    tile = max(16, int(round(config.focus_tile_um / mpp)))
    height, width = slide.working_shape(mpp)
    n_rows, n_cols = math.ceil(height / tile), math.ceil(width / tile)
    ratio = mpp / overview_mpp  # overview pixels per focus pixel
    candidates = []
    for r in range(n_rows):
        y0, y1 = int(r * tile * ratio), max(int(r * tile * ratio) + 1, int((r + 1) * tile * ratio))
        for c in range(n_cols):
            x0 = int(c * tile * ratio)
            x1 = max(x0 + 1, int((c + 1) * tile * ratio))
            box = tissue[y0:y1, x0:x1]
            if box.size and box.mean() >= config.focus_min_tissue_fraction:
                candidates.append((r, c))
    stride = 1
    while len({(r // stride, c // stride) for r, c in candidates}) > config.focus_max_tiles:
        stride += 1
    chosen: dict[tuple[int, int], tuple[int, int]] = {}
    for r, c in candidates:  # row-major: the first tissue tile of each block is scored
        chosen.setdefault((r // stride, c // stride), (r, c))
    dtype = np.dtype(slide.info.dtype)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else np.inf
    saturated = np.zeros(len(slide.info.channels), dtype=np.int64)
    n_pixels = 0
    scores, boxes = [], []
    blurred = np.zeros_like(tissue)
    level0 = slide.info.pixel_size.mpp
    for (br, bc), (r, c) in chosen.items():
        h, w = min(tile, height - r * tile), min(tile, width - c * tile)
        image = slide.read_region_at(c * tile, r * tile, w, h, mpp=mpp)
        rows = np.minimum(((np.arange(r * tile, r * tile + h) + 0.5) * ratio).astype(np.int64),
                          tissue.shape[0] - 1)
        cols = np.minimum(((np.arange(c * tile, c * tile + w) + 0.5) * ratio).astype(np.int64),
                          tissue.shape[1] - 1)
        on = tissue[np.ix_(rows, cols)]
        on[[0, -1], :] = False
        on[:, [0, -1]] = False
        if on.sum() < 16:
            continue
        lap = ndi.laplace(_tile_intensity(image, kind=kind, nuclear=nuclear,
                                          scale=intensity_scale))
        score = float(lap[on].var())
        scores.append(score)
        boxes.append((c * tile * mpp / level0, r * tile * mpp / level0, w * mpp / level0,
                      h * mpp / level0))
        saturated += (image[on] >= top).sum(axis=0)
        n_pixels += int(on.sum())
        if score < config.focus_min_laplacian_var:
            y0 = int(br * stride * tile * ratio)
            x0 = int(bc * stride * tile * ratio)
            y1 = int(math.ceil((br + 1) * stride * tile * ratio))
            x1 = int(math.ceil((bc + 1) * stride * tile * ratio))
            blurred[y0:y1, x0:x1] = True
    blurred &= tissue
    fractions = {name: (float(saturated[i] / n_pixels) if n_pixels else 0.0)
                 for i, name in enumerate(slide.info.channels)}
    return FocusResult(np.asarray(scores, dtype=np.float64),
                       np.asarray(boxes, dtype=np.float64).reshape(-1, 4), blurred,
                       len(candidates), stride, fractions)
