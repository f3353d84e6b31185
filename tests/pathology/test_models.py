"""The shipped StarDist models reach, on their validation images, the accuracy their cards state.

The numbers are recomputed here from the shipped weights and the real annotated images.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pathology.segmentation.nuclei import load_model

MODELS = {"he_nuclei": "he_split", "he_nuclei_fast": "he_split", "fluo_nuclei": "fluo_split"}
BRIGHTFIELD = ["he_nuclei", "he_nuclei_fast", "bf_nuclei"]


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
    # Models trained since 2026-12-01 record a tuning split of their own ("tune_images",
    # he_tuned_split); earlier ones their validation images.
    tuned = "tune_images" in meta
    stated = meta["metrics_tune" if tuned else "metrics_val"]
    assert f"{stated['f1_iou50']:.3f}" in card  # the card states the recorded figure

    monkeypatch.setenv("HCCBIO_SHARED_DATA", str(shared_data))
    train = _training_module(project_root)
    _, val = getattr(train, "he_tuned_split" if tuned else MODELS[name])(shared_data)
    held = meta["tune_images" if tuned else "val_images"]
    assert [item.name for item in val] == held
    assert not set(held) & set(meta["train_images"])
    if tuned:  # the reporting images were neither trained nor tuned on
        assert not set(meta["report_images"]) & (set(held) | set(meta["train_images"]))
    model = load_model(str(folder))
    images = [train.normalise(item.image, meta["kind"]) for item in val]
    measured = train.evaluate(model.model, images, [item.labels for item in val])
    assert measured["f1_iou50"] == pytest.approx(stated["f1_iou50"], abs=0.01)
    assert measured["ap_iou50"] == pytest.approx(stated["ap_iou50"], abs=0.01)
    # Clearly better than the classical baseline on the same images.
    assert measured["f1_iou50"] > meta["watershed_tune" if tuned else "watershed_val"][
        "f1_iou50"] + 0.05
    if meta["kind"] == "he" and not tuned:
        assert measured["f1_iou50"] >= 0.75  # the issue's target for brightfield
    # A tuned model's target is checked on its reporting images, through the pipeline
    # (test_default_brightfield_model_reaches_reported_accuracy); its tuning tiles are harder.


@pytest.fixture(scope="module")
def card_module(project_root):
    """``models/card.py``, the card writer."""
    spec = importlib.util.spec_from_file_location("hccbio_models_card",
                                                  project_root / "models" / "card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _accuracy_report(project_root) -> dict:
    return json.loads((project_root / "benchmarks" / "results" / "accuracy.json").read_text())


@pytest.mark.parametrize("name", BRIGHTFIELD)
def test_card_states_the_accuracy_report(name, project_root, card_module):
    """A card cites `python -m benchmarks.accuracy`'s figures for its model, never others."""
    card = (project_root / "models" / name / "MODEL_CARD.md").read_text()
    report = _accuracy_report(project_root)["models"][name]
    meta = json.loads((project_root / "models" / name / "hccbio_model.json").read_text())
    section = "\n".join(card_module.accuracy_lines(
        name, checkpoint_on_validation=meta["kind"] == "he" and "tune_images" not in meta))
    assert section in card
    assert f"{report['monuseg_val']['iou50']['f1']:.3f}" in section
    assert f"{report['deepliif_test']['iou50']['f1']:.3f}" in section


@pytest.mark.parametrize("name", [*BRIGHTFIELD, "fluo_nuclei"])
def test_card_is_what_card_py_writes_from_the_model_folder(name, project_root, card_module):
    """Every shipped card is generated (`python models/card.py`), not edited by hand, so its
    Reproduce commands and stage notes follow the model's recorded training stages."""
    folder = project_root / "models" / name
    card = (folder / "MODEL_CARD.md").read_text()
    assert card == card_module.render(folder)
    meta = json.loads((folder / "hccbio_model.json").read_text())
    for stage in meta.get("stages", []):
        assert f"python models/train.py {meta['kind']} --steps {stage['steps']}" in card
        assert stage.get("note", "") in card


def test_default_brightfield_model_reaches_reported_accuracy(project_root, shared_data,
                                                              tmp_path):
    """MoNuSeg's held-out tiles through `hccbio slides run` with the default H&E model give
    the accuracy report's figures (and the issue's target)."""
    from pathology.config import SegmentationSection
    from pathology.evaluation.annotations import load_monuseg
    from pathology.evaluation.harness import annotated_tile_config, run_pipeline, score_instances

    model = SegmentationSection().brightfield_model
    report = _accuracy_report(project_root)["models"][Path(model).name]["monuseg_val"]
    items = load_monuseg(shared_data / "nuclei" / "monuseg")[-3:]
    assert [i.name for i in items] == report["images"]
    results = run_pipeline(items, tmp_path, modality="he", config=annotated_tile_config(model))
    matched = true = predicted = 0
    for item, result in zip(items, results, strict=True):
        scores = score_instances(result, item.labels)["iou50"]
        matched, true = matched + scores["n_matched"], true + scores["n_true"]
        predicted += scores["n_pred"]
    f1 = 2 * matched / (true + predicted)
    assert f1 == pytest.approx(report["iou50"]["f1"], abs=0.005)
    # 0.811 since the evening of 2026-12-01: he_nuclei retrained with its checkpoint and its
    # thresholds chosen on MoNuSeg training-set tiles. The earlier 0.835 and 0.825 came from
    # weights whose checkpoint (and, for 0.835, thresholds) were chosen on these very tiles.
    # The issue's target is 0.85.
    assert f1 >= 0.80


