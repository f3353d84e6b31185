"""The run folder's layout, named once: the runner asks :class:`RunFolder` for a path instead
of spelling ``"slides"`` or ``"run.json"``. A slide folder's own files are named by
:class:`pathology.io.folder.SlideFolder`, the contract the steps share.

```
OUT/                              RunFolder
  run.json, batch_report.csv      .run_json, .batch_report
  runs/<started>_pathology.json   .runs: one provenance record per run, never overwritten
  logs/slurm/                     .slurm_logs: --scheduler slurm jobs' logs (<name>-<id>.out/.err)
  pathology_features.csv (+ _dictionary.csv)
  qc/qc_summary.csv, index.html, review.csv, reviewers.json
  features.csv, exclusions.csv, report.html, analysis/
  slides/<sample_id>/             SlideFolder
    store.zarr, cell_parts/, cells.parquet, cell_classes.parquet, features.json, cells.h5ad
    qc/qc.json, artefact_mask.png, artefacts.json, ...
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pathology.io.folder import QC_DIR, SlideFolder

SLIDES_DIR = "slides"
RUN_JSON = "run.json"
RUNS_DIR = "runs"
SLURM_LOGS = "logs/slurm"
BATCH_REPORT = "batch_report.csv"
PATHOLOGY_FEATURES = "pathology_features.csv"
PATHOLOGY_DICTIONARY = "pathology_features_dictionary.csv"
QC_SUMMARY = "qc_summary.csv"
QC_INDEX = "index.html"
REVIEW_LOG = "review.csv"
REVIEWERS = "reviewers.json"
SAMPLE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def valid_sample_id(sample_id: str) -> bool:
    """Whether ``sample_id`` is a safe folder name (letters, digits, ``._-``, no ``..``).

    Examples
    --------
    >>> valid_sample_id("P01_baseline_he"), valid_sample_id("../etc")
    (True, False)
    """
    return bool(SAMPLE_ID_RE.fullmatch(sample_id)) and ".." not in sample_id


@dataclass(frozen=True)
class RunFolder:
    """``OUT``: one run's outputs.

    Examples
    --------
    >>> run = RunFolder(Path("out"))
    >>> run.slide("s1").features.as_posix(), run.review_log.as_posix()
    ('out/slides/s1/features.json', 'out/qc/review.csv')
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def slides(self) -> Path:
        """``slides/``: one folder per slide."""
        return self.root / SLIDES_DIR

    def slide(self, sample_id: str) -> SlideFolder:
        """The folder of one slide.

        Raises
        ------
        ValueError
            ``sample_id`` is not a safe folder name.
        """
        if not valid_sample_id(sample_id):
            raise ValueError(f"invalid sample id {sample_id!r} (letters, digits, '._-')")
        return SlideFolder(self.slides / sample_id)

    def slide_folders(self, *, having: str | None = None) -> list[SlideFolder]:
        """Every slide folder with a valid id, sorted; only those holding ``having`` (a file
        name such as :data:`pathology.io.folder.FEATURES`) when given."""
        if not self.slides.is_dir():
            return []
        return [SlideFolder(p) for p in sorted(self.slides.iterdir())
                if p.is_dir() and valid_sample_id(p.name)
                and (having is None or (p / having).exists())]

    @property
    def run_json(self) -> Path:
        """``run.json``: provenance."""
        return self.root / RUN_JSON

    @property
    def runs(self) -> Path:
        """``runs/``: every run's provenance record, one file per run."""
        return self.root / RUNS_DIR

    @property
    def slurm_logs(self) -> Path:
        """``logs/slurm/``: the SLURM worker jobs' logs (when ``batch.slurm.log_dir`` is
        empty)."""
        return self.root / SLURM_LOGS

    @property
    def batch_report(self) -> Path:
        """``batch_report.csv``: one row per sample."""
        return self.root / BATCH_REPORT

    @property
    def pathology_features(self) -> Path:
        """``pathology_features.csv``: one row per slide."""
        return self.root / PATHOLOGY_FEATURES

    @property
    def pathology_dictionary(self) -> Path:
        """``pathology_features_dictionary.csv``."""
        return self.root / PATHOLOGY_DICTIONARY

    @property
    def qc(self) -> Path:
        """``qc/``: the run's QC table, review page and review log."""
        return self.root / QC_DIR

    @property
    def qc_summary(self) -> Path:
        """``qc/qc_summary.csv``."""
        return self.qc / QC_SUMMARY

    @property
    def qc_index(self) -> Path:
        """``qc/index.html``."""
        return self.qc / QC_INDEX

    @property
    def review_log(self) -> Path:
        """``qc/review.csv``: the pathologist's decisions (:mod:`pathology.run.review_log`)."""
        return self.qc / REVIEW_LOG

    @property
    def reviewers(self) -> Path:
        """``qc/reviewers.json``: the review app's accounts (:mod:`pathology.review.accounts`)."""
        return self.qc / REVIEWERS
