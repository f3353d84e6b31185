"""OpenVINO runs the StarDist network to TensorFlow's numbers: the same raw outputs within
rounding, the same nuclei on real H&E through the same code path, recorded in features.json and
run.json; the converted network is cached by the weights' SHA-256."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("openvino")

from integration.demo import write_pyramidal_tiff  # noqa: E402
from pathology.config import (  # noqa: E402
    PathologyConfig,
    SegmentationSection,
    TilingSection,
)
from pathology.evaluation.harness import match_centroids  # noqa: E402
from pathology.run.pipeline import ModelCache, SlideJob, process_slide  # noqa: E402
from pathology.segmentation import backends  # noqa: E402
from pathology.segmentation.nuclei import (  # noqa: E402
    forward_pass,
    load_model,
    network_input,
    segment_tile,
)

MATCHED = 0.995  # share of nuclei matched at IoU 0.5, both ways
COUNT_TOLERANCE = 0.005  # relative difference of the nucleus counts


def _config(backend: str, tile_size: int = 256) -> PathologyConfig:
    return PathologyConfig(tiling=TilingSection(tile_size=tile_size, halo=48),
                           segmentation=SegmentationSection(backend=backend))


@pytest.fixture(scope="module")
def caches() -> dict[str, ModelCache]:
    """One model cache per backend (each loads its model once for the module)."""
    return {backend: ModelCache(_config(backend)) for backend in ("tensorflow", "openvino")}


@pytest.fixture(scope="module")
def he_image() -> np.ndarray:
    from stardist.data import test_image_he_2d

    return test_image_he_2d()  # real H&E, 300 x 500


@pytest.fixture(scope="module")
def he_region(shared_data) -> np.ndarray:
    """A real H&E region (small_HE.svs, pathml's test data) at 0.5 um/px, 768 x 768."""
    from pathology.io.slide import Slide

    with Slide(shared_data / "slides" / "pathml-testdata" / "small_HE.svs") as slide:
        return slide.read_region_at(900, 1000, 768, 768, mpp=0.5)  # epidermis and dermis


def test_backends_are_what_was_asked(caches):
    assert caches["tensorflow"].get("he").backend == "tensorflow"
    openvino = caches["openvino"].get("he")
    assert openvino.backend == "openvino"
    assert openvino.describe()["backend"] == "openvino"
    assert openvino.describe()["backend_version"] == backends.openvino_version()
    assert caches["tensorflow"].get("he").sha256 == openvino.sha256


def test_openvino_network_outputs_equal_tensorflows(caches, he_image, he_region):
    tf_model, ov_model = caches["tensorflow"].get("he"), caches["openvino"].get("he")
    batch = np.stack([network_input(tf_model, image[:288, :480], (0.0, 255.0))
                      for image in (he_image, he_region)])  # two real tiles, one pass
    tf_prob, tf_dist = forward_pass(tf_model, batch)
    ov_prob, ov_dist = forward_pass(ov_model, batch)
    assert ov_prob.shape == tf_prob.shape == (2, 144, 240)
    assert ov_dist.shape == tf_dist.shape and ov_dist.dtype == np.float32
    assert all((tf_prob[k] > tf_model.prob_thresh).sum() > 100 for k in range(2))  # nuclei
    np.testing.assert_allclose(ov_prob, tf_prob, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ov_dist, tf_dist, rtol=0, atol=1e-3)


def _match(reference: np.ndarray, other: np.ndarray) -> tuple[int, int, int]:
    from stardist.matching import matching

    result = matching(reference, other, thresh=0.5)
    return int(result.n_true), int(result.n_pred), int(result.tp)


@pytest.mark.parametrize("image_name", ["he_image", "he_region"])
def test_openvino_finds_the_same_nuclei_as_tensorflow(caches, image_name, request):
    image = request.getfixturevalue(image_name)
    tf_nuclei = segment_tile(caches["tensorflow"].get("he"), image, (0.0, 255.0))
    ov_nuclei = segment_tile(caches["openvino"].get("he"), image, (0.0, 255.0))
    n_tf, n_ov, matched = _match(tf_nuclei.labels, ov_nuclei.labels)
    assert n_tf > 200
    assert matched >= MATCHED * n_tf and matched >= MATCHED * n_ov
    assert abs(n_ov - n_tf) <= COUNT_TOLERANCE * n_tf


def test_pipeline_gives_the_same_cells_and_records_the_backend(caches, he_region, tmp_path):
    """process_slide on the real region (9 tiles of 256 px): the same cells with either
    backend, and features.json says which ran the network."""
    path = tmp_path / "region.tiff"
    write_pyramidal_tiff(path, he_region, mpp=0.5)
    cells, records = {}, {}
    for backend, models in caches.items():
        out = tmp_path / backend
        process_slide(SlideJob("region", path, "he"), out, _config(backend), models)
        folder = out / "slides" / "region"
        cells[backend] = pq.read_table(folder / "cells.parquet").to_pandas()
        records[backend] = json.loads((folder / "features.json").read_text())
    for backend, record in records.items():
        assert record["model"]["backend"] == backend
        assert record["model"]["sha256"] == records["tensorflow"]["model"]["sha256"]
    assert records["openvino"]["config_sha256"] == records["tensorflow"]["config_sha256"]
    reference, other = cells["tensorflow"], cells["openvino"]
    assert len(reference) > 300
    assert abs(len(other) - len(reference)) <= COUNT_TOLERANCE * len(reference)
    matched, _ = match_centroids(reference[["x_um", "y_um"]].to_numpy(),
                                 other[["x_um", "y_um"]].to_numpy(), 1.0)  # within 1 um
    assert len(matched) >= MATCHED * max(len(reference), len(other))


@pytest.mark.parametrize("scheduler", ["sync", "local:1"])
def test_slides_run_records_the_backend_in_features_and_run_json(he_tiff, tmp_path, scheduler):
    from pathology.run.batch import run_slides

    (row,) = run_slides([SlideJob("he", he_tiff, "he")], tmp_path,
                        _config("openvino", 128), scheduler=scheduler)
    assert row.status == "done"
    features = json.loads((tmp_path / "slides" / "he" / "features.json").read_text())
    assert features["model"]["backend"] == "openvino"
    run = json.loads((tmp_path / "run.json").read_text())["pathology"]
    assert run["config"]["segmentation"]["backend"] == "openvino"
    # the segmentation network and the H&E nucleus-class network, both run by OpenVINO
    assert [m["backend"] for m in run["models"].values()] == ["openvino", "openvino"]
    assert [m.get("kind") for m in run["models"].values()] == [None, "patch_cnn"]
    assert run["versions"]["openvino"] == backends.openvino_version()


def test_converted_network_is_cached_by_the_weights_sha256(caches, he_image, tmp_path,
                                                           monkeypatch, caplog):
    model = caches["tensorflow"].get("he")
    # Beside the weights (the shipped model's folder is writable here).
    beside = backends.ir_paths(Path(model.model.logdir), model.sha256)[0]
    assert caches["openvino"].get("he").extra["openvino"].ir_path == beside
    assert beside.is_file() and beside.with_suffix(".bin").is_file()
    # Without a weights folder: the user cache ($HCCBIO_CACHE), converted once, then read.
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path))
    network, saved = backends.load_or_convert(model.model.keras_model, 3, weights_folder=None,
                                              sha256=model.sha256)
    assert saved == tmp_path / "openvino" / f"{model.sha256}.xml"
    assert saved.with_suffix(".bin").stat().st_size > 4 * 1_000_000  # float32 weights
    again, read = backends.load_or_convert(None, 3, weights_folder=None, sha256=model.sha256)
    assert read == saved  # no conversion (no Keras model was given)
    x = network_input(model, he_image[:160, :160], (0.0, 255.0))[None]
    first = backends.compile_network(network)(x)
    second = backends.compile_network(again, threads=1)(x)
    np.testing.assert_array_equal(first[0], second[0])
    # A damaged cache file is converted again, with a warning, and replaced.
    saved.write_text("not an IR")
    with caplog.at_level(logging.WARNING, logger="hccbio.pathology"):
        _, path = backends.load_or_convert(model.model.keras_model, 3, weights_folder=None,
                                           sha256=model.sha256)
    assert path == saved and "converting again" in caplog.text
    assert saved.read_text().startswith("<?xml")
    # Beside weights retrained in place, the earlier weights' IR is removed.
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "empty"))
    stale = tmp_path / "weights" / "openvino" / f"{'0' * 64}.xml"
    stale.parent.mkdir(parents=True)
    stale.write_text("earlier weights")
    stale.with_suffix(".bin").write_text("earlier weights")
    _, path = backends.load_or_convert(model.model.keras_model, 3,
                                       weights_folder=tmp_path / "weights", sha256=model.sha256)
    assert path == tmp_path / "weights" / "openvino" / f"{model.sha256}.xml"
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{model.sha256}.bin",
                                                              f"{model.sha256}.xml"]


