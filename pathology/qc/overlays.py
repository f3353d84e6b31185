"""QC overlays as PNG: thumbnail, tissue and artefacts, detections, regions, densities, crops.

Two kinds of image are written:

- figures for people (``tissue_artefacts.png``, ``detections.png``, ``regions.png``,
  ``density.png``, ``crop_<k>.png`` / ``crop_<k>_overlay.png``), with a legend;
- transparent layers on the overview grid (``layer_tissue.png``, ``layer_detections.png``,
  ``layer_regions.png``) that the review app lays over the slide in the deep-zoom viewer.

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies); heatmaps use ``cividis``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Okabe & Ito (2008), "Color Universal Design".
OKABE_ITO = {
    "orange": (0.902, 0.624, 0.0), "sky_blue": (0.337, 0.706, 0.914),
    "bluish_green": (0.0, 0.620, 0.451), "yellow": (0.941, 0.894, 0.259),
    "blue": (0.0, 0.447, 0.698), "vermillion": (0.835, 0.369, 0.0),
    "reddish_purple": (0.800, 0.475, 0.655), "black": (0.0, 0.0, 0.0),
    "grey": (0.6, 0.6, 0.6),
}
FIXED_COLORS = {
    "tumour": OKABE_ITO["vermillion"], "tumor": OKABE_ITO["vermillion"],
    "cd8_t": OKABE_ITO["blue"], "lymphocyte": OKABE_ITO["blue"],
    "stroma": OKABE_ITO["bluish_green"], "margin": OKABE_ITO["orange"],
    "other": OKABE_ITO["grey"], "nucleus": OKABE_ITO["sky_blue"],
    "focus": OKABE_ITO["sky_blue"], "pen": OKABE_ITO["orange"],
    "dark": OKABE_ITO["vermillion"], "bright": OKABE_ITO["reddish_purple"],
    "tissue": OKABE_ITO["black"],
}
# Classes without a fixed colour, in this order: green and yellow first, since outlines must
# stand out on blue hematoxylin or DAPI nuclei and on brown DAB (blue last but one).
CYCLE = ("bluish_green", "yellow", "reddish_purple", "orange", "sky_blue", "vermillion",
         "blue", "black")
REGION_ORDER = ("tumour", "margin", "stroma")


def class_colors(names: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """A fixed colour per known class, then the Okabe-Ito cycle in sorted name order.

    Examples
    --------
    >>> class_colors(["tumour", "b_cell"])["tumour"] == OKABE_ITO["vermillion"]
    True
    """
    colors: dict[str, tuple[float, float, float]] = {}
    free = [OKABE_ITO[c] for c in CYCLE]
    used = set()
    for name in sorted(set(names)):
        if name in FIXED_COLORS:
            colors[name] = FIXED_COLORS[name]
            used.add(FIXED_COLORS[name])
    spare = [c for c in free if c not in used] or free
    for i, name in enumerate(n for n in sorted(set(names)) if n not in colors):
        colors[name] = spare[i % len(spare)]
    return colors


def hex_color(tint: Iterable[float]) -> str:
    """``#rrggbb`` of an RGB tint in [0, 1].

    Examples
    --------
    >>> hex_color((0.0, 0.447, 0.698))
    '#0072b2'
    """
    return "#" + "".join(f"{round(255 * float(c)):02x}" for c in tint)


def tint_from_hex(color: str) -> tuple[float, float, float]:
    """RGB tint in [0, 1] of ``#rrggbb`` (or ``rrggbb``).

    Examples
    --------
    >>> tint_from_hex("#ff0000")
    (1.0, 0.0, 0.0)
    """
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) / 255 for i in (0, 2, 4))


def channel_scales(image: np.ndarray) -> np.ndarray:
    """Per-channel display maximum (99.5th percentile) of a multichannel image."""
    flat = image.reshape(-1, image.shape[-1]).astype(np.float32)
    scales = np.percentile(flat, 99.5, axis=0) if flat.size else np.ones(image.shape[-1])
    return np.where(scales > 0, scales, 1.0).astype(np.float32)


def channel_tints(channels: tuple[str, ...], *, nuclear: int | None,
                  markers: list[tuple[str, str | None]]) -> list[tuple | None]:
    """False colours of a multiplex composite: the nuclear channel in blue, each panel
    marker's channel in its ``color`` (else the next Okabe-Ito colour), other channels hidden;
    when some markers have a ``color``, only those are shown.

    Parameters
    ----------
    channels
        The slide's channel names.
    nuclear
        Index of the nuclear channel (None: none shown).
    markers
        ``(channel, '#rrggbb' or None)`` per panel marker, in panel order.

    Examples
    --------
    >>> channel_tints(("DAPI", "CD8", "x"), nuclear=0, markers=[("CD8", "#ff0000")])
    [(0.0, 0.447, 0.698), (1.0, 0.0, 0.0), None]
    """
    tints: list[tuple | None] = [None] * len(channels)
    if any(color for _, color in markers):  # the panel chose its display: show only those
        markers = [(channel, color) for channel, color in markers if color]
    if nuclear is not None:
        tints[nuclear] = OKABE_ITO["blue"]
    spare = iter([OKABE_ITO[c] for c in ("orange", "bluish_green", "reddish_purple",
                                          "yellow", "vermillion", "sky_blue")] * 8)
    for channel, color in markers:
        if channel not in channels or tints[channels.index(channel)] is not None:
            continue
        tints[channels.index(channel)] = tint_from_hex(color) if color else next(spare)
    return tints


def display_rgb(image: np.ndarray, *, scales: np.ndarray | None = None,
                rgb: bool | None = None, tints: list[tuple | None] | None = None) -> np.ndarray:
    """An 8-bit RGB rendering (multichannel images as an Okabe-Ito colour composite).

    8-bit RGB is returned as is. Other images: each channel divided by its ``scales`` (default
    :func:`channel_scales` of this image; pass fixed scales so that tiles of one slide match)
    and tinted.

    Parameters
    ----------
    rgb
        Whether the channels are R, G, B (default: any 8-bit 3-channel image). Pass False
        for three fluorescence channels stored as 8 bits (e.g. DAPI, FITC, Cy3).
    tints
        RGB colour per channel, None to hide it (:func:`channel_tints`); default the
        Okabe-Ito cycle over all channels.
    """
    if rgb is None:
        rgb = image.dtype == np.uint8 and image.shape[2] == 3
    if rgb and image.dtype == np.uint8:
        return image[..., :3]
    scales = channel_scales(image) if scales is None else scales
    if tints is None:
        cycle = [OKABE_ITO[c] for c in ("blue", "bluish_green", "vermillion", "yellow",
                                         "reddish_purple", "sky_blue", "orange")]
        tints = [cycle[i % len(cycle)] for i in range(image.shape[2])]
    out = np.zeros((*image.shape[:2], 3), dtype=np.float32)
    for i in range(image.shape[2]):
        if tints[i] is None:
            continue
        channel = np.clip(image[..., i].astype(np.float32) / scales[i], 0, 1)
        out += channel[..., None] * np.asarray(tints[i], dtype=np.float32)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> None:
    """Write an array as PNG atomically."""
    import io

    from PIL import Image

    from hcccore.atomic import write_bytes

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    write_bytes(path, buffer.getvalue())


def _save_figure(figure, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    from hcccore.atomic import write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_bytes(path, buffer.getvalue())


def _figure(image: np.ndarray, title: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    height, width = image.shape[:2]
    scale = 8.0 / max(height, width)
    figure, axes = plt.subplots(figsize=(max(3.0, width * scale) + 2.5,
                                         max(3.0, height * scale)))
    axes.imshow(image, interpolation="nearest")
    axes.set_title(title, fontsize=10)
    axes.set_axis_off()
    return figure, axes


def _legend(axes, entries: list[tuple[str, tuple]]) -> None:
    from matplotlib.patches import Patch

    axes.legend(handles=[Patch(facecolor=c, edgecolor="black", label=label)
                         for label, c in entries],
                loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def write_thumbnail(overview: np.ndarray, path: Path) -> None:
    """The slide overview as an RGB PNG (one pixel per overview pixel)."""
    save_png(path, display_rgb(overview))


def tissue_artefact_layer(tissue: np.ndarray, artefacts: dict[str, np.ndarray]) -> np.ndarray:
    """RGBA layer: tissue border in black, each artefact filled in its colour (alpha 0.55)."""
    from scipy import ndimage as ndi

    layer = np.zeros((*tissue.shape, 4), dtype=np.uint8)
    border = tissue & ~ndi.binary_erosion(tissue, iterations=1, border_value=0)
    for name, mask in artefacts.items():
        layer[mask] = (*[int(255 * c) for c in FIXED_COLORS[name]], 140)
    layer[border] = (0, 0, 0, 255)
    return layer


def write_tissue_artefacts(overview: np.ndarray, tissue: np.ndarray,
                           artefacts: dict[str, np.ndarray], figure_path: Path,
                           layer_path: Path, *, mpp: float) -> None:
    """Thumbnail with the tissue outline and artefact masks, with a legend of areas."""
    layer = tissue_artefact_layer(tissue, artefacts)
    save_png(layer_path, layer)
    rgb = display_rgb(overview).astype(np.float32)
    alpha = layer[..., 3:4].astype(np.float32) / 255
    blended = (rgb * (1 - alpha) + layer[..., :3] * alpha).astype(np.uint8)
    figure, axes = _figure(blended, "tissue (outline) and artefacts")
    pixel_mm2 = mpp**2 / 1e6
    entries = [(f"tissue {tissue.sum() * pixel_mm2:.2f} mm²", FIXED_COLORS["tissue"])]
    entries += [(f"{name} {(mask & tissue).sum() * pixel_mm2:.3f} mm²", FIXED_COLORS[name])
                 for name, mask in artefacts.items()]
    _legend(axes, entries)
    _save_figure(figure, figure_path)


def write_detections(overview: np.ndarray, x_um: np.ndarray, y_um: np.ndarray,
                     classes: np.ndarray, figure_path: Path, layer_path: Path, *, mpp: float,
                     max_points: int, seed: int = 0) -> None:
    """Cell centroids coloured by phenotype on the thumbnail, with counts in the legend.

    The layer marks every cell's overview pixel; the figure draws at most ``max_points``
    cells (a seeded random sample) so that it renders in seconds.
    """
    names = np.asarray(classes).astype(str)
    colors = class_colors(np.unique(names))
    height, width = overview.shape[:2]
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    rows = np.clip((y_um / mpp).astype(np.int64), 0, height - 1)
    cols = np.clip((x_um / mpp).astype(np.int64), 0, width - 1)
    counts = {}
    for name in sorted(colors):
        chosen = names == name
        counts[name] = int(chosen.sum())
        layer[rows[chosen], cols[chosen]] = (*[int(255 * c) for c in colors[name]], 255)
    save_png(layer_path, layer)
    figure, axes = _figure(display_rgb(overview), "detections by phenotype")
    index = np.arange(len(names))
    if len(index) > max_points:
        index = np.sort(np.random.default_rng(seed).choice(index, max_points, replace=False))
    point_size = max(0.5, min(6.0, 2000.0 / max(1, np.sqrt(len(index)))))
    for name in sorted(colors):
        chosen = index[names[index] == name]
        axes.scatter(x_um[chosen] / mpp - 0.5, y_um[chosen] / mpp - 0.5, s=point_size,
                     color=colors[name], linewidths=0)
    _legend(axes, [(f"{name} (n={counts[name]:,})", colors[name]) for name in sorted(colors)])
    _save_figure(figure, figure_path)


def region_layer(codes: np.ndarray) -> np.ndarray:
    """RGBA layer with the border of each region (tumour, margin, stroma) in its colour."""
    from scipy import ndimage as ndi

    layer = np.zeros((*codes.shape, 4), dtype=np.uint8)
    for code, name in enumerate(REGION_ORDER, start=1):
        mask = codes == code
        border = mask & ~ndi.binary_erosion(mask, iterations=1, border_value=0)
        thick = ndi.binary_dilation(border, iterations=1) & mask
        layer[thick] = (*[int(255 * c) for c in FIXED_COLORS[name]], 255)
    return layer


def write_regions(overview: np.ndarray, codes: np.ndarray, figure_path: Path,
                  layer_path: Path, *, mpp: float) -> None:
    """Region borders on the thumbnail with a legend of region areas."""
    layer = region_layer(codes)
    save_png(layer_path, layer)
    rgb = display_rgb(overview).copy()
    drawn = layer[..., 3] > 0
    rgb[drawn] = layer[drawn][:, :3]
    figure, axes = _figure(rgb, "regions (borders)")
    pixel_mm2 = mpp**2 / 1e6
    entries = [(f"{name} {(codes == code).sum() * pixel_mm2:.2f} mm²", FIXED_COLORS[name])
               for code, name in enumerate(REGION_ORDER, start=1)]
    if not (codes > 0).any():
        entries = [("no regions known", FIXED_COLORS["other"])]
    _legend(axes, entries)
    _save_figure(figure, figure_path)


def write_density(x_um: np.ndarray, y_um: np.ndarray, classes: np.ndarray,
                  tissue: np.ndarray, path: Path, *, mpp: float, bin_um: float) -> None:
    """Heatmaps of cells per mm^2 of tissue, one panel per phenotype (cividis)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = np.asarray(classes).astype(str)
    kinds = sorted(np.unique(names))[:8] or ["nucleus"]
    height_um, width_um = tissue.shape[0] * mpp, tissue.shape[1] * mpp
    n_y, n_x = max(1, int(np.ceil(height_um / bin_um))), max(1, int(np.ceil(width_um / bin_um)))
    # tissue area per bin (mm^2) from the tissue mask
    t_rows, t_cols = np.nonzero(tissue)
    area, _, _ = np.histogram2d((t_rows + 0.5) * mpp, (t_cols + 0.5) * mpp, bins=(n_y, n_x),
                                range=((0, n_y * bin_um), (0, n_x * bin_um)))
    area *= mpp**2 / 1e6
    n_panels = len(kinds)
    columns = min(n_panels, 3)
    lines = int(np.ceil(n_panels / columns))
    aspect = n_y / n_x
    figure, axes = plt.subplots(lines, columns, squeeze=False, layout="constrained",
                                figsize=(4.2 * columns, max(2.5, 4.0 * aspect) * lines))
    for k, ax in enumerate(axes.ravel()):
        if k >= n_panels:
            ax.set_axis_off()
            continue
        chosen = names == kinds[k]
        counts, _, _ = np.histogram2d(y_um[chosen], x_um[chosen], bins=(n_y, n_x),
                                      range=((0, n_y * bin_um), (0, n_x * bin_um)))
        density = np.where(area > 0.25 * (bin_um**2 / 1e6), counts / np.maximum(area, 1e-12),
                           np.nan)
        image = ax.imshow(density, cmap="cividis", interpolation="nearest",
                          extent=(0, n_x * bin_um / 1000, n_y * bin_um / 1000, 0))
        ax.set_title(f"{kinds[k]} (n={int(chosen.sum()):,})", fontsize=9)
        ax.set_xlabel("mm", fontsize=8)
        figure.colorbar(image, ax=ax, label="cells / mm² tissue", shrink=0.8)
    figure.suptitle(f"density per {bin_um:g} um bin", fontsize=10)
    _save_figure(figure, path)


