"""benchmarks.whole_run's helpers on tiny inputs: the mosaic slide it measures (a pyramidal
TIFF the pipeline reads with its pixel size), and how the report turns seconds into ratios and
verdicts. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.whole_run import (
    cpu_description,
    profile_steps,
    ratios,
    table,
    verdict,
    write_manifest,
    write_mosaic,
)


@pytest.fixture(scope="module")
def real_crop(shared_data: Path) -> tuple[np.ndarray, float]:
    """A 320 x 400 crop of CMU-1-Small-Region's tissue and its pixel size."""
    from pathology.io.slide import Slide

    with Slide(shared_data / "slides" / "pathml-testdata" / "small_HE.svs") as slide:
        mpp = slide.info.pixel_size.mpp
        return slide.read_region_at(600, 1200, 400, 320, mpp=mpp)[..., :3].copy(), mpp


def test_mosaic_is_a_pyramidal_tiff_with_its_pixel_size(real_crop, tmp_path: Path) -> None:
    from pathology.io.slide import Slide

    region, mpp = real_crop
    path = write_mosaic(tmp_path / "mosaic.tif", region, rows=2, cols=3, mpp=mpp,
                        downsample=2, tile=128)
    with Slide(path) as slide:
        info = slide.info
        assert info.dimensions == (3 * 400, 2 * 320)  # (width, height)
        assert info.pixel_size.mpp == pytest.approx(mpp, rel=1e-4)
        assert len(info.level_dimensions) >= 2
        assert info.level_downsamples[1] == pytest.approx(2.0, rel=0.01)
        full = slide.read_region_at(0, 0, 1200, 640, mpp=info.pixel_size.mpp)[..., :3]
    # every copy is the region (JPEG at quality 90: close, not equal)
    for row in range(2):
        for col in range(3):
            copy = full[row * 320:(row + 1) * 320, col * 400:(col + 1) * 400].astype(float)
            assert np.abs(copy - region).mean() < 4.0


def test_mosaic_refuses_what_is_not_rgb(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        write_mosaic(tmp_path / "x.tif", np.zeros((64, 64), np.uint8), rows=1, cols=1, mpp=0.5)


def test_manifest_names_the_slide(tmp_path: Path) -> None:
    from integration.manifest import read_manifest

    slide = tmp_path / "mosaic.tif"
    (sample,) = read_manifest(write_manifest(tmp_path, slide))
    assert (sample.sample_id, sample.modality, sample.path) == ("mosaic", "he", slide)
    assert sample.mpp is None  # the slide's own resolution tags give it


def test_ratios_and_verdicts() -> None:
    report = {"runs": {"default": {"seconds": 108.0}, "sync": {"seconds": 72.0},
                       "sync_openvino": {"seconds": 80.0}, "sync_tensorflow": {"seconds": 120.0}},
              "network": {"openvino": {"seconds": 50.0}, "tensorflow": {"seconds": 80.0}}}
    r = ratios(report)
    assert r["run_vs_network"] == 2.16 and r["verdicts"]["run_vs_network"] == "not met"
    assert r["sync_vs_network"] == 1.44
    assert r["local_vs_sync"] == 1.5  # the cluster is the slower
    assert r["openvino_vs_tensorflow"] == 1.5
    assert r["verdicts"]["openvino_vs_tensorflow"] == "met"
    assert r["network_openvino_vs_tensorflow"] == 1.6
    # the bounds themselves count as met
    assert verdict(2.0, "run_vs_network") == "met"
    assert verdict(1.3, "openvino_vs_tensorflow") == "met"
    # what was not run is said so, not guessed
    partial = ratios({"runs": {"default": {"seconds": 10.0}}, "network": {}})
    assert partial["run_vs_network"] is None
    assert partial["verdicts"] == {"run_vs_network": "not measured",
                                   "openvino_vs_tensorflow": "not measured"}


def test_cpu_description_reads_the_vector_extensions() -> None:
    avx2 = cpu_description("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n")
    assert avx2["model"] == "AMD EPYC 7B13" and avx2["avx2"] and avx2["avx512"] == []
    assert "AVX2" in avx2["label"] and f"{avx2['cores']} cores" in avx2["label"]
    xeon = cpu_description("model name\t: Xeon\nflags\t\t: avx2 avx512f avx512bw\n")
    assert xeon["avx512"] == ["avx512bw", "avx512f"] and "AVX-512" in xeon["label"]
    here = cpu_description()
    assert here["cores"] >= 1 and here["label"]


def test_profile_steps_and_table() -> None:
    measure = "/x/pathology/cells/measure.py"
    stats = {(measure, 304, "measure_tile"): (4, 4, 0.2, 3.0, {}),
             (measure, 130, "_convex_areas"): (4, 4, 1.0, 1.2, {}),
             ("/x/pathology/run/batch.py", 1, "run_slides"): (1, 1, 0.0, 9.0, {}),
             ("/usr/lib/python3/json/decoder.py", 1, "decode"): (1, 1, 5.0, 5.0, {})}
    summary = profile_steps(stats)
    assert summary["steps"] == {"cell measurement": 3.0, "  convex areas": 1.2}
    assert summary["calls"]["cell measurement"] == 4
    # the pipeline's own functions only, the runner's entry points left out
    assert [name for name, _, _ in summary["top"]] == ["cells/measure.py:measure_tile",
                                                       "cells/measure.py:_convex_areas"]
    run = {"seconds": 100.0, "s_per_mm2": 17.6, "tissue_mm2": 5.68, "tiles": 59,
           "cells": 31418, "backend": "openvino",
           "peak_rss": {"main_gb": 0.3, "worker_max_gb": 1.4}}
    report = {"date": "2026-12-07T21:00:00+00:00", "host": "vm",
              "cpu": cpu_description("model name\t: AMD EPYC\nflags\t\t: avx2\n"),
              "slide": {"rows": 3, "cols": 3, "height": 8901, "width": 6660, "mpp": 0.499},
              "runs": {"default": run, "sync": {**run, "seconds": 70.0}},
              "network": {"openvino": {"seconds": 26.0, "boxes": 59, "per_box_s": 0.44,
                                       "box_px": [[1152, 1152]], "hint": "LATENCY",
                                       "threads": 2}},
              "profile": {"config": "default", "seconds": 90.0, "tiles": 59, **summary}}
    report["ratios"] = ratios(report)
    text = table(report)
    assert "AMD EPYC, AVX2" in text
    assert "| default run / network alone | 3.85x | <= 2x | not met |" in text
    assert "| OpenVINO / TensorFlow whole sync run speed-up | - | >= 1.3x | not measured |" in text
    assert "### Where the time goes" in text and "| cell measurement | 3 | 0.051 | 4 |" in text