def test_auto_falls_back_to_tensorflow_when_conversion_fails(monkeypatch, caplog):
    def conversion_fails(*args, **kwargs):
        raise RuntimeError("Cannot convert operation XYZ")

    monkeypatch.setattr(backends, "load_or_convert", conversion_fails)
    with caplog.at_level(logging.WARNING, logger="hccbio.pathology"):
        model = load_model("models/he_nuclei_fast", backend="auto")
    assert model.backend == "tensorflow" and "openvino" not in model.extra
    assert "OpenVINO could not convert" in caplog.text and "XYZ" in caplog.text
    assert model.describe()["backend"] == "tensorflow"


def test_openvino_requested_without_openvino_is_an_error(monkeypatch):
    from pathology.segmentation.nuclei import ModelError

    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    with pytest.raises(ModelError, match="pip install openvino"):
        load_model("models/he_nuclei_fast", backend="openvino")
    assert load_model("models/he_nuclei_fast", backend="auto").backend == "tensorflow"


def test_backend_is_not_part_of_the_config_hash():
    assert _config("openvino").digest() == _config("tensorflow").digest() == _config(
        "auto").digest()


def test_openvino_worker_never_imports_tensorflow(caches, he_tiff, tmp_path):
    """A worker whose network OpenVINO has converted before (the cache beside the weights)
    segments a slide without TensorFlow: that is what keeps its memory down (benchmarks)."""
    import subprocess
    import sys

    caches["openvino"].get("he")  # converts once and caches the IR, as the first worker does
    caches["openvino"].cell_classifier("he").network()  # the H&E nucleus-class network too
    code = (
        "import json, sys; from pathlib import Path\n"
        "from pathology.config import PathologyConfig, SegmentationSection\n"
        "from pathology.run.pipeline import ModelCache, SlideJob, process_slide\n"
        "config = PathologyConfig(segmentation=SegmentationSection(backend='openvino'))\n"
        "cache = ModelCache(config)\n"
        f"process_slide(SlideJob('s1', Path({str(he_tiff)!r}), 'he'), Path({str(tmp_path)!r}),"
        " config, cache, max_tiles=2)\n"
        "model = cache.get('he')\n"
        "print(json.dumps({'tensorflow': 'tensorflow' in sys.modules, 'backend': model.backend,"
        " 'stardist_loaded': model.stardist_loaded}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], check=True)
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts == {"tensorflow": False, "backend": "openvino", "stardist_loaded": False}
    assert len(pq.read_table(tmp_path / "slides" / "s1" / "cells.parquet")) > 50


@pytest.mark.parametrize("backend", ["openvino", "tensorflow"])
def test_broken_model_folder_is_an_error_on_every_backend(backend, tmp_path):
    """Unreadable config or weights fail at load with the file named, whichever backend runs
    the network (OpenVINO must not fall back to TensorFlow over a broken folder)."""
    from pathology.segmentation.nuclei import ModelError

    shipped = Path(__file__).resolve().parents[2] / "models" / "he_nuclei_fast"
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    (folder / "weights_best.h5").write_bytes(b"not weights")
    with pytest.raises(ModelError, match=r"config\.json: not readable JSON"):
        load_model(str(folder), backend=backend)
    (folder / "config.json").write_text((shipped / "config.json").read_text())
    with pytest.raises(ModelError, match="StarDist could not load this model"):
        load_model(str(folder), backend=backend)


INT8_MATCHED = 0.95  # int8 against float32 nuclei at IoU 0.5 (accuracy: benchmarks.accuracy)


@pytest.fixture(scope="module")
def int8_model():
    return load_model("models/he_nuclei", precision="int8")


@pytest.mark.parametrize("image_name", ["he_image", "he_region"])
def test_int8_network_finds_nearly_the_same_nuclei(caches, int8_model, image_name, request):
    image = request.getfixturevalue(image_name)
    reference = segment_tile(caches["openvino"].get("he"), image, (0.0, 255.0))
    quantised = segment_tile(int8_model, image, (0.0, 255.0))
    n_float, n_int8, matched = _match(reference.labels, quantised.labels)
    assert n_float > 200
    assert matched >= INT8_MATCHED * max(n_float, n_int8)
    described = int8_model.describe()
    assert described["precision"] == "int8" and described["backend"] == "openvino"
    assert described["int8"]["quantized_from_sha256"] == int8_model.sha256


def test_int8_through_slides_run_is_recorded_and_changes_the_config_hash(he_tiff, tmp_path):
    from typer.testing import CliRunner

    from integration.cli import app
    from pathology.config import load_config

    manifest = tmp_path / "samples.csv"
    manifest.write_text("patient_id,timepoint,sample_id,modality,stain,path,mpp\n"
                        f"P1,baseline,he,he,HE,{he_tiff},0.5\n")
    config_path = tmp_path / "int8.yaml"
    config_path.write_text("segmentation:\n  precision: int8\n")
    result = CliRunner().invoke(app, ["slides", "run", str(manifest), "--out",
                                      str(tmp_path / "run"), "--config", str(config_path),
                                      "--scheduler", "sync", "--quiet"])
    assert result.exit_code == 0, result.output
    features = json.loads((tmp_path / "run" / "slides" / "he" / "features.json").read_text())
    assert features["model"]["precision"] == "int8"
    assert features["model"]["int8"]["calibration_crops"] > 50
    assert len(pq.read_table(tmp_path / "run" / "slides" / "he" / "cells.parquet")) > 200
    config = load_config(config_path)
    assert features["config_sha256"] == config.digest() != PathologyConfig().digest()
    # float32, the default, leaves the hash of earlier runs as it was
    explicit = PathologyConfig(segmentation=SegmentationSection(precision="float32"))
    assert explicit.digest() == PathologyConfig().digest()


def test_int8_refuses_tensorflow_and_stale_or_missing_networks(tmp_path):
    import shutil

    from pydantic import ValidationError

    from pathology.segmentation.nuclei import ModelError

    with pytest.raises(ValidationError, match="int8 runs on OpenVINO"):
        SegmentationSection(precision="int8", backend="tensorflow")
    shipped = Path(__file__).resolve().parents[2] / "models" / "he_nuclei"
    copy = tmp_path / "he_copy"
    copy.mkdir()
    for name in ("config.json", "thresholds.json", "hccbio_model.json", "weights_best.h5"):
        shutil.copy(shipped / name, copy / name)
    with pytest.raises(ModelError, match="no int8 network.*models/quantize.py"):
        load_model(str(copy), precision="int8")
    shutil.copytree(shipped / "int8", copy / "int8")
    assert load_model(str(copy), precision="int8").precision == "int8"
    record = copy / "int8" / "quantization.json"
    record.write_text(record.read_text().replace(load_model(str(copy)).sha256, "0" * 64))
    with pytest.raises(ModelError, match="quantised from other weights"):
        load_model(str(copy), precision="int8")