def crop_centres(tissue: np.ndarray, *, n: int, mpp: float) -> list[tuple[float, float]]:
    """``n`` points (um) spread over the tissue by farthest-point sampling (deterministic).

    The first is the tissue pixel nearest the tissue's centroid; each next one is the
    tissue pixel farthest from those already chosen.
    """
    rows, cols = np.nonzero(tissue)
    if n <= 0 or rows.size == 0:
        return []
    points = np.column_stack([cols + 0.5, rows + 0.5]) * mpp
    if len(points) > 50_000:  # a regular subsample keeps this fast on large slides
        points = points[:: int(np.ceil(len(points) / 50_000))]
    centre = points.mean(axis=0)
    chosen = [int(np.argmin(((points - centre) ** 2).sum(axis=1)))]
    distance = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < min(n, len(points)):
        nxt = int(np.argmax(distance))
        if distance[nxt] == 0:
            break
        chosen.append(nxt)
        distance = np.minimum(distance, ((points - points[nxt]) ** 2).sum(axis=1))
    return [(float(points[i, 0]), float(points[i, 1])) for i in chosen]


def write_crops(slide, centres: list[tuple[float, float]], cell_batches, folder: Path, *,
                crop_um: float, colors: dict[str, tuple], rgb: bool = True,
                scales: np.ndarray | None = None,
                tints: list[tuple | None] | None = None,
                channel_legend: list[tuple[str, tuple]] | None = None) -> list[dict]:
    """Full-resolution crops (level 0) with and without the cell outlines.

    Parameters
    ----------
    slide
        The open :class:`~pathology.io.slide.Slide`.
    centres
        Crop centres in um (see :func:`crop_centres`).
    cell_batches
        Iterable of record batches with ``poly_x_um``, ``poly_y_um``, ``x_um``, ``y_um`` and
        optional ``phenotype`` and whole-cell outlines ``cell_poly_x_um`` / ``cell_poly_y_um``
        (drawn dashed; read once for all crops).
    folder
        The slide's ``qc`` folder.
    crop_um
        Side of each crop; at most 1024 level-0 pixels are read.
    colors
        Class name to colour.
    rgb, scales, tints
        How pixels are rendered (see :func:`display_rgb`).
    channel_legend
        ``(channel, colour)`` entries of a multiplex composite, added to the legend.

    Returns
    -------
    list of dict
        Per crop: file names, level-0 box and centre.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    mpp0 = slide.info.pixel_size.mpp
    width0, height0 = slide.info.dimensions
    side = int(min(1024, max(16, round(crop_um / mpp0))))
    boxes = []
    for cx, cy in centres:
        x0 = int(np.clip(round(cx / mpp0 - side / 2), 0, max(0, width0 - side)))
        y0 = int(np.clip(round(cy / mpp0 - side / 2), 0, max(0, height0 - side)))
        boxes.append((x0, y0, min(side, width0), min(side, height0)))
    polygons: list[list] = [[] for _ in boxes]
    cell_polygons: list[list] = [[] for _ in boxes]
    labels: list[list] = [[] for _ in boxes]
    if cell_batches is not None:
        for batch in cell_batches:
            x = batch.column("x_um").to_numpy() / mpp0
            y = batch.column("y_um").to_numpy() / mpp0
            names = (np.asarray(batch.column("phenotype").to_pylist(), dtype=object)
                     if "phenotype" in batch.schema.names else None)
            for k, (x0, y0, w, h) in enumerate(boxes):
                inside = np.nonzero((x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h))[0]
                if inside.size == 0:
                    continue
                n_vertices = len(batch.column("poly_x_um")[0])
                sub_x = batch.column("poly_x_um").take(inside).flatten().to_numpy()
                sub_y = batch.column("poly_y_um").take(inside).flatten().to_numpy()
                ring = np.stack([sub_x.reshape(-1, n_vertices) / mpp0 - x0,
                                 sub_y.reshape(-1, n_vertices) / mpp0 - y0], axis=2)
                polygons[k].extend(ring)
                labels[k].extend(names[inside] if names is not None
                                 else ["nucleus"] * inside.size)
                if "cell_poly_x_um" in batch.schema.names:
                    n_cell = len(batch.column("cell_poly_x_um")[0])
                    cx_ = batch.column("cell_poly_x_um").take(inside).flatten().to_numpy()
                    cy_ = batch.column("cell_poly_y_um").take(inside).flatten().to_numpy()
                    cell_polygons[k].extend(np.stack([cx_.reshape(-1, n_cell) / mpp0 - x0,
                                                      cy_.reshape(-1, n_cell) / mpp0 - y0],
                                                     axis=2))
    out = []
    for k, (x0, y0, w, h) in enumerate(boxes):
        image = display_rgb(slide.read_level(0, x0, y0, w, h), rgb=rgb, scales=scales,
                            tints=tints)
        plain, overlay = f"crop_{k}.png", f"crop_{k}_overlay.png"
        save_png(folder / plain, image)
        figure, axes = plt.subplots(figsize=(6.5, 6.5 * h / w))
        axes.imshow(image)
        present = sorted(set(labels[k]))
        if polygons[k]:
            axes.add_collection(PolyCollection(
                polygons[k], facecolors="none", linewidths=0.8,
                edgecolors=[colors.get(name, OKABE_ITO["grey"]) for name in labels[k]]))
        if cell_polygons[k]:
            axes.add_collection(PolyCollection(
                cell_polygons[k], facecolors="none", linewidths=0.8, linestyles="dashed",
                edgecolors=[colors.get(name, OKABE_ITO["grey"]) for name in labels[k]]))
        axes.set_axis_off()
        axes.set_title(f"crop {k}: level-0 x={x0} y={y0} ({w * mpp0:.0f} um)", fontsize=9)
        _legend(axes, ([(f"{name} (n={labels[k].count(name)})", colors.get(
            name, OKABE_ITO["grey"])) for name in present] or [("no cells", OKABE_ITO["grey"])])
            + ([("cells: nucleus solid, whole cell dashed", (1, 1, 1))]
               if cell_polygons[k] else [])
            + [(f"channel {name}", color) for name, color in channel_legend or []])
        _save_figure(figure, folder / overlay)
        out.append({"image": plain, "overlay": overlay, "x_px": x0, "y_px": y0,
                    "width_px": w, "height_px": h})
    return out
