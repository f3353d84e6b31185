"""One call from a run folder to the merged, exported study table."""

from __future__ import annotations

from pathlib import Path

from hcccore.batch_report import read_report
from hcccore.lock import RunLock
from integration.arms import check_finished_samples, read_arm_features
from integration.exports import write_feature_table
from integration.manifest import read_manifest
from integration.review import REVIEW_FILE, read_review, result_digests
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
    integration.arms.FeatureTableError
        An arm table that is truncated, lacks its dictionary, holds text or non-finite
        numbers in a numeric column, or lacks a sample ``batch_report.csv`` lists as finished.
    hcccore.batch_report.BatchReportError
        A broken ``batch_report.csv``.
    """
    out = Path(out)
    samples = read_manifest(manifest)
    with RunLock(out):
        arms = read_arm_features(out)
        check_finished_samples(samples, arms, out)
        review = read_review(out / REVIEW_FILE)
        table = build_feature_table(samples, arms, review=review, batch=read_report(out),
                                    results=result_digests(out))
        write_feature_table(table, out)
    return table
