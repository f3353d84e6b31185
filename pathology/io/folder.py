"""A slide folder's files, named once: ``OUT/slides/<sample_id>`` as every step reads and
writes it (the run folder around it belongs to the runner, :mod:`pathology.run.layout`).

```
<slide folder>/                   SlideFolder
  store.zarr                      .store: tissue mask, tile progress, region maps, slide facts
  cell_parts/                     .cell_parts: one Parquet part per finished tile (resume state)
  cells.parquet                   .cells: one row per nucleus (segmentation, measurements)
  cell_classes.parquet            .classes: phenotype, region, artefact, marker calls per cell
  features.json                   .features: slide facts, then features with units
  registration.json               .registration: a serial section's fit onto its reference
  cells.h5ad                      .anndata: the cells as AnnData (hccbio slides export)
  qc/qc.json, artefact_mask.png, artefacts.json, overlays, QuPath GeoJSON
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORE = "store.zarr"
CELL_PARTS = "cell_parts"
CELLS = "cells.parquet"
CLASSES = "cell_classes.parquet"
FEATURES = "features.json"
REGISTRATION = "registration.json"
ANNDATA = "cells.h5ad"
QC_DIR = "qc"
QC_JSON = "qc.json"
ARTEFACT_MASK = "artefact_mask.png"
ARTEFACT_META = "artefacts.json"


@dataclass(frozen=True)
class SlideFolder:
    """``OUT/slides/<sample_id>``: one slide's outputs.

    Examples
    --------
    >>> SlideFolder(Path("out/slides/s1")).cells.as_posix()
    'out/slides/s1/cells.parquet'
    """

    root: Path

    @property
    def sample_id(self) -> str:
        """The slide's sample id (the folder name)."""
        return self.root.name

    @property
    def store(self) -> Path:
        """``store.zarr``: tissue mask, tile progress, slide facts."""
        return self.root / STORE

    @property
    def cell_parts(self) -> Path:
        """``cell_parts/``: one Parquet part per finished tile."""
        return self.root / CELL_PARTS

    @property
    def cells(self) -> Path:
        """``cells.parquet``: one row per nucleus."""
        return self.root / CELLS

    @property
    def classes(self) -> Path:
        """``cell_classes.parquet``: phenotype, region, artefact, marker calls per cell."""
        return self.root / CLASSES

    @property
    def features(self) -> Path:
        """``features.json``: slide facts and features with units."""
        return self.root / FEATURES

    @property
    def registration(self) -> Path:
        """``registration.json``: a serial section's registration onto its reference."""
        return self.root / REGISTRATION

    @property
    def anndata(self) -> Path:
        """``cells.h5ad``: the cells as AnnData (``hccbio slides export``)."""
        return self.root / ANNDATA

    @property
    def qc(self) -> Path:
        """``qc/``: QC metrics, overlays, QuPath exports."""
        return self.root / QC_DIR

    @property
    def qc_json(self) -> Path:
        """``qc/qc.json``."""
        return self.qc / QC_JSON

    @property
    def artefact_mask(self) -> Path:
        """``qc/artefact_mask.png``: QC's artefacts, subtracted by the features step."""
        return self.qc / ARTEFACT_MASK
