"""The shipped StarDist models reach, on their validation images, the accuracy their cards state.

The numbers are recomputed here from the shipped weights and the real annotated images.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from pathology.nuclei import load_model

MODELS = {"he_nuclei": "he_split", "he_nuclei_fast": "he_split", "fluo_nuclei": "fluo_split"}


def _training_module(project_root):
    spec = importlib.util.spec_from_file_location("hccbio_models_train",
                                                  project_root / "models" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_reaches_stated_accuracy(name, project_root, shared_data, monkeypatch):
    folder = project_root / "models" / name
    meta = json.loads((folder / "hccbio_model.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    stated = meta["metrics_val"]
    assert f"{stated['f1_iou50']:.3f}" in card  # the card states the recorded figure

    monkeypatch.setenv("HCCBIO_SHARED_DATA", str(shared_data))
    train = _training_module(project_root)
    _, val = getattr(train, MODELS[name])(shared_data)
    assert [item.name for item in val] == meta["val_images"]
    assert not set(meta["val_images"]) & set(meta["train_images"])
    model = load_model(str(folder))
    images = [train.normalise(item.image, meta["kind"]) for item in val]
    measured = train.evaluate(model.model, images, [item.labels for item in val])
    assert measured["f1_iou50"] == pytest.approx(stated["f1_iou50"], abs=0.01)
    assert measured["ap_iou50"] == pytest.approx(stated["ap_iou50"], abs=0.01)
    # Clearly better than the classical baseline on the same images.
    assert measured["f1_iou50"] > meta["watershed_val"]["f1_iou50"] + 0.05
    if meta["kind"] == "he":
        assert measured["f1_iou50"] >= 0.75  # the target for brightfield


@pytest.mark.parametrize("name", ["he_nuclei", "he_nuclei_fast"])
def test_brightfield_model_coverage_on_unseen_tissue_is_as_stated(name, project_root,
                                                                  shared_data):
    """The card's recall check on CRCHistoPhenotypes, which no StarDist model here saw."""
    spec = importlib.util.spec_from_file_location(
        "hccbio_models_train_lymphocytes", project_root / "models" / "train_lymphocytes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = project_root / "models" / name
    stated = json.loads((folder / "hccbio_model.json").read_text())["crc_centroid_coverage"]
    assert f"{stated['coverage']:.1%}" in (folder / "MODEL_CARD.md").read_text()
    measured = module.centroid_coverage(shared_data, str(folder))
    assert measured["annotated"] == stated["annotated"]
    assert measured["coverage"] == pytest.approx(stated["coverage"], abs=0.01)
