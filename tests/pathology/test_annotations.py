"""Where the real annotated data live: one definition for training, benchmarks and tests."""

from __future__ import annotations

import pytest

from pathology.evaluation.annotations import SHARED_DATA_ENV, shared_data_folder


def test_shared_data_folder_follows_the_variable_and_names_a_missing_folder(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    assert shared_data_folder() == tmp_path
    missing = tmp_path / "not-there"
    monkeypatch.setenv(SHARED_DATA_ENV, str(missing))
    assert shared_data_folder(must_exist=False) == missing
    with pytest.raises(FileNotFoundError, match=f"{missing}.*{SHARED_DATA_ENV}"):
        shared_data_folder()


def test_without_the_variable_the_data_sit_beside_the_repository(project_root, monkeypatch):
    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    folder = shared_data_folder(must_exist=False)
    assert folder == project_root.parent / "shared" / "data"
    assert project_root not in folder.parents  # never inside the repository


def test_deepliif_training_masks_are_laid_on_the_ihc_they_annotate(shared_data):
    """DeepLIIF's training masks come from the co-registered immunofluorescence and sit 6-8 px
    off the IHC panel; the loader moves them onto the nuclei (the manual test masks already
    are)."""
    from scipy import ndimage as ndi
    from skimage import io as skio

    from pathology.evaluation.annotations import DEEPLIIF_PANEL, load_deepliif, mask_offset

    root = shared_data / "ihc" / "deepliif"
    for item in load_deepliif(root, "train"):
        panels = skio.imread(root / "train" / f"{item.name}.png")[..., :3]
        raw = panels[:, 5 * DEEPLIIF_PANEL:6 * DEEPLIIF_PANEL]
        raw_labels, _ = ndi.label((raw.max(axis=-1) > 200) & (raw[..., 1] < 50))
        assert max(map(abs, mask_offset(item.image, raw_labels))) >= 4, item.name
        assert mask_offset(item.image, item.labels) == (0, 0), item.name
        assert item.labels.max() <= raw_labels.max()  # moved, not redrawn
    for item in load_deepliif(root, "test"):
        assert max(map(abs, mask_offset(item.image, item.labels))) <= 1, item.name


def test_shift_labels_moves_without_wrapping():
    """Synthetic 4 x 4 mask (a known geometry): one object at the right edge."""
    import numpy as np

    from pathology.evaluation.annotations import shift_labels

    labels = np.zeros((4, 4), np.int32)
    labels[1:3, 2:4] = 7
    moved = shift_labels(labels, (1, 1))
    assert moved[2:4, 3].tolist() == [7, 7] and moved[:, 0].sum() == 0  # nothing wrapped
    assert (shift_labels(moved, (-1, -1))[1:3, 2:3] == 7).all()
    assert (shift_labels(labels, (0, 0)) == labels).all()
