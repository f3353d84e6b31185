"""The shipped H&E lymphocyte classifier reaches, on images it never saw, the F1 its card states."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from pathology.lymphocytes import LymphocyteModelError, load_lymphocyte_model


@pytest.fixture(scope="module")
def training(project_root):
    spec = importlib.util.spec_from_file_location(
        "hccbio_train_lymphocytes", project_root / "models" / "train_lymphocytes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_classifier_f1_on_held_out_images(project_root, shared_data, training):
    folder = project_root / "models" / "lymphocyte_classifier"
    model = load_lymphocyte_model(folder)
    meta = model.meta
    assert not set(meta["test_images"]) & set(meta["train_images"])
    root = shared_data / "nuclei" / "crchistophenotypes"
    table = pd.concat([training.nucleus_table(root / name, segmenter=meta["segmenter"])
                       for name in meta["test_images"]], ignore_index=True)
    metrics = training.evaluate(model, table[table["cls"] != ""])
    assert metrics["f1"] == pytest.approx(meta["test"]["f1"], abs=0.005)
    assert metrics["f1"] >= 0.7
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{meta['test']['f1']:.3f}" in card and meta["segmenter"] in card
    # the classifier beats the trivial "everything is a lymphocyte" call
    truth = (table["cls"] == "inflammatory").to_numpy()[table["cls"].to_numpy() != ""]
    assert metrics["f1"] > training.f1_score(truth, np.ones_like(truth)) + 0.1


def test_small_round_dark_nuclei_are_lymphocytes(project_root):
    model = load_lymphocyte_model(project_root / "models" / "lymphocyte_classifier")
    base = {"eccentricity": 0.4, "solidity": 0.97, "nucleus_eosin_od": 0.05,
            "ring_eosin_od": 0.25, "ring_hematoxylin_od": 0.15}
    lymphocyte = dict(base, area_um2=22.0, perimeter_um=17.0, major_axis_um=5.6,
                      minor_axis_um=5.0, nucleus_hematoxylin_od=0.75)
    tumour = dict(base, area_um2=80.0, perimeter_um=36.0, major_axis_um=12.0,
                  minor_axis_um=8.5, eccentricity=0.7, nucleus_hematoxylin_od=0.35)
    p = model.probability(pd.DataFrame([lymphocyte, tumour]))
    assert p[0] > model.threshold > p[1]


def test_missing_model_or_columns_are_clear_errors(tmp_path, project_root):
    with pytest.raises(LymphocyteModelError, match="not found"):
        load_lymphocyte_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"features": []}))
    with pytest.raises(LymphocyteModelError, match="malformed"):
        load_lymphocyte_model(tmp_path)
    model = load_lymphocyte_model(project_root / "models" / "lymphocyte_classifier")
    with pytest.raises(LymphocyteModelError, match="ring_hematoxylin_od"):
        model.predict(pd.DataFrame({"area_um2": [20.0]}))
