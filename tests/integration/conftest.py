"""Fixtures: lifelines' real rossi data laid out as a study (manifest, arm table, clinical)."""

from __future__ import annotations

import pandas as pd
import pytest
from lifelines.datasets import load_rossi

ROSSI_FEATURES = ("prio", "wexp", "mar", "paro", "race")


@pytest.fixture(scope="session")
def rossi() -> pd.DataFrame:
    """Rossi et al. (1980) recidivism data, 432 people, as shipped with lifelines."""
    data = load_rossi()
    data.insert(0, "patient_id", [f"R{i:03d}" for i in range(len(data))])
    return data


@pytest.fixture(scope="session")
def rossi_study(tmp_path_factory, rossi):
    """Rossi in the project's contracts: week/arrest as OS and PFS, features at baseline.

    Returns the run folder after ``run_integration`` (features.csv etc. written there).
    """
    from integration.integrate import run_integration

    folder = tmp_path_factory.mktemp("rossi")
    ids = rossi["patient_id"]
    manifest = pd.DataFrame({"patient_id": ids, "timepoint": "baseline",
                             "sample_id": ids + "_he", "modality": "he", "stain": "HE",
                             "path": ids + ".svs", "mpp": "0.5"})
    manifest.to_csv(folder / "samples.csv", index=False)
    features = rossi[list(ROSSI_FEATURES)].astype(float)
    features.insert(0, "sample_id", ids + "_he")
    features.to_csv(folder / "pathology_features.csv", index=False)
    pd.DataFrame({"name": list(ROSSI_FEATURES), "label": list(ROSSI_FEATURES), "unit": "",
                  "modality": "he", "method": "lifelines rossi data set", "config_keys": "",
                  "source": "load_rossi"}).to_csv(folder / "pathology_features_dictionary.csv",
                                                  index=False)
    clinical = pd.DataFrame({"patient_id": ids, "os_time": rossi["week"],
                             "os_event": rossi["arrest"], "pfs_time": rossi["week"],
                             "pfs_event": rossi["arrest"], "best_response": "NE",
                             "age": rossi["age"], "fin": rossi["fin"]})
    clinical.to_csv(folder / "clinical.csv", index=False)
    run_integration(folder / "samples.csv", folder)
    return folder
