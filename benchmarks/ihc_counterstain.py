"""IHC nuclei against counterstain strength: where the negative count stops being reliable.

The DeepLIIF Ki67 test tiles with manual masks are re-rendered with their hematoxylin optical
density scaled (``HEMATOXYLIN_FACTORS``, :func:`pathology.segmentation.stains.rescale_stains`
with the tile's own counterstain vector, :func:`pathology.segmentation.stains.
counterstain_matrix`, so that a paler counterstain is less of the same dye; DAB kept), each
rendering goes through ``hccbio slides run`` (Ki67 panel, the IHC default model), and per
tile and strength this reports DAB-negative and DAB-positive recall (IoU 0.5), the Ki67 index
error, and the counterstain contrast that QC measures on every IHC slide
(:func:`pathology.qc.metrics.counterstain_metrics`). ``qc.counterstain_min_contrast`` is set
from this curve: the contrast below which DAB-negative recall falls more than
``RECALL_DROP`` under its value at the tile's own counterstain. (Until 2026-12-07 the
rendering scaled the Ruifrok-Johnston hematoxylin vector, 11-13 degrees off these tiles'
counterstain: what that vector does not explain stayed behind, and below x 0.5 the nuclei came
out cyan and paler than the glass, an image no scanner makes.)

Usage: ``python -m benchmarks.ihc_counterstain`` (writes
``benchmarks/results/ihc_counterstain.json``
and a table into benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reports import save_report, write_block  # noqa: E402
from pathology.config import SegmentationSection  # noqa: E402
from pathology.evaluation.annotations import load_deepliif, shared_data_folder  # noqa: E402
from pathology.evaluation.harness import annotated_tile_config, run_pipeline, score_instances  # noqa: E402
from pathology.qc.metrics import counterstain_metrics  # noqa: E402
from pathology.segmentation.stains import counterstain_matrix, rescale_stains  # noqa: E402

HEMATOXYLIN_FACTORS = (1.0, 0.7, 0.5, 0.35, 0.2)
RECALL_DROP = 0.10
RESULT = ROOT / "benchmarks" / "results" / "ihc_counterstain.json"


def measure(data: Path, model: str, work: Path) -> dict:
    """Per tile and hematoxylin factor: recall by class, Ki67 index, counterstain contrast."""
    tiles = load_deepliif(data / "ihc" / "deepliif", "test")
    matrices = {t.name: counterstain_matrix(t.image) for t in tiles}
    rendered = [dataclasses.replace(t, name=f"{t.name}_h{f:g}",
                                    image=rescale_stains(t.image, hematoxylin=f,
                                                         matrix=matrices[t.name]))
                for f in HEMATOXYLIN_FACTORS for t in tiles]
    results = run_pipeline(rendered, work, modality="ihc", stain="Ki67",
                           config=annotated_tile_config(model))
    rows = []
    for item, result in zip(rendered, results, strict=True):
        tile = next(t for t in tiles if item.name.startswith(f"{t.name}_h"))
        scores = score_instances(result, tile.labels, classes=tile.classes)
        truth_index = 100.0 * float(np.mean(tile.classes[1:]))
        ours = 100.0 * float(result.cells["ki67_pos"].mean()) if len(result.cells) else 0.0
        rows.append({"tile": tile.name, "hematoxylin_factor": float(item.name.rsplit("_h")[1]),
                     "recall_negative": scores["recall_by_class"].get(0),
                     "recall_positive": scores["recall_by_class"].get(1),
                     "ki67_truth_pct": truth_index, "ki67_pct": ours,
                     "ki67_error_points": ours - truth_index,
                     "counterstain": counterstain_metrics(result.cells)})
    return {"model": model, "tiles": [t.name for t in tiles], "rows": rows,
            "min_contrast": reliable_contrast(rows)}


def reliable_contrast(rows: list[dict]) -> float | None:
    """The largest counterstain contrast at which some tile's DAB-negative recall has fallen
    more than ``RECALL_DROP`` below its value at factor 1 (None if none fell)."""
    base = {r["tile"]: r["recall_negative"] for r in rows if r["hematoxylin_factor"] == 1.0}
    fallen = [r["counterstain"]["contrast"] for r in rows
              if r["recall_negative"] is not None and base.get(r["tile"]) is not None
              and r["recall_negative"] < base[r["tile"]] - RECALL_DROP
              and r["counterstain"]["contrast"] is not None]
    return max(fallen) if fallen else None


def table(report: dict) -> str:
    """Markdown: one row per tile and strength."""
    lines = ["| tile | hematoxylin x | counterstain contrast (OD) | DAB- recall | DAB+ recall | "
             "Ki67 index (truth) | error (points) |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        c = r["counterstain"]["contrast"]
        lines.append(f"| {r['tile']} | {r['hematoxylin_factor']:g} | "
                     f"{'-' if c is None else f'{c:.3f}'} | {r['recall_negative']:.2f} | "
                     f"{r['recall_positive']:.2f} | {r['ki67_pct']:.1f} % "
                     f"({r['ki67_truth_pct']:.1f} %) | {r['ki67_error_points']:+.1f} |")
    limit = report["min_contrast"]
    lines.append("")
    lines.append(f"DAB-negative recall falls more than {RECALL_DROP:.2f} below the tile's own "
                 "counterstain at contrast <= "
                 + ("(never, on these tiles)" if limit is None else f"{limit:.3f}")
                 + f" (model `{report['model']}`; QC's `qc.counterstain_min_contrast`).")
    return "\n".join(lines)


def update_readme(report: dict) -> None:
    """Replace this report's table in benchmarks/README.md."""
    write_block("ihc-counterstain", heading="IHC nuclei and counterstain strength",
                date=report["date"], body=table(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=SegmentationSection().ihc_model)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hccbio-counterstain-") as tmp:
        report = measure(shared_data_folder(), args.model, Path(tmp))
    report = save_report(report, args.out, started=started)
    print(table(report))
    if not args.no_readme:
        update_readme(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
