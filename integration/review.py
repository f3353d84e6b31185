"""The pathologist's QC review decisions (``OUT/qc/review.csv``), as the study table reads them.

The log's format, vocabulary (``approved`` / ``rejected``; slides without a row are
``not_reviewed``) and reading rule (the latest decision by time, then file order, stands) are
defined once, in :mod:`pathology.run.review_log`, which the review app writes through; this
module only re-exports them for the integration arm.
"""

from __future__ import annotations

from pathology.run.review_log import (
    APPROVED,
    DECISIONS,
    NOT_REVIEWED,
    REJECTED,
    REVIEW_COLUMNS,
    REVIEW_FILE,
    Decision,
    ReviewError,
    read_review,
    review_state,
)

__all__ = ["APPROVED", "DECISIONS", "NOT_REVIEWED", "REJECTED", "REVIEW_COLUMNS",
           "REVIEW_FILE", "Decision", "ReviewError", "read_review", "review_state"]
