"""Scoring the pipeline against annotations, and IHC nuclei through `hccbio slides run`.

The IHC tests segment with the model the pipeline ships for `ihc` rows, through the same
subprocess call a lab makes (`pathology.evaluation.harness.run_pipeline`), never with a helper.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathology.config import SegmentationSection
from pathology.evaluation.harness import (
    PipelineCells,
    ki67_tile_scores,
    match_centroids,
    rasterise_cells,
    score_instances,
)


def _disc_cell(cx: float, cy: float, r: float, mpp: float, n_rays: int = 32) -> dict:
    angles = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    return {"x_um": cx, "y_um": cy, "poly_x_um": (cx + r * np.cos(angles)).tolist(),
            "poly_y_um": (cy + r * np.sin(angles)).tolist()}


def test_centroid_matching_is_one_to_one_within_the_distance():
    """Synthetic points: two truths compete for one prediction; a far pair never matches."""
    truth = np.array([[0.0, 0.0], [2.0, 0.0], [50.0, 50.0]])
    predicted = np.array([[1.2, 0.0], [50.0, 54.0]])
    t, p = match_centroids(truth, predicted, 3.0)
    assert list(zip(t.tolist(), p.tolist(), strict=True)) == [(1, 0)]  # nearer truth wins
    assert len(match_centroids(truth, np.zeros((0, 2)), 3.0)[0]) == 0


def test_rasterised_polygons_score_as_the_truth_they_were_drawn_from():
    """Synthetic known geometry: discs drawn as the truth and given back as cells'
    polygons in um (pixel-centre convention of cells.parquet) match one-to-one at IoU 0.5."""
    mpp, shape = 0.25, (200, 200)
    centres = [(10.0, 10.0), (30.0, 12.0), (20.0, 35.0)]
    cells = pd.DataFrame([_disc_cell(x, y, 3.0, mpp) for x, y in centres])
    truth = rasterise_cells(cells, shape, mpp)
    yy, xx = np.nonzero(truth == 1)
    assert (xx.mean() + 0.5) * mpp == pytest.approx(10.0, abs=0.1)
    assert (yy.mean() + 0.5) * mpp == pytest.approx(10.0, abs=0.1)
    # the prediction misses the third nucleus and adds one on background
    predicted = pd.DataFrame([_disc_cell(x, y, 3.0, mpp) for x, y in
                              [centres[0], centres[1], (45.0, 45.0)]])
    result = PipelineCells("synthetic", predicted, mpp, shape)
    scores = score_instances(result, truth, classes=np.array([0, 0, 0, 1]))
    assert scores["iou50"]["n_matched"] == 2 and scores["iou50"]["f1"] == pytest.approx(2 / 3)
    assert scores["centroid"]["n_matched"] == 2
    assert scores["recall_by_class"] == {0: 1.0, 1: 0.0}
    assert scores["found_by_class"] == {0: 1.0, 1: 0.0}
    assert scores["centroid_matched"] == {1: 0, 2: 1}


def test_found_counts_a_nucleus_whose_outline_misses_iou_half():
    """Synthetic known geometry: a cell at the right place but half the radius is found
    (centroid) and not recalled at IoU 0.5 (a quarter of the area)."""
    mpp, shape = 0.25, (120, 120)
    truth = rasterise_cells(pd.DataFrame([_disc_cell(15.0, 15.0, 4.0, mpp)]), shape, mpp)
    small = PipelineCells("synthetic", pd.DataFrame([_disc_cell(15.0, 15.0, 2.0, mpp)]), mpp,
                          shape)
    scores = score_instances(small, truth, classes=np.array([0, 1]))
    assert scores["recall_by_class"] == {1: 0.0}
    assert scores["found_by_class"] == {1: 1.0}


@pytest.mark.parametrize("name", ["22_2", "34_3"])
def test_ihc_finds_pale_and_dab_nuclei(deepliif_pipeline, project_root, name):
    """22_2 is the pale-counterstain tile where the H&E model found 5-10 % of the blue nuclei.

    Issues 12 and 27 ask for 85 % of the Ki67-negative and of the Ki67-positive nuclei found
    and the Ki67 index within 5 points. The shipped IHC model finds (centroid within 3 um)
    88 % / 90 % (22_2) and 91 % / 91 % (34_3); at IoU 0.5, which asks for the outline too,
    22_2's negatives are 82 %. The index over the annotated nuclei is within 2.1 points (over
    every cell 34_3 reads 11 points high: its mask leaves DAB-positive nuclei out,
    tests/pathology/test_phenotypes.py). The figures must equal those the accuracy report
    and the card state.
    """
    item, result = deepliif_pipeline[name]
    scores = ki67_tile_scores(result, item)
    assert scores["centroid"]["recall"] >= 0.85
    assert scores["found_negative"] >= 0.85  # Ki67-negative (hematoxylin only)
    assert scores["found_positive"] >= 0.85  # Ki67-positive (DAB)
    assert scores["recall_negative"] >= 0.8 and scores["recall_positive"] >= 0.8
    assert abs(scores["ki67_annotated_error_points"]) <= 5.0
    assert scores["dab_call_agreement"] >= 0.95
    report = json.loads((project_root / "benchmarks" / "results" / "accuracy.json").read_text())
    model = Path(SegmentationSection().ihc_model).name
    stated = {t["image"]: t for t in report["models"][model]["deepliif_test"]["per_image"]}
    for key in ("recall_negative", "recall_positive", "found_negative", "found_positive",
                "ki67_error_points", "ki67_annotated_error_points"):
        assert scores[key] == pytest.approx(stated[name][key], abs=0.01), key


def test_pale_counterstain_tile_finds_80_percent_of_its_nuclei(deepliif_pipeline):
    """Issue 12's target: on 22_2 (pale hematoxylin) `hccbio slides run` finds at least 80 %
    of the annotated nuclei within 3 um (reached by the bf_nuclei of 2026-12-07, trained with
    the DeepLIIF masks laid on their IHC and re-rendered counterstains; 75 % before)."""
    item, result = deepliif_pipeline["22_2"]
    assert score_instances(result, item.labels, classes=item.classes)["centroid"]["recall"] >= 0.8


def test_ki67_index_end_to_end_within_5_points(deepliif_pipeline):
    """The labelling index from `hccbio slides run` (segmentation, DAB measurement, the Ki67
    panel's threshold), on the tile whose manual mask is complete (34_3's leaves positive
    nuclei unannotated: tests/pathology/test_phenotypes.py)."""
    item, result = deepliif_pipeline["22_2"]
    truth = 100.0 * item.classes[1:].mean()
    ours = 100.0 * result.cells["ki67_pos"].mean()
    assert abs(ours - truth) <= 5, (ours, truth)


def test_pale_counterstain_is_shown_to_the_network_at_the_reference_level(shared_data,
                                                                           tmp_path):
    """22_2 re-rendered with 0.2 of its hematoxylin (its own counterstain vector, DAB kept)
    through `hccbio slides run`: shown to the network as it is (reference null), the IHC model
    finds about two thirds of the negative nuclei; shown with its hematoxylin scaled up to the
    reference level (the default) it finds 85 % or more, and the Ki67 index over the annotated
    nuclei stays within a point."""
    import dataclasses

    from pathology.evaluation.annotations import load_deepliif
    from pathology.evaluation.harness import annotated_tile_config, run_pipeline
    from pathology.segmentation.stains import counterstain_matrix, rescale_stains

    tile = next(t for t in load_deepliif(shared_data / "ihc" / "deepliif", "test")
                if t.name == "22_2")
    pale = dataclasses.replace(tile, name="22_2_h0.2", image=rescale_stains(
        tile.image, hematoxylin=0.2, matrix=counterstain_matrix(tile.image)))
    scores = {}
    for reference in (None, SegmentationSection().ihc_counterstain_reference):
        config = annotated_tile_config(SegmentationSection().ihc_model)
        config["segmentation"]["ihc_counterstain_reference"] = reference
        (result,) = run_pipeline([pale], tmp_path / str(reference), modality="ihc",
                                 stain="Ki67", config=config)
        scores[reference] = ki67_tile_scores(result, tile)
    as_is, scaled = scores[None], scores[SegmentationSection().ihc_counterstain_reference]
    assert as_is["found_negative"] < 0.75
    assert scaled["found_negative"] >= 0.85 and scaled["found_positive"] >= 0.85
    assert abs(scaled["ki67_annotated_error_points"]) <= 1.0