def test_benchmarks_readme_shows_the_report_and_the_targets_of_the_defaults(project_root):
    """benchmarks/README.md carries the table of accuracy.json as generated (not edited by
    hand), ending with issue 12's targets measured on the models `hccbio slides run` uses by
    default for H&E and IHC rows."""
    from benchmarks.accuracy import table, target_lines
    from pathology.config import SegmentationSection

    report = _accuracy_report(project_root)
    assert table(report) in (project_root / "benchmarks" / "README.md").read_text()
    targets = "\n".join(target_lines(report))
    defaults = SegmentationSection()
    he_f1 = report["models"][Path(defaults.brightfield_model).name]["monuseg_val"]["iou50"]["f1"]
    assert (f"| {Path(defaults.brightfield_model).name} | MoNuSeg validation tiles (3) | "
            f"{he_f1:.3f} | {'met' if he_f1 >= 0.85 else '**not met**'} |") in targets
    assert f"| {Path(defaults.ihc_model).name} | DeepLIIF test tiles (2) |" in targets


def test_accuracy_report_refuses_a_folder_that_is_no_model(tmp_path, capsys):
    """A mistyped model folder stops the report at once, naming it, and writes nothing."""
    from benchmarks.accuracy import main

    out = tmp_path / "accuracy.json"
    with pytest.raises(SystemExit) as stopped:
        main(["--models", str(tmp_path / "he_nucleii"), "--no-readme", "--out", str(out)])
    assert stopped.value.code == 2
    assert f"{tmp_path / 'he_nucleii'}: not a model folder" in capsys.readouterr().err
    assert not out.exists()


def test_accuracy_report_keeps_what_a_run_does_not_measure(tmp_path, shared_data,
                                                           project_root):
    """Measuring one set of one model rewrites the report with everything else it held (other
    models, the fluorescence model, the per-organ figures): an int8 run once dropped the
    per-organ figures of the run before it."""
    from benchmarks.accuracy import main

    out = tmp_path / "accuracy.json"
    earlier = {"models": {"other": {"monuseg_val": {"f1": 0.5}}},
               "fluorescence": {"fluo_nuclei": {"measured": "earlier", "dsb2018_fluo": {
                   "iou50": {"f1": 0.8, "precision": 0.8, "recall": 0.8},
                   "centroid": {"f1": 0.9}}}},
               "organs": _accuracy_report(project_root)["organs"]}
    out.write_text(json.dumps(earlier))
    assert main(["--models", "models/he_nuclei", "--sets", "speed", "--no-readme",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["models"]["other"] == earlier["models"]["other"]
    assert report["fluorescence"] == earlier["fluorescence"]
    assert report["organs"] == earlier["organs"]
    assert report["models"]["he_nuclei"]["speed"]["s_per_mpx"] > 0


def test_accuracy_report_has_issue_27_figures_per_organ_and_the_cards_follow_it(project_root):
    """`python -m benchmarks.accuracy --organs` reports the default models per organ (breast,
    colon) and per counterstain strength (down to 0.2x hematoxylin), against the targets, and
    the nucleus-class network's card is the one written from that report."""
    from benchmarks import cell_classes
    from benchmarks.accuracy import organ_lines
    from pathology.config import PhenotypesSection, SegmentationSection

    report = _accuracy_report(project_root)
    organs = report["organs"]
    classes, counterstain = organs["cell_classes"], organs["ihc_counterstain"]
    assert classes["model"] == PhenotypesSection().lymphocyte_model
    assert counterstain["model"] == SegmentationSection().ihc_model
    assert set(classes["approaches"]["patch_cnn"]) == {"breast", "colon"}
    assert {r["hematoxylin_factor"] for r in counterstain["rows"]} >= {1.0, 0.5, 0.2}
    lines = "\n".join(organ_lines(report))
    for organ in ("breast", "colon"):
        assert f"| lymphocyte F1 >= {cell_classes.TARGET_F1} | {organ} (" in lines
    assert "| 0.2 |" in lines
    folder = project_root / classes["model"]
    assert (folder / "MODEL_CARD.md").read_text() == cell_classes.model_card(classes, folder)


def test_coarse_rendering_keeps_nuclei_at_imc_detail(project_root, shared_data, monkeypatch):
    """models/train.py:coarsen (fluo --coarse) on a real DSB2018 fluorescence image whose
    nuclei are 20 px or more: same size, seeded, the image's content kept (correlated with
    the original, nuclei brighter than the background) but not the original (shrunk to
    nuclei of 5-10 px, with count noise)."""
    monkeypatch.setenv("HCCBIO_SHARED_DATA", str(shared_data))
    train = _training_module(project_root)
    item = next(i for i in train.fluo_split(shared_data)[1]
                if train.median_equivalent_diameter(i.labels) >= 20)
    x = np.clip(train.normalise(item.image, "fluo"), 0, None)
    diameter = train.median_equivalent_diameter(item.labels)
    coarse = train.coarsen(x, np.random.default_rng(0), nucleus_px=diameter)
    assert coarse.shape == x.shape[:2] and coarse.dtype == np.float32
    assert np.array_equal(coarse, train.coarsen(x, np.random.default_rng(0),
                                                nucleus_px=diameter))
    inside, outside = item.labels > 0, item.labels == 0
    assert coarse[inside].mean() > 2 * coarse[outside].mean()
    assert np.corrcoef(coarse.ravel(), x.ravel())[0, 1] > 0.7
    assert np.mean(np.abs(coarse - x)) > 0.02
