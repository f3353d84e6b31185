"""The pathologist's QC review decisions (``OUT/qc/review.csv``), as the study table reads them.

The log's format, vocabulary (``approved`` / ``rejected``; slides without a row are
``not_reviewed``; an approval of a result the slide no longer holds is
``approved_earlier_result``), reading rule (the latest decision by time, then file order,
stands) and hash chain (a log that does not verify is refused) are defined once, in
:mod:`pathology.run.review_log`, which the review app writes through; this module only
re-exports them for the integration arm.
"""

from __future__ import annotations

from pathology.run.review_log import (
    APPROVED,
    APPROVED_EARLIER,
    DECISIONS,
    NOT_REVIEWED,
    REJECTED,
    REVIEW_COLUMNS,
    REVIEW_FILE,
    Decision,
    ReviewChainError,
    ReviewError,
    read_review,
    result_digests,
    review_state,
)

__all__ = ["APPROVED", "APPROVED_EARLIER", "DECISIONS", "NOT_REVIEWED", "REJECTED",
           "REVIEW_COLUMNS", "REVIEW_FILE", "Decision", "ReviewChainError", "ReviewError",
           "read_review", "result_digests", "review_state"]
