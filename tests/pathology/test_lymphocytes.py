"""The shipped H&E lymphocyte classifier reaches, on images it never saw, the F1 its card states."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from pathology.cells.lymphocytes import LymphocyteModelError, load_lymphocyte_model
from pathology.evaluation.annotations import stain_shift_key


@pytest.fixture(scope="module")
def training(project_root):
    spec = importlib.util.spec_from_file_location(
        "hccbio_train_lymphocytes", project_root / "models" / "train_lymphocytes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_classifier_on_held_out_images(project_root, shared_data, training):
    """Held-out CRCHistoPhenotypes images through `hccbio slides run` (the nuclei a slide
    gets), scored as the card states: the lymphocyte call and the four classes."""
    folder = project_root / "models" / "lymphocyte_classifier"
    model = load_lymphocyte_model(folder)
    meta = model.meta
    assert not set(meta["test_images"]) & set(meta["train_images"])
    assert model.classes == ("epithelial", "fibroblast", "inflammatory", "others")
    table = training.dataset(shared_data, model_spec=meta["segmentation_model"],
                             images=tuple(meta["test_images"]))
    matched = table[table["cls"] != ""]
    metrics = training.evaluate(model, matched)
    assert metrics["f1"] == pytest.approx(meta["test"]["f1"], abs=0.005)
    assert metrics["precision"] == pytest.approx(meta["test"]["precision"], abs=0.005)
    assert metrics["f1"] >= 0.7
    assert metrics["precision"] >= 0.75  # the call stays specific, not only sensitive
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{meta['test']['f1']:.3f}" in card and meta["segmentation_model"] in card
    for name, scores in meta["test"]["per_class"].items():
        assert f"| {name} | {scores['precision']:.3f} | {scores['recall']:.3f} |" in card
    # better than the trivial "everything is a lymphocyte" call
    truth = (matched["cls"] == "inflammatory").to_numpy()
    assert metrics["f1"] > training.f1_score(truth, np.ones_like(truth)) + 0.1
    # epithelial nuclei, the tumour cells of these images, are mostly not lymphocytes
    epithelial = matched["cls"].to_numpy() == "epithelial"
    assert model.predict(matched)[epithelial].mean() < 0.25


def test_lymphocyte_call_holds_on_a_darker_stain(project_root, shared_data, training):
    """The held-out images re-rendered with twice the hematoxylin (MoNuSeg's TCGA tiles stain
    1.2-2.6 times darker than CRCHistoPhenotypes) through `hccbio slides run`: the card's
    figures for that strength, and the call stays specific."""
    model = load_lymphocyte_model(project_root / "models" / "lymphocyte_classifier")
    meta = model.meta
    assert [2.0, 1.0] in meta["stain_shifts"]
    table = training.dataset(shared_data, model_spec=meta["segmentation_model"],
                             images=tuple(meta["test_images"]), stain=(2.0, 1.0))
    metrics = training.evaluate(model, table[table["cls"] != ""])
    stated = meta["test_stain_shifts"][stain_shift_key(2.0, 1.0)]
    assert metrics["f1"] == pytest.approx(stated["f1"], abs=0.005)
    assert metrics["f1"] >= 0.7
    assert metrics["precision"] >= 0.75


def test_small_round_dark_nuclei_are_lymphocytes(project_root):
    """Two synthetic nuclei with the median measurements of CRCHistoPhenotypes' inflammatory
    nuclei, and of a large carcinoma nucleus (80 um^2, the epithelial stain profile)."""
    model = load_lymphocyte_model(project_root / "models" / "lymphocyte_classifier")
    base = {"solidity": 0.95, "nucleus_eosin_od": 0.13}
    lymphocyte = dict(base, area_um2=19.5, perimeter_um=15.8, major_axis_um=5.8,
                      minor_axis_um=4.3, eccentricity=0.65, nucleus_hematoxylin_od=0.43,
                      ring_hematoxylin_od=0.10, ring_eosin_od=0.08)
    tumour = dict(base, area_um2=80.0, perimeter_um=34.0, major_axis_um=12.0,
                  minor_axis_um=8.5, eccentricity=0.7, nucleus_hematoxylin_od=0.34,
                  ring_hematoxylin_od=0.20, ring_eosin_od=0.10)
    cells = pd.DataFrame([lymphocyte, tumour])
    p = model.probability(cells)
    assert p[0] > model.threshold > p[1]
    assert list(model.predict_class(cells)) == ["inflammatory", "epithelial"]


def test_missing_model_or_columns_are_clear_errors(tmp_path, project_root):
    with pytest.raises(LymphocyteModelError, match="not found"):
        load_lymphocyte_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"features": []}))
    with pytest.raises(LymphocyteModelError, match="malformed"):
        load_lymphocyte_model(tmp_path)
    model = load_lymphocyte_model(project_root / "models" / "lymphocyte_classifier")
    with pytest.raises(LymphocyteModelError, match="ring_hematoxylin_od"):
        model.predict(pd.DataFrame({"area_um2": [20.0]}))
