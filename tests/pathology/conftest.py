"""Fixtures for the slide tests: real images written as pyramidal TIFFs, small-tile configs."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from integration.demo import write_pyramidal_tiff
from pathology.config import PathologyConfig, TilingSection
from pathology.run.pipeline import ModelCache


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


@pytest.fixture(scope="session")
def deepliif_pipeline(shared_data, tmp_path_factory) -> dict:
    """DeepLIIF's Ki67 IHC test tiles (manual masks; never used to train or tune a model)
    through `hccbio slides run` with the shipped defaults for `ihc` rows (the IHC model, the
    Ki67 panel): name -> (AnnotatedImage, PipelineCells)."""
    from pathology.config import SegmentationSection
    from pathology.evaluation.annotations import load_deepliif
    from pathology.evaluation.harness import annotated_tile_config, run_pipeline

    items = load_deepliif(shared_data / "ihc" / "deepliif", "test")
    config = annotated_tile_config(SegmentationSection().ihc_model)
    results = run_pipeline(items, tmp_path_factory.mktemp("deepliif"), modality="ihc",
                           stain="Ki67", config=config)
    return {item.name: (item, result) for item, result in zip(items, results, strict=True)}


CHROMIUM = Path(os.environ.get("HCCBIO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def serving(review_server):
    """``with serving(out[, **create_app options]) as url``: the review app over run folder
    ``out``."""

    @contextmanager
    def url(out: Path, **options):
        with review_server(out, **options) as port:
            yield f"http://127.0.0.1:{port}"

    return url


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright (never 'playwright install')."""
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} missing under CI; .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium to run the browser tests")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="session")
def kidney_block(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """ANHIR's rat kidney H&E and pan-cytokeratin sections as two 2 um/px slides of one block
    (``he``, ``ck``), and a folder of QuPath annotations (``annotations``) with a tumour on the
    H&E only, in level-0 px of the H&E: the box (160, 40)-(270, 160), as ``kidney-he``."""
    import json

    from skimage import io as skio
    from skimage.transform import rescale

    folder = shared_data / "registration" / "anhir-rat-kidney"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    root = tmp_path_factory.mktemp("kidney-block")
    paths = {}
    for name, file in (("he", "Rat-Kidney_HE.jpg"), ("ck", "Rat-Kidney_PanCytokeratin.jpg")):
        image = skio.imread(folder / file)
        small = rescale(image, 0.25, channel_axis=-1, anti_aliasing=True, preserve_range=True)
        paths[name] = root / f"{name}.tiff"
        write_pyramidal_tiff(paths[name], np.clip(np.rint(small), 0, 255).astype(np.uint8),
                             mpp=2.0)
    paths["annotations"] = root / "annotations"
    paths["annotations"].mkdir()
    ring = [[160, 40], [270, 40], [270, 160], [160, 160], [160, 40]]
    (paths["annotations"] / "kidney-he.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "features": [{
            "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"classification": {"name": "Tumor"}}}]}))
    return paths


SLURM_AREA = Path(__file__).resolve().parents[2] / ".slurm-test"


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM cluster (munged, slurmctld, slurmd; ``slurm_cluster.py``) for
    the session, with ``SLURM_CONF`` set so that sbatch and hccbio use it; stopped at the end.
    Its ``shared`` folder (in the checkout's ``.slurm-test/``) is what the jobs see; their
    ``/tmp`` is private, as on a real cluster. Skips without root or the packages, except
    under CI (``.ci/run`` installs them)."""
    import shutil
    import tempfile

    from slurm_cluster import SlurmTestCluster, SlurmUnavailable

    SLURM_AREA.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="session-", dir=SLURM_AREA))
    under_tmp = any(str(p).startswith(tempfile.gettempdir() + os.sep)
                    for p in (SLURM_AREA, Path(sys.executable).resolve()))
    cluster = SlurmTestCluster(root / "slurm", private_tmp=not under_tmp)
    try:
        cluster.start()
    except SlurmUnavailable as error:
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"SLURM tests cannot run under CI: {error}")
        pytest.skip(str(error))
    cluster.shared = root / "shared"
    cluster.shared.mkdir()
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(root, ignore_errors=True)
        if SLURM_AREA.is_dir() and not any(SLURM_AREA.iterdir()):
            SLURM_AREA.rmdir()
