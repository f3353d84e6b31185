"""Readers for the annotated nucleus sets used to train and validate segmentation models.

Each reader returns :class:`AnnotatedImage` records: the image, an instance label image
(0 = background, 1..n = nuclei) and the pixel size when the source states one.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage import io as skio
from skimage.draw import polygon as draw_polygon
from skimage.transform import rescale

from pathology.config import PROJECT_ROOT

SHARED_DATA_ENV = "HCCBIO_SHARED_DATA"


def shared_data_folder(*, must_exist: bool = True) -> Path:
    """The real data folder the project trains, tests and benchmarks on: ``$HCCBIO_SHARED_DATA``,
    else ``shared/data`` beside the repository (``../shared/data``); never inside it.

    Raises
    ------
    FileNotFoundError
        With ``must_exist``, when the folder is not there (naming it and the variable).
    """
    root = Path(os.environ.get(SHARED_DATA_ENV, PROJECT_ROOT.parent / "shared" / "data"))
    if must_exist and not root.is_dir():
        raise FileNotFoundError(f"shared data folder {root} not found; set {SHARED_DATA_ENV}")
    return root


MONUSEG_MPP = 0.2527  # MicronsPerPixel stated in every MoNuSeg XML


@dataclass(frozen=True)
class AnnotatedImage:
    """One annotated image: pixels, instance labels and provenance."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    mpp: float | None
    source: str
    classes: np.ndarray | None = None  # per-label class code, index = label (0: background)


def _read_xml_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def read_imagescope_polygons(path: Path) -> tuple[list[np.ndarray], float | None]:
    """Read nucleus polygons from an Aperio ImageScope XML annotation file.

    Parameters
    ----------
    path
        The ``.xml`` (or gzip-compressed ``.xml.gz``) file.

    Returns
    -------
    polygons, mpp
        One ``(n, 2)`` array of ``(x, y)`` vertices per region, and the ``MicronsPerPixel``
        attribute when present.
    """
    root = ET.fromstring(_read_xml_text(path))
    mpp_text = root.attrib.get("MicronsPerPixel")
    polygons = []
    for region in root.iter("Region"):
        vertices = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
        if len(vertices) >= 3:
            polygons.append(np.asarray(vertices))
    return polygons, (float(mpp_text) if mpp_text else None)


