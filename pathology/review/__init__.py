"""The pathologist's review in the browser: ``hccbio review OUT`` (see docs/qc_review.md).

A web app over a run folder (:mod:`.app`, served by :mod:`.server`; pages :mod:`.pages`,
Deep Zoom tiles :mod:`.deepzoom`); reviewer accounts (:mod:`.accounts`), sign-in sessions and
the limit on wrong passwords (:mod:`.auth`), and the ``hccbio review`` commands (:mod:`.cli`).
The decisions it records and the QC table it rebuilds are the run folder's
(:mod:`pathology.run.decisions`, :mod:`pathology.run.qc_summary`).
"""
