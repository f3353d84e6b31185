"""Response statistics: AUC equals scikit-learn, DeLong interval, labels from RECIST."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from integration.response import auc_delong, response_labels


def test_response_labels():
    best = pd.Series(["CR", "PR", "SD", "PD", "NE"])
    assert response_labels(best, "orr").tolist()[:4] == [1, 1, 0, 0]
    assert response_labels(best, "dcr").tolist()[:4] == [1, 1, 1, 0]
    assert np.isnan(response_labels(best, "orr").iloc[4])


def test_auc_equals_sklearn_and_mann_whitney():
    rng = np.random.default_rng(3)  # synthetic scores: the point is the arithmetic
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties present
    auc, low, high = auc_delong(scores, labels)
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    assert auc == pytest.approx(u / (labels.sum() * (80 - labels.sum())), abs=1e-12)
    assert 0 <= low < auc < high <= 1


def test_delong_interval_on_hand_computed_example():
    # positives 0.35, 0.8; negatives 0.1, 0.4: psi = [[1, 0], [1, 1]], AUC 0.75
    # V10 = (0.5, 1), V01 = (1, 0.5): var = 0.125/2 + 0.125/2 = 0.125
    auc, low, high = auc_delong(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    half = 1.959963984540054 * np.sqrt(0.125)
    assert auc == 0.75
    assert low == pytest.approx(max(0.0, 0.75 - half)) and high == pytest.approx(1.0)
