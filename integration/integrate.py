"""One call from a run folder to the merged, exported study table."""

from __future__ import annotations

from pathlib import Path

from hcccore.lock import RunLock
from integration.arms import read_arm_features
from integration.exports import write_feature_table
from integration.manifest import read_manifest
from integration.review import REVIEW_FILE, read_review
from integration.table import FeatureTable, build_feature_table


def run_integration(manifest: str | Path, out: str | Path) -> FeatureTable:
    """Merge the arms' feature tables of ``out`` into ``out/features.*`` and companions.

    Parameters
    ----------
    manifest
        The study manifest (``samples.csv``).
    out
        The run folder holding ``*_features.csv`` and, if reviewed, ``qc/review.csv``.

    Returns
    -------
    FeatureTable
        What was written (see :func:`integration.exports.write_feature_table`).

    Raises
    ------
    hcccore.lock.RunLockedError
        Another run holds ``out`` (it is read and written under the run lock).
    """
    out = Path(out)
    samples = read_manifest(manifest)
    with RunLock(out):
        arms = read_arm_features(out)
        review = read_review(out / REVIEW_FILE)
        table = build_feature_table(samples, arms, review=review)
        write_feature_table(table, out)
    return table
