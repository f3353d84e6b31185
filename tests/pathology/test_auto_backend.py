"""``segmentation.backend: auto`` on a CPU (pathology.run.auto_backend): measured once
per CPU model and networks with the shipped models, cached, read back without measuring, and
followed by ``slides run`` (features.json and run.json say what ran)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openvino")

from pathology.cells.nucleus_classes import load_patch_classifier  # noqa: E402
from pathology.config import PathologyConfig, TilingSection  # noqa: E402
from pathology.run import auto_backend
from pathology.run.batch import run_slides  # noqa: E402
from pathology.run.pipeline import ModelCache, SlideJob  # noqa: E402
from pathology.segmentation import backends  # noqa: E402
from pathology.segmentation.nuclei import describe_model  # noqa: E402


def _config() -> PathologyConfig:
    return PathologyConfig(tiling=TilingSection(tile_size=256, halo=48))


def test_auto_measures_both_backends_once_and_caches_the_choice(he_tiff, tmp_path,
                                                                 monkeypatch):
    """The first ``slides run`` on a local cluster on this CPU times both backends on the
    segmentation network and the nucleus-class network before its workers start, keeps
    OpenVINO unless TensorFlow is clearly faster, and caches the choice, which the workers
    follow; a later process reads it without measuring."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(backends.CACHE_ENV, str(cache))
    monkeypatch.delenv(auto_backend.CHOICE_ENV, raising=False)  # tests/conftest.py pins it
    assert ModelCache(_config()).backend_for("he", measure_missing=False) is None
    (row,) = run_slides([SlideJob("he", he_tiff, "he")], tmp_path / "out", _config(),
                        scheduler="local:1")
    assert row.status == "done"
    (record,) = json.loads((cache / auto_backend.CHOICE_FILE).read_text()).values()
    seconds = record["seconds_per_tile"]
    for backend in ("openvino", "tensorflow"):
        assert seconds[backend]["segmentation"] > 0 and seconds[backend]["classes"] > 0
        assert seconds[backend]["tile"] == pytest.approx(
            seconds[backend]["segmentation"] + seconds[backend]["classes"], abs=2e-4)
    assert record["box_px"] == 256 + 2 * 48
    expected = auto_backend.choose({b: s["tile"] for b, s in seconds.items()})
    assert record["backend"] == expected
    features = json.loads((tmp_path / "out" / "slides" / "he" / "features.json").read_text())
    assert features["model"]["backend"] == expected
    assert auto_backend.cpu_description()["model"] in record["cpu"]

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(auto_backend, "measure", no_measuring)
    assert ModelCache(_config()).backend_for("he") == ("tensorflow" if expected == "tensorflow"
                                                       else "auto")


def test_slides_run_follows_the_cached_choice(he_tiff, tmp_path, monkeypatch):
    """A cached 'tensorflow' for this CPU and these networks: ``slides run`` with the default
    ``auto`` runs both networks on TensorFlow and says so; an explicit backend is never
    overridden by the cache."""
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(auto_backend.CHOICE_ENV, raising=False)
    config = _config()
    key = auto_backend.choice_key(
        auto_backend.cpu_description(),
        describe_model(config.segmentation.model_for("he"))["sha256"],
        load_patch_classifier(config.phenotypes.lymphocyte_model).sha256)
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / auto_backend.CHOICE_FILE).write_text(
        json.dumps({key: {"backend": "tensorflow"}}))
    (row,) = run_slides([SlideJob("he", he_tiff, "he")], tmp_path / "out", _config(),
                        scheduler="sync")
    assert row.status == "done"
    features = json.loads((tmp_path / "out" / "slides" / "he" / "features.json").read_text())
    assert features["model"]["backend"] == "tensorflow"
    run = json.loads((tmp_path / "out" / "run.json").read_text())["pathology"]
    assert run["config"]["segmentation"]["backend"] == "auto"
    assert [m["backend"] for m in run["models"].values()] == ["tensorflow", "tensorflow"]
    explicit = PathologyConfig(tiling=TilingSection(tile_size=256, halo=48),
                               segmentation={"backend": "openvino"})
    assert ModelCache(explicit).backend_for("he") == "openvino"


def test_choice_keeps_openvino_unless_tensorflow_is_clearly_faster():
    assert auto_backend.choose({"openvino": 1.0, "tensorflow": 1.0}) == "openvino"
    assert auto_backend.choose({"openvino": 1.05, "tensorflow": 1.0}) == "openvino"
    assert auto_backend.choose({"openvino": 1.2, "tensorflow": 1.0}) == "tensorflow"


def test_a_pinned_choice_skips_the_measurement(tmp_path, monkeypatch):
    """``HCCBIO_AUTO_BACKEND`` wins over measuring (nothing cached, nothing measured); a value
    that is no backend is an error that names the variable."""
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path))

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(auto_backend, "measure", no_measuring)
    monkeypatch.setenv(auto_backend.CHOICE_ENV, "tensorflow")
    assert ModelCache(_config()).backend_for("he") == "tensorflow"
    monkeypatch.setenv(auto_backend.CHOICE_ENV, "OpenVINO")
    assert ModelCache(_config()).backend_for("he") == "auto"
    assert not (tmp_path / auto_backend.CHOICE_FILE).exists()
    monkeypatch.setenv(auto_backend.CHOICE_ENV, "onnx")
    with pytest.raises(ValueError, match="HCCBIO_AUTO_BACKEND='onnx'"):
        ModelCache(_config()).backend_for("he")
