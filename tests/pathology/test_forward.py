"""The direct network path equals StarDist's own predict_instances; batching and read-ahead
change nothing; shape measurements equal regionprops on StarDist's nuclei.

The bit-for-bit comparisons with StarDist run the network through TensorFlow
(``segmentation.backend: tensorflow``), as StarDist does; OpenVINO's equivalence is in
test_backends.py."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from skimage.measure import regionprops_table

from pathology.cells.measure import label_measurements
from pathology.config import BatchSection, PathologyConfig, SegmentationSection, TilingSection
from pathology.run.pipeline import ModelCache, SlideJob, process_slide
from pathology.segmentation.nuclei import (
    instances_from_prediction,
    network_input,
    predict_tiles,
    segment_tile,
)


@pytest.fixture(scope="module")
def he_image():
    from stardist.data import test_image_he_2d

    return test_image_he_2d()  # real H&E, 300 x 500, not a multiple of the network divisor


@pytest.fixture(scope="module")
def tf_models():
    """Models whose network TensorFlow runs, as in StarDist itself."""
    return ModelCache(PathologyConfig(segmentation=SegmentationSection(backend="tensorflow")))


@pytest.fixture(scope="module")
def he_model(tf_models):
    return tf_models.get("brightfield")


def test_segment_tile_equals_stardist_predict_instances(he_model, he_image):
    image = he_image[:300, :471]  # odd size: padding at the end, as StarDist pads
    ours = segment_tile(he_model, image, (0.0, 255.0))
    labels, details = he_model.model.predict_instances(
        image.astype(np.float32) / 255.0, prob_thresh=he_model.prob_thresh,
        nms_thresh=he_model.nms_thresh, show_tile_progress=False, verbose=False)
    assert len(ours.prob) > 50
    np.testing.assert_array_equal(ours.labels, labels)
    np.testing.assert_array_equal(ours.points, details["points"])
    np.testing.assert_array_equal(ours.prob, details["prob"].astype(np.float32))
    np.testing.assert_array_equal(ours.coord, details["coord"].astype(np.float32))


def test_fluorescence_segment_tile_equals_stardist_predict_instances(tf_models):
    from stardist.data import test_image_nuclei_2d

    model = tf_models.get("fluorescence")
    image = test_image_nuclei_2d()[:250, :333, None]  # real nuclei, one channel, odd size
    low, high = np.percentile(image, [1, 99.8])
    ours = segment_tile(model, image, (float(low), float(high)))
    x = (image[..., 0].astype(np.float32) - low) / (high - low)
    labels, details = model.model.predict_instances(
        x, prob_thresh=model.prob_thresh, nms_thresh=model.nms_thresh,
        show_tile_progress=False, verbose=False)
    assert len(ours.prob) > 20
    np.testing.assert_array_equal(ours.labels, labels)
    np.testing.assert_array_equal(ours.coord, details["coord"].astype(np.float32))


def test_network_input_pads_to_the_divisor_by_reflection(he_model, he_image):
    x = network_input(he_model, he_image[:100, :130], (0.0, 255.0))
    assert x.shape == (112, 144, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[100], x[98])  # reflect, not zeros
    with pytest.raises(ValueError, match="expects 3 channel"):
        network_input(he_model, he_image[..., :1], (0.0, 255.0))


def test_batched_forward_pass_equals_one_tile_at_a_time(he_model, he_image):
    tiles = [he_image[:160, :160], he_image[:160, 160:320], he_image[140:, 300:460],
             he_image[:200, 300:]]  # three of one size, one of another
    assert len({t.shape for t in tiles}) == 2
    alone = [predict_tiles(he_model, [t], (0.0, 255.0))[0] for t in tiles]
    batched = predict_tiles(he_model, tiles, (0.0, 255.0), batch_size=3)
    for a, b in zip(alone, batched, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)
        np.testing.assert_allclose(a.dist, b.dist, atol=1e-4)
        na, nb = instances_from_prediction(he_model, a), instances_from_prediction(he_model, b)
        assert len(na.prob) == len(nb.prob)


def test_read_ahead_and_batching_give_the_same_cells(he_tiff, models, tmp_path):
    tables = {}
    for read_ahead, per_forward in ((False, 1), (True, 1), (True, 4)):
        config = PathologyConfig(tiling=TilingSection(tile_size=128, halo=48),
                                 batch=BatchSection(read_ahead=read_ahead,
                                                    tiles_per_forward=per_forward))
        out = tmp_path / f"{read_ahead}-{per_forward}"
        process_slide(SlideJob("he", he_tiff, "he"), out, config, models)
        tables[(read_ahead, per_forward)] = pq.read_table(
            out / "slides" / "he" / "cells.parquet").to_pandas()
    reference = tables[(False, 1)]
    assert len(reference) > 100
    assert tables[(True, 1)].equals(reference)  # read-ahead: bit for bit
    batched = tables[(True, 4)]  # batches may round differently in the last float bit
    assert abs(len(batched) - len(reference)) <= 1
    np.testing.assert_allclose(np.sort(batched.area_um2)[:50], np.sort(reference.area_um2)[:50])


def test_shape_measurements_equal_regionprops_on_stardist_nuclei(he_model, he_image):
    labels = segment_tile(he_model, he_image, (0.0, 255.0)).labels  # touching, clipped nuclei
    ours = label_measurements(labels, np.ones(labels.shape + (1,), np.float32))
    reference = regionprops_table(labels, properties=("label", "area", "perimeter",
                                                      "solidity", "eccentricity"))
    assert len(reference["label"]) > 100
    for key, values in reference.items():
        np.testing.assert_allclose(ours[key], values, rtol=1e-9, atol=1e-9, err_msg=key)




def test_batch_that_runs_out_of_memory_is_halved(he_model, he_image, monkeypatch):
    import tensorflow as tf

    import pathology.segmentation.nuclei as nuclei

    real = nuclei.forward_pass
    sizes = []

    def forward_that_fits_one(model, batch):  # a GPU with room for one tile at a time
        sizes.append(len(batch))
        if len(batch) > 1:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real(model, batch)

    monkeypatch.setattr(nuclei, "forward_pass", forward_that_fits_one)
    tiles = [he_image[:128, :128], he_image[:128, 128:256], he_image[:128, 256:384]]
    batched = predict_tiles(he_model, tiles, (0.0, 255.0), batch_size=3)
    assert sizes[0] == 3 and sizes.count(1) == 3
    monkeypatch.setattr(nuclei, "forward_pass", real)
    for tile, prediction in zip(tiles, batched, strict=True):
        np.testing.assert_array_equal(prediction.prob,
                                      predict_tiles(he_model, [tile], (0.0, 255.0))[0].prob)

    def forward_that_fits_nothing(model, batch):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(nuclei, "forward_pass", forward_that_fits_nothing)
    with pytest.raises(tf.errors.ResourceExhaustedError):
        predict_tiles(he_model, tiles[:2], (0.0, 255.0), batch_size=2)


def test_tiles_per_forward_defaults(monkeypatch):
    import pathology.run.pipeline as pipeline

    config = PathologyConfig()
    monkeypatch.setattr(pipeline, "gpu_available", lambda: False)
    assert pipeline.tiles_per_forward(config) == 1
    monkeypatch.setattr(pipeline, "gpu_available", lambda: True)
    assert pipeline.tiles_per_forward(config) == 8  # 1024 px tiles, 64 px halo
    large = PathologyConfig(tiling=TilingSection(tile_size=2048, halo=64))
    assert pipeline.tiles_per_forward(large) == 2
    fixed = PathologyConfig(batch=BatchSection(tiles_per_forward=3))
    assert pipeline.tiles_per_forward(fixed) == 3
    openvino = PathologyConfig(segmentation=SegmentationSection(backend="openvino"))
    assert pipeline.tiles_per_forward(openvino) == 1  # OpenVINO runs on the CPU
