"""QC figure of a registration: a checkerboard of the two tissues and their outlines.

Left panel: squares alternating between the moving image and the fixed image mapped onto it
(edges of tissue and structures run on across the squares when the fit is good). Right panel:
the moving image with its own tissue outline (blue), the fixed tissue's outline mapped onto it
(reddish purple) and, when given, the reference's regions (tumour vermillion, margin orange, stroma
green). Colours are Okabe-Ito, as in :mod:`pathology.qc.overlays`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pathology.qc.overlays import FIXED_COLORS, OKABE_ITO, save_png

MOVING_COLOR = OKABE_ITO["blue"]
FIXED_COLOR = OKABE_ITO["reddish_purple"]
REGION_COLORS = {1: FIXED_COLORS["tumour"], 2: FIXED_COLORS["margin"],
                 3: FIXED_COLORS["stroma"]}


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    mask = np.asarray(mask, bool)
    return mask & ~ndi.binary_erosion(mask, iterations=width, border_value=0)


def _paint(rgb: np.ndarray, mask: np.ndarray, color) -> None:
    rgb[mask] = [int(255 * c) for c in color]


def checkerboard(a: np.ndarray, b: np.ndarray, *, squares: int = 8) -> np.ndarray:
    """Alternate squares of two images of the same shape.

    Examples
    --------
    >>> checkerboard(np.zeros((4, 4), int), np.ones((4, 4), int), squares=2)[:, 0].tolist()
    [0, 0, 1, 1]
    """
    rows, cols = a.shape[:2]
    side = max(1, int(np.ceil(max(rows, cols) / squares)))
    r, c = np.indices((rows, cols))
    pick = ((r // side + c // side) % 2).astype(bool)
    if a.ndim == 3:
        pick = pick[..., None]
    return np.where(pick, b, a)


def registration_figure(moving_rgb: np.ndarray, warped_rgb: np.ndarray,
                        moving_mask: np.ndarray, warped_mask: np.ndarray, *,
                        regions: np.ndarray | None = None, title: str = "") -> np.ndarray:
    """The two-panel figure as an RGB array (see the module docstring).

    Parameters
    ----------
    moving_rgb, warped_rgb
        ``(h, w, 3)`` uint8: the moving image, and the fixed image mapped onto its grid.
    moving_mask, warped_mask
        Their tissue masks.
    regions
        Region codes of the reference mapped onto the same grid (1 tumour, 2 margin,
        3 stroma), if any.
    title
        A line of text above the panels.
    """
    from PIL import Image, ImageDraw

    width = max(1, int(round(max(moving_mask.shape) / 400)))
    board = checkerboard(moving_rgb, warped_rgb)
    outlines = moving_rgb.copy()
    if regions is not None:
        for code, color in REGION_COLORS.items():
            _paint(outlines, _outline(regions == code, width), color)
    _paint(outlines, _outline(moving_mask, width), MOVING_COLOR)
    _paint(outlines, _outline(warped_mask, width), FIXED_COLOR)
    gap = np.full((moving_rgb.shape[0], 8, 3), 255, np.uint8)
    panels = np.concatenate([board, gap, outlines], axis=1)
    header = 18 * (1 + title.count("\n")) + 24
    canvas = np.full((panels.shape[0] + header, panels.shape[1], 3), 255, np.uint8)
    canvas[header:] = panels
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill=(0, 0, 0))
    legend = [("moving tissue", MOVING_COLOR), ("fixed tissue (mapped)", FIXED_COLOR)]
    if regions is not None:
        legend += [("tumour", REGION_COLORS[1]), ("margin", REGION_COLORS[2]),
                   ("stroma", REGION_COLORS[3])]
    x = board.shape[1] + 12
    y = header - 20
    for label, color in legend:
        draw.rectangle([x, y + 3, x + 10, y + 13], fill=tuple(int(255 * c) for c in color))
        draw.text((x + 14, y + 2), label, fill=(0, 0, 0))
        x += 14 + 7 * len(label) + 14
    draw.text((4, header - 20), "checkerboard: moving / fixed (mapped)", fill=(0, 0, 0))
    return np.asarray(image)


def write_registration_figure(path: Path, registration, *, regions: np.ndarray | None = None,
                              title: str = "") -> None:
    """Write the figure of a :class:`~pathology.registration.record.Registration` as PNG.

    The fixed view is mapped onto the moving view's grid with the final transform.
    """
    moving, fixed = registration.moving, registration.fixed
    transform = registration.transform
    shape = moving.mask.shape
    warped = np.stack([transform.resample(fixed.display[..., k], spacing=fixed.spacing,
                                          shape=shape, target_spacing=moving.spacing,
                                          nearest=False) for k in range(3)], axis=-1)
    outside = transform.resample(np.ones(fixed.mask.shape, bool), spacing=fixed.spacing,
                                 shape=shape, target_spacing=moving.spacing)
    warped[~outside] = 255
    warped_mask = transform.resample(fixed.mask, spacing=fixed.spacing, shape=shape,
                                     target_spacing=moving.spacing)
    figure = registration_figure(moving.display, warped.astype(np.uint8), moving.mask,
                                 warped_mask, regions=regions, title=title)
    save_png(Path(path), figure)
