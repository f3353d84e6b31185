"""``hccbio slides run`` on real shared slides gives the numbers recorded before pathology/ was
reorganised into steps under one runner (issue 28): the same output files, cells, cell classes,
regions, registration and slide features.

The reference (``reference_run.json`` beside this file) holds digests, not the outputs: row
counts and column sums of ``cells.parquet``, class and region counts of ``cell_classes.parquet``,
every slide feature (rounded), the regions' sources and areas, the registration's status and the
file names of the run folder. Record it again, after a change that is meant to change the
numbers, with ``HCCBIO_RECORD_REFERENCE=1 pytest tests/pathology/test_reference_run.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from integration.cli import app

REFERENCE = Path(__file__).with_name("reference_run.json")
HEADER = "patient_id,timepoint,sample_id,modality,stain,path,mpp,block_id\n"
SUM_COLUMNS = ("x_um", "y_um", "x_px", "y_px", "area_um2", "perimeter_um", "eccentricity",
               "solidity", "prob", "nucleus_hematoxylin_od", "nucleus_dab_od",
               "ring_hematoxylin_od")


def _round(value: object) -> object:
    """Numbers to 7 significant digits (NaN as None), containers element-wise."""
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    if math.isnan(value):
        return None
    return float(f"{value:.7g}")


def _slide_digest(folder: Path) -> dict:
    cells = pd.read_parquet(folder / "cells.parquet")
    classes = pd.read_parquet(folder / "cell_classes.parquet")
    features = json.loads((folder / "features.json").read_text())
    digest = {
        "cells": {"rows": len(cells), "columns": list(cells.columns),
                  "cell_id_sum": int(cells["cell_id"].sum()),
                  "tiles": sorted(int(t) for t in cells["tile_index"].unique()),
                  "sums": {c: _round(cells[c].sum()) for c in SUM_COLUMNS if c in cells}},
        "classes": {"rows": len(classes), "columns": list(classes.columns),
                    "counts": {c: {str(k): int(v) for k, v in
                                   classes[c].value_counts().sort_index().items()}
                               for c in classes.columns if c != "cell_id"}},
        "features": {name: _round(entry["value"]) for name, entry in
                     features["features"].items()},
        "n_nuclei": features["n_nuclei"],
        "tissue_area_mm2": _round(features["tissue_area_mm2"]),
        "regions": _round({k: features["regions"].get(k) for k in ("source", "areas_mm2")}),
        "phenotype_counts": features["phenotyping"]["phenotype_counts"],
        "artefacts": _round(features["artefacts"]["excluded_area_mm2"]),
    }
    digest["store"] = sorted(p.name for p in (folder / "store.zarr").iterdir())
    registration = folder / "registration.json"
    if registration.is_file():
        record = json.loads(registration.read_text())
        digest["registration"] = {"status": record["status"],
                                  "reference": record["reference"]}
    return digest


def _files(out: Path) -> list[str]:
    """The run folder's files, without the per-run provenance records (named by time)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and p.relative_to(out).parts[0] != "runs"
                  and ".zarr" not in str(p.relative_to(out)))


@pytest.fixture(scope="module")
def reference_run(shared_data: Path, kidney_block: dict[str, Path], tmp_path_factory) -> dict:
    """pathml's small_HE.svs (H&E, the nuclear-size tumour proxy on) and the rat kidney block
    (the pan-cytokeratin IHC registered onto the annotated H&E), through
    ``hccbio slides run`` with the default scheduler."""
    svs = shared_data / "slides" / "pathml-testdata" / "small_HE.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} not found")
    root = tmp_path_factory.mktemp("reference")
    paths, annotations = kidney_block, kidney_block["annotations"]
    manifest = root / "samples.csv"
    manifest.write_text(HEADER + f"P1,baseline,small-he,he,HE,{svs},,\n"
                                 f"R1,baseline,kidney-ck,ihc,CD8,{paths['ck']},,B7\n"
                                 f"R1,baseline,kidney-he,he,HE,{paths['he']},,B7\n")
    config = root / "pathology.yaml"
    config.write_text(  # the lymphocyte model named, so that a new default leaves this test
        "phenotypes:\n  lymphocyte_model: models/lymphocyte_classifier\n"
        f"regions:\n  annotations_dir: {annotations}\n  margin_width_um: 40\n"
        "  tumour_proxy: true\n"
        "registration:\n  max_size_px: 512\n  nonrigid: false\n")
    out = root / "out"
    result = CliRunner().invoke(app, ["slides", "run", str(manifest), "--out", str(out),
                                      "--config", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    report = pd.read_csv(out / "batch_report.csv", dtype=str, keep_default_na=False)
    table = pd.read_csv(out / "pathology_features.csv")
    return {
        "report": {r["sample_id"]: r["status"] for r in report.to_dict("records")},
        "table": {"rows": len(table), "columns": list(table.columns)},
        "files": _files(out),
        "slides": {sid: _slide_digest(out / "slides" / sid)
                   for sid in ("small-he", "kidney-he", "kidney-ck")},
    }


def _compare(actual: object, expected: object, where: str) -> list[str]:
    """Differences between two digests (numbers within 1e-6 relative), each named by path."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems = [f"{where}.{k}: missing" for k in expected if k not in actual]
        problems += [f"{where}.{k}: unexpected" for k in actual if k not in expected]
        for key in expected:
            if key in actual:
                problems += _compare(actual[key], expected[key], f"{where}.{key}")
        return problems
    if isinstance(expected, list) and isinstance(actual, list) and len(actual) == len(expected):
        return [p for i, (a, e) in enumerate(zip(actual, expected, strict=True))
                for p in _compare(a, e, f"{where}[{i}]")]
    if (isinstance(expected, float) and isinstance(actual, (int, float))
            and not isinstance(actual, bool)):
        return [] if actual == pytest.approx(expected, rel=1e-6, abs=1e-9) else \
            [f"{where}: {actual} != {expected}"]
    return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]


def test_slides_run_gives_the_recorded_numbers(reference_run):
    if os.environ.get("HCCBIO_RECORD_REFERENCE") == "1":
        REFERENCE.write_text(json.dumps(reference_run, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {REFERENCE.name}")
    expected = json.loads(REFERENCE.read_text())
    problems = _compare(json.loads(json.dumps(reference_run)), expected, "run")
    assert not problems, "\n".join(problems[:40])
