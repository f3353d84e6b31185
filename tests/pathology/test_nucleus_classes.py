"""H&E nucleus classes from nucleus-centred patches (pathology.cells.nucleus_classes): patches, the
model folder, and the per-tile classification inside `hccbio slides run`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathology.cells.nucleus_classes import (
    CELL_CLASSES,
    IR_TAG,
    MODEL_FILE,
    NETWORK_FILE,
    PATCH_PX,
    NucleusClassModelError,
    extract_patches,
    is_patch_model,
    load_patch_classifier,
    openvino_graph,
    probability_column,
)


def test_patches_are_centred_and_reflected_at_the_border():
    """Synthetic geometry (the point is the indexing): each pixel holds its own coordinates."""
    rows, cols = np.mgrid[0:40, 0:50]
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint16)
    patches = extract_patches(image, np.array([20, 0, 39.4]), np.array([25, 0, 49.6]), size=8)
    assert patches.shape == (3, 8, 8, 3)
    # centre pixel (size // 2) is the requested one; rows run r - 4 .. r + 3
    assert tuple(patches[0, 4, 4, :2]) == (20, 25)
    assert patches[0, :, 4, 0].tolist() == list(range(16, 24))
    # at the corner, the image is mirrored (reflect: no edge pixel repeated)
    assert patches[1, :, 4, 0].tolist() == [4, 3, 2, 1, 0, 1, 2, 3]
    # centres round to the nearest pixel and stay inside the image
    assert tuple(patches[2, 4, 4, :2]) == (39, 49)


def _write_network(folder, *, threshold: float = 0.5, kind: str = "patch_cnn",
                   classes=CELL_CLASSES) -> None:
    """A tiny fixed network (synthetic: the point is the plumbing, not accuracy): class
    scores are linear in the patch's mean red, green and blue."""
    from pathology.segmentation.nuclei import import_tensorflow

    keras = import_tensorflow().keras
    inputs = keras.Input((64, 64, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(len(classes), activation="softmax")
    outputs = dense(pooled)
    network = keras.Model(inputs, outputs)
    weights = np.array([[-8.0, 4.0, 2.0, 0.0], [-6.0, 2.0, 4.0, 0.0], [2.0, 1.0, 0.0, 0.0]],
                       dtype=np.float32)[:, :len(classes)]
    dense.set_weights([weights, np.array([6.0, -2.0, -2.0, 0.0][:len(classes)], np.float32)])
    folder.mkdir(parents=True, exist_ok=True)
    network.save(folder / NETWORK_FILE)
    (folder / MODEL_FILE).write_text(json.dumps(
        {"kind": kind, "classes": list(classes), "patch_px": 64, "mpp": 0.5,
         "positive_class": "lymphocyte", "threshold": threshold, "meta": {}}))


def test_model_folder_errors_name_the_folder_and_the_problem(tmp_path):
    with pytest.raises(NucleusClassModelError, match="no patch classifier"):
        load_patch_classifier(tmp_path / "missing")
    _write_network(tmp_path / "other", kind="logistic")
    assert not is_patch_model(tmp_path / "other")
    with pytest.raises(NucleusClassModelError, match="kind 'logistic'"):
        load_patch_classifier(tmp_path / "other")
    _write_network(tmp_path / "bad", classes=("lymphocyte", "plasma"))
    with pytest.raises(NucleusClassModelError, match="plasma"):
        load_patch_classifier(tmp_path / "bad")
    _write_network(tmp_path / "good")
    classifier = load_patch_classifier(tmp_path / "good")
    assert classifier.classes == CELL_CLASSES and len(classifier.sha256) == 64


def test_slides_run_classifies_each_nucleus_from_its_patch_across_tile_borders(tmp_path):
    """stardist's real H&E image through `hccbio slides run` in 128 px tiles with the patch
    network configured: every nucleus gets its class probabilities, the same as a patch cut
    from the whole image (the halo gives border nuclei their context), and the lymphocyte
    phenotype is the network's call at its threshold."""
    from stardist.data import test_image_he_2d

    from pathology.evaluation.annotations import AnnotatedPoints
    from pathology.evaluation.harness import annotated_tile_config, run_pipeline

    network = tmp_path / "net"
    _write_network(network)
    image = test_image_he_2d()
    # threshold: the median probability over a grid of patches, so that the call splits
    grid_r, grid_c = np.mgrid[16:image.shape[0]:24, 16:image.shape[1]:24]
    median = float(np.median(load_patch_classifier(network).classify(
        image, grid_r.ravel(), grid_c.ravel())["p_lymphocyte"]))
    meta = json.loads((network / MODEL_FILE).read_text())
    (network / MODEL_FILE).write_text(json.dumps({**meta, "threshold": median}))
    config = annotated_tile_config("models/he_nuclei")
    config.update({"tiling": {"tile_size": 128, "halo": 48},
                   "phenotypes": {"lymphocyte_model": str(network)}})
    (result,) = run_pipeline([AnnotatedPoints("he", image, {}, 0.5, "stardist")],
                             tmp_path / "run", modality="he", config=config)
    cells = result.cells
    columns = [probability_column(c) for c in CELL_CLASSES]
    assert len(cells) > 100 and set(columns) <= set(cells.columns)
    probs = cells[columns].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[:, 0].std() > 0.01  # the call varies with the nucleus
    called = cells["lymphocyte_pos"].to_numpy().astype(bool)
    assert np.array_equal(called, cells["p_lymphocyte"].to_numpy() >= median)
    assert 0 < called.sum() < len(cells)
    rows = cells["y_um"].to_numpy() / 0.5 - 0.5
    cols = cells["x_um"].to_numpy() / 0.5 - 0.5
    inner = ((rows >= 32) & (cols >= 32) & (rows < image.shape[0] - 32)
             & (cols < image.shape[1] - 32))
    whole = load_patch_classifier(network).classify(image, rows[inner], cols[inner])
    assert np.allclose(whole["p_lymphocyte"], cells["p_lymphocyte"].to_numpy()[inner],
                       atol=1e-5)


@pytest.fixture(scope="module")
def report_calls(shared_data, tmp_path_factory) -> dict:
    """The reporting images of both organs (never trained or tuned on) through
    `hccbio slides run` with the shipped defaults (segmentation and the nucleus-class network),
    their nuclei matched to the annotated points: organ -> table with ``truth``."""
    from benchmarks.cell_classes import matched_cells
    from models.train_cell_classes import split_images
    from pathology.config import SegmentationSection
    from pathology.evaluation.harness import annotated_tile_config, run_pipeline

    images = split_images(shared_data)
    tables = {}
    for organ in ("breast", "colon"):
        items = images[organ]["report"]
        results = run_pipeline(items, tmp_path_factory.mktemp(organ), modality="he",
                               config=annotated_tile_config(
                                   SegmentationSection().brightfield_model))
        tables[organ] = matched_cells(items, results)
    return tables


@pytest.mark.parametrize("organ", ["breast", "colon"])
def test_shipped_network_calls_lymphocytes_on_unseen_images_of_both_organs(
        report_calls, project_root, organ):
    """The default H&E lymphocyte call on held-out images, as its card and the benchmark
    report state it, and far more specific than the colon-only model it replaced (which
    called 17 % of unseen breast tumour nuclei lymphocytes)."""
    from benchmarks.cell_classes import call_scores
    from pathology.config import PhenotypesSection

    folder = project_root / PhenotypesSection().lymphocyte_model
    assert is_patch_model(folder)
    table = report_calls[organ]
    scores = call_scores(table["truth"].to_numpy(),
                         table["lymphocyte_pos"].to_numpy().astype(bool))
    card = (folder / "MODEL_CARD.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith(f"| patch_cnn | {organ}"))
    assert f"| {scores['f1']:.3f} | {scores['precision']:.3f} | {scores['recall']:.3f} |" in row
    assert scores["f1"] >= 0.75  # the target on both organs
    assert scores["tumour_called_lymphocyte"] <= 0.05


def test_cells_measured_without_the_network_get_a_clear_error(project_root):
    """Cells from before the network was configured (no p_ columns): the lymphocyte call says
    so and how to fix it, instead of calling nothing."""
    import pandas as pd

    from pathology.cells.panels import PanelError
    from pathology.cells.phenotypes import lymphocyte_calls

    cells = pd.DataFrame({"x_um": [1.0, 2.0], "y_um": [1.0, 2.0], "area_um2": [30.0, 40.0]})
    with pytest.raises(PanelError, match="no 'p_lymphocyte' column.*--force"):
        lymphocyte_calls(cells, "models/he_cell_classes")
    called, threshold = lymphocyte_calls(cells.assign(p_lymphocyte=[0.9, 0.1]),
                                         "models/he_cell_classes")
    assert called.tolist() == [True, False] and 0 < threshold < 1


def test_openvino_and_tensorflow_give_the_same_class_probabilities(project_root, tmp_path,
                                                                  monkeypatch):
    """The shipped network on real H&E patches, run by either backend (the pipeline follows
    the segmentation network's): the same probabilities to float precision, also when
    OpenVINO has just converted it in this process and the Keras model it came from is gone
    (the converted weights once pointed into that model's freed memory)."""
    import gc
    import shutil

    from stardist.data import test_image_he_2d

    from pathology.segmentation import backends

    image = test_image_he_2d()
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, image.shape[0], 300), rng.integers(0, image.shape[1], 300)
    folder = tmp_path / "he_cell_classes"  # no converted network beside it, nor in the cache
    shutil.copytree(project_root / "models" / "he_cell_classes", folder,
                    ignore=shutil.ignore_patterns(backends.IR_FOLDER))
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))
    classifier = load_patch_classifier(folder)
    keras = classifier.on_backend("tensorflow").classify(image, rows, cols)
    converted = classifier.on_backend("openvino")
    converted.network()
    gc.collect()
    scratch = [np.full(1 << 20, 7.0) for _ in range(64)]  # reuse freed memory
    openvino = converted.classify(image, rows, cols)
    del scratch
    assert (folder / backends.IR_FOLDER / f"{classifier.sha256}.{IR_TAG}.xml").is_file()
    for column, values in keras.items():
        assert np.allclose(values, openvino[column], atol=1e-4), column
    assert classifier.on_backend("openvino").describe()["backend"] == "openvino"
    with pytest.raises(ValueError, match="unknown backend"):
        classifier.on_backend("onnx")


