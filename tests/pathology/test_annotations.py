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
