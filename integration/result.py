"""What an outcome analysis computed (:class:`AnalysisResult`): made by
:func:`integration.analyze.run_analysis`, rendered by :mod:`integration.report`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from integration.config import AnalysisConfig
from integration.frame import AnalysisData


@dataclass
class AnalysisResult:
    """What :func:`integration.analyze.run_analysis` computed and wrote.

    Attributes
    ----------
    tables
        Name (file stem under ``analysis/``) -> table.
    figures
        Name -> (caption, PNG bytes), in report order.
    data
        The analysis frame.
    config
        The resolved config.
    provenance
        The content of ``analysis/analysis.json``.
    notes
        Warnings for the reader (left-out covariates, features not analysed, ...).
    """

    tables: dict[str, pd.DataFrame]
    figures: dict[str, tuple[str, bytes]]
    data: AnalysisData
    config: AnalysisConfig
    provenance: dict
    notes: list[str] = field(default_factory=list)