def test_openvino_graph_is_the_same_on_any_thread_count_and_refuses_other_layers(project_root):
    """The built graph normalises groups with MVN (not convert_model's transposes and
    reductions, the slower spelling), gives the same probabilities bit for bit on one thread
    and on every core (a one-thread Dask worker and a sync run must agree), matches Keras,
    and refuses a layer it does not know, naming it, so that the caller converts such a
    network with ov.convert_model instead (synthetic network; random patches)."""
    import openvino as ov

    from pathology.segmentation.nuclei import import_tensorflow

    keras = import_tensorflow().keras
    network = keras.models.load_model(project_root / "models" / "he_cell_classes" / "model.keras",
                                      compile=False)
    graph = openvino_graph(network, PATCH_PX)
    kinds = [op.get_type_name() for op in graph.get_ops()]
    assert kinds.count("MVN") == 7 and kinds.count("Transpose") == 1  # to NCHW, once
    patches = np.random.default_rng(0).random((64, PATCH_PX, PATCH_PX, 3), dtype=np.float32)
    outputs = []
    for threads in (1, 2, None):
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(graph, "CPU", config)
        outputs.append(np.array(compiled.create_infer_request().infer({0: patches})[
            compiled.output(0)]))
    assert np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[0], outputs[2])
    assert np.allclose(outputs[0], network(patches, training=False).numpy(), atol=1e-5)
    inputs = keras.Input((PATCH_PX, PATCH_PX, 3))
    other = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    with pytest.raises(ValueError, match="bn: BatchNormalization"):
        openvino_graph(other, PATCH_PX)
