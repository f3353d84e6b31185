"""End-to-end demo on real images that ship inside stardist and scikit-image.

Writes a small study (pyramidal TIFF slides with their pixel size, and a manifest) to
``demo_data/`` and runs the slide pipeline into ``--out``::

    python -m integration.demo --out demo_out

The images: ``stardist.data.test_image_he_2d()`` (H&E), ``skimage.data.immunohistochemistry()``
(IHC, hematoxylin + DAB) and ``stardist.data.test_image_nuclei_2d()`` (fluorescence nuclei).
Their scan resolution is not published; 0.5 um/px is assumed from the nucleus size and stated
in the manifest and the TIFF resolution tags.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
import tifffile

from integration.manifest import read_manifest

DEMO_MPP = 0.5  # assumed (see module docstring)
MARGIN = 96  # px of empty glass around each image, so tissue detection has work to do


def write_pyramidal_tiff(path: Path, image: np.ndarray, *, mpp: float, levels: int = 2,
                         channel_names: list[str] | None = None) -> None:
    """Write a tiled pyramidal TIFF (levels as successive pages) with its pixel size.

    RGB images are written as ``YXS`` (readable by OpenSlide as generic TIFF); multichannel
    images as an OME-TIFF ``CYX`` with ``PhysicalSizeX/Y`` and channel names (tiffslide).

    Parameters
    ----------
    path
        Output file.
    image
        ``(H, W, 3)`` uint8 RGB, or ``(C, H, W)`` fluorescence.
    mpp
        Level-0 pixel size in um/px.
    levels
        Number of pyramid levels (each halves the size).
    channel_names
        For multichannel images.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per cm
    rgb = image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    with tifffile.TiffWriter(path, bigtiff=False, ome=not rgb) as tif:
        current = image
        for level in range(levels):
            if rgb:
                tif.write(current, tile=(128, 128), photometric="rgb", compression="zlib",
                          resolution=resolution, resolutionunit="CENTIMETER",
                          subfiletype=0 if level == 0 else 1, metadata=None)
                current = current[::2, ::2]
            else:
                meta = ({"axes": "CYX", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                         "Channel": {"Name": channel_names or []}} if level == 0 else None)
                tif.write(current, tile=(128, 128), photometric="minisblack",
                          compression="zlib", resolution=resolution,
                          resolutionunit="CENTIMETER", metadata=meta,
                          subfiletype=0 if level == 0 else 1)
                current = current[:, ::2, ::2]


def build_demo_study(folder: Path) -> Path:
    """Write the demo slides and ``samples.csv`` into ``folder``; return the manifest path."""
    from skimage.data import immunohistochemistry
    from stardist.data import test_image_he_2d, test_image_nuclei_2d

    folder.mkdir(parents=True, exist_ok=True)
    he = np.pad(test_image_he_2d(), ((MARGIN, MARGIN), (MARGIN, MARGIN), (0, 0)),
                constant_values=245)
    ihc = np.pad(immunohistochemistry(), ((MARGIN, MARGIN), (MARGIN, MARGIN), (0, 0)),
                 constant_values=245)
    dapi = np.pad(test_image_nuclei_2d(), MARGIN).astype(np.uint16)
    write_pyramidal_tiff(folder / "demo01_he.tiff", he, mpp=DEMO_MPP)
    write_pyramidal_tiff(folder / "demo01_ihc.tiff", ihc, mpp=DEMO_MPP)
    write_pyramidal_tiff(folder / "demo01_mif.ome.tiff", dapi[None], mpp=DEMO_MPP,
                         channel_names=["DAPI"])
    rows = [
        ("DEMO01", "baseline", "demo01_he", "he", "HE", "demo01_he.tiff", DEMO_MPP),
        ("DEMO01", "baseline", "demo01_ihc", "ihc", "CD8", "demo01_ihc.tiff", DEMO_MPP),
        ("DEMO01", "baseline", "demo01_mif", "mif", "nuclei_only", "demo01_mif.ome.tiff",
         DEMO_MPP),
    ]
    manifest = folder / "samples.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "timepoint", "sample_id", "modality", "stain", "path",
                         "mpp"])
        writer.writerows(rows)
    read_manifest(manifest, check_files=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hccbio end-to-end demo")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--data", type=Path, default=Path("demo_data"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from pathology.batch import run_slides
    from pathology.config import PathologyConfig, TilingSection
    from pathology.pipeline import SlideJob

    manifest = build_demo_study(args.data)
    samples = read_manifest(manifest, check_files=True)
    jobs = [SlideJob(s.sample_id, s.path, s.modality, s.stain, s.mpp) for s in samples]
    # Small tiles so that even these small images are processed as several tiles.
    config = PathologyConfig(tiling=TilingSection(tile_size=256, halo=64))
    rows = run_slides(jobs, args.out, config)
    print()
    for row in rows:
        print(f"  {row.sample_id:12s} {row.status:8s} {row.reason}")
    print(f"\nDemo study:   {manifest}")
    print(f"Results:      {args.out.resolve()}")
    print(f"  batch report  {args.out / 'batch_report.csv'}")
    print(f"  provenance    {args.out / 'run.json'}")
    print(f"  cells         {args.out / 'slides' / '<sample_id>' / 'cells.parquet'}")
    return 0 if all(r.status != "failed" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