def rasterise_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Draw polygons into an instance label image; later polygons win where they overlap."""
    labels = np.zeros(shape, dtype=np.int32)
    for index, poly in enumerate(polygons, start=1):
        rr, cc = draw_polygon(poly[:, 1], poly[:, 0], shape=shape)
        labels[rr, cc] = index
    return labels


def rescale_annotated(item: AnnotatedImage, target_mpp: float) -> AnnotatedImage:
    """Resample an annotated image to ``target_mpp`` (bilinear pixels, nearest labels)."""
    if item.mpp is None:
        raise ValueError(f"{item.name}: no pixel size known, cannot rescale to {target_mpp} um/px")
    factor = item.mpp / target_mpp
    if abs(factor - 1) < 1e-3:
        return item
    channel_axis = -1 if item.image.ndim == 3 else None
    image = rescale(item.image.astype(np.float32), factor, order=1, channel_axis=channel_axis,
                    preserve_range=True, anti_aliasing=factor < 1)
    labels = rescale(item.labels, factor, order=0, preserve_range=True,
                     anti_aliasing=False).astype(np.int32)
    dtype = item.image.dtype
    image = np.clip(np.rint(image), 0, 255).astype(dtype) if dtype == np.uint8 else image
    return AnnotatedImage(item.name, image, labels, target_mpp, item.source, item.classes)


def load_monuseg(root: Path, *, annotated_only: bool = False) -> list[AnnotatedImage]:
    """Load MoNuSeg tiles (``images/*.tif`` with ``annotations/*.xml[.gz]``), sorted by name.

    Parameters
    ----------
    root
        The set's folder (``nuclei/monuseg`` or ``nuclei/monuseg-train``).
    annotated_only
        Skip images without nucleus polygons (the training set ships polygons for 13 of its 30
        images) instead of raising.
    """
    items = []
    for image_path in sorted((root / "images").glob("*.tif")):
        stem = image_path.stem
        candidates = [root / "annotations" / f"{stem}.xml", root / "annotations" / f"{stem}.xml.gz"]
        xml_path = next((p for p in candidates if p.exists()), None)
        if xml_path is None and annotated_only:
            continue
        if xml_path is None:
            raise FileNotFoundError(f"{image_path}: no annotation file {candidates[0]} (or .gz)")
        image = skio.imread(image_path)[..., :3]
        polygons, mpp = read_imagescope_polygons(xml_path)
        labels = rasterise_polygons(polygons, image.shape[:2])
        items.append(AnnotatedImage(stem, image, labels, mpp or MONUSEG_MPP, "monuseg"))
    return items


def load_dsb2018(root: Path, modality: str) -> list[AnnotatedImage]:
    """Load DSB2018 images of one modality (``fluorescence`` or ``histology_brightfield``).

    Fluorescence images are returned as 2-D grey images, brightfield as RGB. DSB2018 states
    no pixel size, so ``mpp`` is ``None``.
    """
    folder = root / modality
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: DSB2018 modality folder not found")
    items = []
    for sample in sorted(p for p in folder.iterdir() if p.is_dir()):
        image = skio.imread(next((sample / "images").glob("*.png")))
        image = image[..., 0] if modality == "fluorescence" else image[..., :3]
        labels = np.zeros(image.shape[:2], dtype=np.int32)
        for index, mask_path in enumerate(sorted((sample / "masks").glob("*.png")), start=1):
            labels[skio.imread(mask_path) > 0] = index
        items.append(AnnotatedImage(sample.name, image, labels, None, f"dsb2018/{modality}"))
    return items


DEEPLIIF_MPP = 0.25  # 40x; SOURCE.txt: nuclei about 25 px across
DEEPLIIF_PANEL = 512
DEEPLIIF_SPLITS = {"train": ("Bladder1", "Lung1"), "test": ("22_2", "34_3")}


def load_deepliif(root: Path, split: str) -> list[AnnotatedImage]:
    """Load DeepLIIF Ki67 IHC tiles with all nuclei and their Ki67 class.

    Each PNG holds six 512 px panels (IHC, hematoxylin, DAPI, Lap2, Ki67, mask); the IHC panel
    is returned. ``train`` tiles take their instance mask from the sixth panel, ``test`` tiles
    from the manual masks in ``test_groundtruth``. Mask colours: red = Ki67-positive nucleus,
    blue = negative; instances are connected components of red | blue. ``classes`` holds
    1 for Ki67-positive and 0 for negative nuclei (index = label).

    Parameters
    ----------
    root
        ``ihc/deepliif`` in the shared data folder.
    split
        ``"train"`` or ``"test"``.
    """
    from scipy import ndimage as ndi

    if split not in DEEPLIIF_SPLITS:
        raise ValueError(f"DeepLIIF split {split!r}: expected one of {', '.join(DEEPLIIF_SPLITS)}")
    items = []
    for name in DEEPLIIF_SPLITS[split]:
        path = root / split / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: DeepLIIF tile not found")
        panels = skio.imread(path)[..., :3]
        image = np.ascontiguousarray(panels[:, :DEEPLIIF_PANEL])
        mask = (skio.imread(root / "test_groundtruth" / f"{name}.png")[..., :3]
                if split == "test" else panels[:, 5 * DEEPLIIF_PANEL:6 * DEEPLIIF_PANEL])
        red = (mask[..., 0] > 200) & (mask[..., 1] < 50) & (mask[..., 2] < 50)
        blue = (mask[..., 2] > 200) & (mask[..., 0] < 50) & (mask[..., 1] < 50)
        labels, n = ndi.label(red | blue)
        positive = np.asarray(ndi.mean(red, labels, np.arange(1, n + 1))) > 0.5
        if split == "train":
            # The training tiles' masks come from the co-registered immunofluorescence and sit
            # a few pixels off the IHC panel (Bladder1 6 px, Lung1 8 px at 0.25 um/px); the
            # manual test masks were drawn on the IHC and are left as they are.
            labels = shift_labels(labels, mask_offset(image, labels))
        classes = np.r_[0, positive.astype(np.int32)]
        items.append(AnnotatedImage(name, image, labels.astype(np.int32), DEEPLIIF_MPP,
                                    "deepliif", classes))
    return items


def mask_offset(image: np.ndarray, labels: np.ndarray, max_shift: int = 16) -> tuple[int, int]:
    """The whole-pixel shift that best lays an instance mask on the nuclei of an image.

    The shift ``(dy, dx)`` (at most ``max_shift`` pixels each way) that maximises the
    correlation between the mask's foreground and the image's total optical density
    (stained nuclei absorb most), compared away from the borders that the shift wraps.

    Parameters
    ----------
    image
        ``(H, W, 3)`` uint8 brightfield image.
    labels
        ``(H, W)`` instance mask of the same size.

    Returns
    -------
    tuple of int
        ``(dy, dx)`` for ``numpy.roll(labels, (dy, dx), axis=(0, 1))``.
    """
    od = -np.log(np.clip(image[..., :3].astype(np.float64) / 255.0, 1 / 255, 1)).sum(axis=-1)
    foreground = (labels > 0).astype(np.float64)
    inner = (slice(max_shift, -max_shift),) * 2
    target = od[inner].ravel()
    best, best_shift = -np.inf, (0, 0)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            moved = np.roll(foreground, (dy, dx), axis=(0, 1))[inner].ravel()
            score = np.corrcoef(target, moved)[0, 1]
            if score > best:
                best, best_shift = score, (dy, dx)
    return best_shift


def shift_labels(labels: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """An instance mask moved by ``(dy, dx)`` whole pixels; what enters at the edges is
    background (nothing wraps round)."""
    dy, dx = shift
    height, width = labels.shape
    moved = np.zeros_like(labels)
    moved[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        labels[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return moved


CRC_MPP = 0.55  # CRCHistoPhenotypes: 20x, about 0.55 um/px (SOURCE.txt)
CRC_CLASSES = ("epithelial", "fibroblast", "inflammatory", "others")


@dataclass(frozen=True)
class AnnotatedPoints:
    """One image with annotated nucleus centroids per class (no outlines)."""

    name: str
    image: np.ndarray
    points: dict[str, np.ndarray]  # class -> (n, 2) x, y in 0-based pixel coordinates
    mpp: float
    source: str

    def centroids_um(self) -> tuple[np.ndarray, np.ndarray]:
        """All points as ``(x, y)`` um (pixel centres, as cells.parquet) and their classes."""
        xy = np.concatenate([self.points[c] for c in self.points]).reshape(-1, 2)
        classes = np.concatenate([[c] * len(self.points[c]) for c in self.points])
        return (xy + 0.5) * self.mpp, classes.astype(object)

    def restained(self, hematoxylin: float, eosin: float) -> AnnotatedPoints:
        """This image re-rendered at another stain strength (:func:`pathology.segmentation.stains.
        rescale_stains`), its points unchanged; ``name`` gains the factors (``img1`` ->
        ``img1_h2_e1``) so that copies at several strengths can share one pipeline run."""
        from pathology.segmentation.stains import rescale_stains

        image = rescale_stains(self.image, hematoxylin=hematoxylin, eosin=eosin)
        return dataclasses.replace(
            self, name=f"{self.name}_h{hematoxylin:g}_e{eosin:g}", image=image)


def stain_shift_key(hematoxylin: float, eosin: float) -> str:
    """How tables and reports name a stain shift: ``(2.0, 1.0)`` -> ``"2,1"``."""
    return f"{hematoxylin:g},{eosin:g}"


def load_crchistophenotypes(root: Path) -> list[AnnotatedPoints]:
    """Load CRCHistoPhenotypes images (``imgN/imgN.bmp``) and their class centroids.

    The ``imgN_<class>.mat`` files hold 1-based MATLAB ``(x, y)`` coordinates; they are
    returned 0-based. Sorted by folder name.
    """
    from scipy.io import loadmat

    folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{root}: no CRCHistoPhenotypes image folders")
    items = []
    for folder in folders:
        name = folder.name
        image = skio.imread(folder / f"{name}.bmp")[..., :3]
        points = {}
        for cls in CRC_CLASSES:
            path = folder / f"{name}_{cls}.mat"
            xy = (np.asarray(loadmat(path)["detection"], dtype=np.float64).reshape(-1, 2)
                  if path.is_file() else np.zeros((0, 2)))
            points[cls] = xy - 1.0
        items.append(AnnotatedPoints(name, image, points, CRC_MPP, "crchistophenotypes"))
    return items


BRCA_M2C_MPP = 0.5  # BRCA-M2C: 40x regions downsampled to about 0.5 um/px (SOURCE.txt)
BRCA_M2C_CLASSES = {1: "lymphocyte", 2: "tumour", 3: "stromal"}


def load_brca_m2c(root: Path, split: str) -> list[AnnotatedPoints]:
    """Load BRCA-M2C breast H&E tiles of one split (``"train"`` or ``"val"``) and their points.

    Label rows are ``Y X class`` (Y first) in pixels; class 1 lymphocyte, 2 tumour /
    epithelial, 3 stromal. Points are returned as 0-based ``(x, y)``. Sorted by image name.

    Raises
    ------
    FileNotFoundError
        The split list or an image named by it is missing.
    ValueError
        An unknown split or class code.
    """
    if split not in ("train", "val"):
        raise ValueError(f"BRCA-M2C split must be 'train' or 'val', not {split!r}")
    root = Path(root)
    listing = root / f"brca_ds_{split}.txt"
    names = sorted(line.strip() for line in listing.read_text().splitlines() if line.strip())
    items = []
    for file_name in names:
        stem = Path(file_name).stem
        image = skio.imread(root / "images" / file_name)[..., :3]
        rows = np.loadtxt(root / "labels" / f"{stem}_gt_class_coords.txt", ndmin=2)
        codes = rows[:, 2].astype(int) if len(rows) else np.zeros(0, int)
        unknown = sorted(set(codes.tolist()) - set(BRCA_M2C_CLASSES))
        if unknown:
            raise ValueError(f"{root / 'labels' / stem}: unknown class codes {unknown}")
        points = {cls: rows[codes == code][:, [1, 0]].astype(np.float64)
                  for code, cls in BRCA_M2C_CLASSES.items()}
        items.append(AnnotatedPoints(stem, image, points, BRCA_M2C_MPP, "brca-m2c"))
    return items
