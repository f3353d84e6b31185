"""The pathologist's review in the browser: ``hccbio review OUT`` (see docs/qc_review.md)."""
