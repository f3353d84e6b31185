"""Fixtures for the slide tests: real images written as pyramidal TIFFs, small-tile configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from integration.demo import write_pyramidal_tiff
from pathology.config import PathologyConfig, TilingSection
from pathology.pipeline import ModelCache


@pytest.fixture(scope="session")
def he_tiff(tmp_path_factory) -> Path:
    """stardist's real H&E test image (300x500) with a glass margin, as a 0.5 um/px TIFF."""
    from stardist.data import test_image_he_2d

    image = np.pad(test_image_he_2d(), ((64, 64), (64, 64), (0, 0)), constant_values=245)
    path = tmp_path_factory.mktemp("slides") / "he.tiff"
    write_pyramidal_tiff(path, image, mpp=0.5)
    return path


@pytest.fixture(scope="session")
def small_tile_config() -> PathologyConfig:
    """Defaults with 128-px tiles, so that small real images span many tiles."""
    return PathologyConfig(tiling=TilingSection(tile_size=128, halo=48))


@pytest.fixture(scope="session")
def models(small_tile_config) -> ModelCache:
    """One model cache for the whole session (loading TensorFlow models is slow)."""
    return ModelCache(small_tile_config)
