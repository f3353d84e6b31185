"""One study, one config: the ``study`` section of a study YAML and ``run_study`` that runs it all.

A study YAML (``configs/study.yaml``) holds a ``study`` section (read here: where the manifest,
the clinical table and the output folder are, and which arm configs to use) and an
``analysis`` section (read by :func:`integration.config.load_analysis_config`). Paths are
relative to the YAML file's folder.

:func:`run_study` runs, in order, the slide arm (``he``, ``ihc``, ``mif`` rows), the blood arm
(``flow``, ``elisa``, ``scrna`` rows; only when :mod:`blood.batch` imports), the transcriptome
arm (``rnaseq`` rows), the integration and the outcome analysis, all into one run folder. An arm
with no rows is skipped. A sample that fails is recorded in ``OUT/batch_report.csv`` and never
stops the study; an invalid input of the whole study (YAML, manifest, clinical table, an arm's
config) raises :class:`StudyError` before any arm runs, naming the file and the key.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hcccore.yamlfile import read_yaml
from integration.manifest import BLOOD_MODALITIES, SLIDE_MODALITIES, Sample

log = logging.getLogger("hccbio.study")

SECTION = "study"
BATCH_REPORT = "batch_report.csv"
QC_INDEX = "qc/index.html"
PATH_KEYS = ("manifest", "clinical", "out", "pathology_config", "blood_config",
             "transcriptome_config")
INPUT_KEYS = ("manifest", "clinical", "pathology_config", "blood_config", "transcriptome_config")


class StudyError(ValueError):
    """The study YAML or one of the study-wide inputs is invalid; the message names file and key."""


class StudySection(BaseModel):
    """The ``study`` section of a study YAML: what to run and where to write it.

    Attributes
    ----------
    name
        Study name, for logs and the summary.
    manifest
        The study manifest (``samples.csv``).
    clinical
        The clinical table (``clinical.csv``).
    out
        The run folder for every arm, the merged table, the analysis and the report (created;
        resumed when it exists).
    pathology_config
        Pathology YAML (``configs/pathology.yaml``); ``None`` uses the built-in defaults.
    blood_config
        Blood YAML; ``None`` uses ``configs/blood.yaml``.
    transcriptome_config
        Transcriptome YAML; ``None`` uses ``configs/transcriptome.yaml``.
    scheduler
        Where the slides run: ``sync`` (this process), ``local[:N]``, ``tcp://HOST:PORT`` or
        ``slurm`` (see :func:`pathology.run.schedulers.parse_scheduler`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(..., min_length=1, description="Study name (logs, summary).")
    manifest: Path = Field(..., description="Study manifest (samples.csv), relative to the YAML.")
    clinical: Path = Field(..., description="Clinical table (clinical.csv), relative to the YAML.")
    out: Path = Field(..., description="Run folder for every output, relative to the YAML.")
    pathology_config: Path | None = Field(None, description="Pathology YAML; null = defaults.")
    blood_config: Path | None = Field(None, description="Blood YAML; null = configs/blood.yaml.")
    transcriptome_config: Path | None = Field(
        None, description="Transcriptome YAML; null = configs/transcriptome.yaml.")
    scheduler: str = Field("sync", min_length=1, description="Slides: sync | local[:N] | "
                           "tcp://HOST:PORT | slurm.")

    @field_validator("name")
    @classmethod
    def _strip_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the study name is empty")
        return value.strip()


def load_study(path: str | Path, *, check_files: bool = True) -> StudySection:
    """Read and validate the ``study`` section of a study YAML.

    Parameters
    ----------
    path
        The study YAML.
    check_files
        Also require the manifest, the clinical table and every arm config named to exist.

    Returns
    -------
    StudySection
        With every path made absolute (relative paths resolve against the YAML's folder).

    Raises
    ------
    StudyError
        Missing or unreadable file, no ``study`` section, an unknown or invalid key, or (with
        ``check_files``) a named input file that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study config not found")
    data = read_yaml(path, error=StudyError)
    if not isinstance(data, dict) or not isinstance(data.get(SECTION), dict):
        raise StudyError(f"{path}: no '{SECTION}' section (a mapping with name, manifest, "
                         "clinical, out)")
    try:
        section = StudySection.model_validate(data[SECTION])
    except ValidationError as error:
        problems = "; ".join(f"{SECTION}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise StudyError(f"{path}: {problems}") from None
    base = path.resolve().parent
    resolved = {key: _resolve(getattr(section, key), base) for key in PATH_KEYS}
    section = section.model_copy(update=resolved)
    if check_files:
        for key in INPUT_KEYS:
            target = getattr(section, key)
            if target is not None and not target.is_file():
                raise StudyError(f"{path}: {SECTION}.{key}: file {target} not found")
    return section


def _resolve(value: Path | None, base: Path) -> Path | None:
    if value is None:
        return None
    value = value.expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def run_study(path: str | Path, *, force: bool = False, show_progress: bool = False) -> dict:
    """Run a whole study from its YAML: slides, blood, transcriptome, integration, analysis.

    Parameters
    ----------
    path
        The study YAML (sections ``study`` and ``analysis``).
    force
        Recompute finished slides (other arms always recompute; they are fast).
    show_progress
        Live progress display of the slide arm.

    Returns
    -------
    dict
        ``name``, ``out``; ``arms``: per arm ``{"samples", "done", "skipped", "failed"}`` or
        ``{"skipped": reason}``; ``where``: where each arm runs (:func:`arm_placement`: only
        the slides go to the scheduler); ``failed``: sample ids that failed in any arm;
        ``seconds`` per step; and the paths ``batch_report``, ``features``,
        ``data_dictionary``, ``analysis``, ``report`` and ``qc`` (the slide QC page
        ``qc/index.html``; ``None`` when not written).

    Raises
    ------
    StudyError
        Invalid study YAML, manifest, clinical table or arm config (checked before any arm
        runs), or an error that concerns the run as a whole (locked run folder, merged table,
        analysis inputs); the message names the file and the key.
    """
    from hcccore.batch_report import BatchReportError
    from hcccore.lock import RunFolderError, RunLockedError
    from hcccore.sample_features import SampleFeaturesError
    from integration.analyze import REPORT_FILE, run_analysis
    from integration.arms import FeatureTableError
    from integration.clinical import ClinicalError, read_clinical
    from integration.config import ConfigError, load_analysis_config
    from integration.frame import AnalysisInputError
    from integration.integrate import run_integration
    from integration.manifest import ManifestError, read_manifest
    from integration.review import ReviewError

    path = Path(path)
    study = load_study(path)
    try:
        analysis_config = load_analysis_config(path)
        samples = read_manifest(study.manifest)
        read_clinical(study.clinical)
    except (ConfigError, ManifestError, ClinicalError) as error:
        raise StudyError(str(error)) from None
    slides = [s for s in samples if s.modality in SLIDE_MODALITIES]
    blood = [s for s in samples if s.modality in BLOOD_MODALITIES]
    rnaseq = [s for s in samples if s.modality == "rnaseq"]
    configs = _arm_configs(study, slides=bool(slides), blood=bool(blood), rnaseq=bool(rnaseq))

    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    where = arm_placement(study, configs.get("pathology"))
    summary: dict = {"name": study.name, "out": out, "arms": {}, "failed": [], "seconds": {},
                     "where": where}
    log.info("study=%s samples=%d slides=%d blood=%d rnaseq=%d out=%s", study.name,
             len(samples), len(slides), len(blood), len(rnaseq), out)
    for arm, place in where.items():
        log.info("study=%s arm=%s runs %s", study.name, arm, place)
    steps = (("pathology", slides, lambda: _run_slide_arm(slides, study, configs["pathology"],
                                                          force=force,
                                                          show_progress=show_progress)),
             ("blood", blood, lambda: _run_blood_arm(blood, out, configs.get("blood"))),
             ("transcriptome", rnaseq, lambda: _run_rnaseq_arm(rnaseq, out,
                                                               configs.get("transcriptome"))))
    for arm, rows, run in steps:
        started = time.perf_counter()
        if not rows:
            summary["arms"][arm] = {"skipped": "no rows in the manifest"}
            continue
        if arm == "blood" and configs.get("blood") is None:
            summary["arms"][arm] = {"skipped": "the blood arm (blood.batch) is not installed"}
            log.warning("study=%s blood arm not available: %d blood rows not processed",
                        study.name, len(rows))
            continue
        try:
            statuses = run()
        except (RunLockedError, RunFolderError, SampleFeaturesError) as error:
            raise StudyError(str(error)) from None
        summary["arms"][arm] = _counts(statuses)
        summary["failed"].extend(s for s, status in statuses.items() if status == "failed")
        summary["seconds"][arm] = round(time.perf_counter() - started, 2)
        log.info("study=%s arm=%s %s", study.name, arm, summary["arms"][arm])

    started = time.perf_counter()
    try:
        run_integration(study.manifest, out)
        summary["seconds"]["integration"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        run_analysis(out / "features.csv", study.clinical, out, config=analysis_config)
    except (ManifestError, FeatureTableError, ReviewError, ClinicalError,
            AnalysisInputError, RunLockedError, RunFolderError, BatchReportError) as error:
        raise StudyError(str(error)) from None
    summary["seconds"]["analysis"] = round(time.perf_counter() - started, 2)
    summary.update({
        "batch_report": _existing(out / BATCH_REPORT),
        "features": _existing(out / "features.csv"),
        "data_dictionary": _existing(out / "data_dictionary.csv"),
        "analysis": _existing(out / "analysis"),
        "report": _existing(out / REPORT_FILE),
        "qc": _existing(out / QC_INDEX),  # written by the slide arm
    })
    return summary


def arm_placement(study: StudySection, pathology_config=None) -> dict[str, str]:
    """Where each arm of the study runs: only the slide arm goes to the ``scheduler`` (Dask
    workers, on a SLURM cluster with ``slurm``); blood, RNA-seq, the integration and the
    analysis run in this process.

    Parameters
    ----------
    study
        The study section (its ``scheduler`` and ``out``).
    pathology_config
        The resolved pathology configuration (its ``batch.slurm`` section describes the
        jobs); ``None`` for the defaults.

    Returns
    -------
    dict
        Arm (``pathology``, ``blood``, ``transcriptome``, ``integration``, ``analysis``) ->
        a phrase such as ``"in this process"`` or ``"on the SLURM cluster: ..."``.

    Examples
    --------
    >>> section = StudySection(name="s", manifest="m.csv", clinical="c.csv", out="o",
    ...                        scheduler="local:4")
    >>> arm_placement(section)["pathology"]
    'on this machine: a Dask LocalCluster of 4 worker processes'
    """
    from pathology.run.schedulers import parse_scheduler

    here = "in this process"
    sched = parse_scheduler(study.scheduler)
    if sched.kind == "slurm":
        from pathology.config import PathologyConfig
        from pathology.run.slurm import slurm_log_dir

        slurm = (pathology_config or PathologyConfig()).batch.slurm
        slides = (f"on the SLURM cluster: {slurm.jobs} job(s) of {slurm.cores} core(s) and "
                  f"{slurm.memory}, wall time {slurm.walltime}, partition "
                  f"{slurm.partition or '(default)'}; job logs "
                  f"{slurm_log_dir(slurm, study.out)}")
    elif sched.kind == "local":
        slides = f"on this machine: a Dask LocalCluster of {sched.workers} worker processes"
    elif sched.kind == "address":
        slides = f"on the Dask scheduler at {sched.address}"
    else:
        slides = here
    if sched.kind != "sync":
        here += " (not on the workers)"
    return {"pathology": slides, "blood": here, "transcriptome": here, "integration": here,
            "analysis": here}


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def _counts(statuses: dict[str, str]) -> dict[str, int]:
    values = list(statuses.values())
    return {"samples": len(values), "done": values.count("done"),
            "skipped": values.count("skipped"), "failed": values.count("failed")}


def _arm_configs(study: StudySection, *, slides: bool, blood: bool, rnaseq: bool) -> dict:
    """Load every arm config the manifest needs, before anything runs (errors name the file)."""
    configs: dict = {}
    if slides:
        from pathology.config import ConfigError, load_config
        from pathology.run.schedulers import parse_scheduler

        try:
            configs["pathology"] = load_config(study.pathology_config)
        except ConfigError as error:
            raise StudyError(f"{error} (study.pathology_config)") from None
        try:
            parse_scheduler(study.scheduler)
        except ValueError as error:
            raise StudyError(f"study.scheduler: {error}") from None
    if blood:
        try:
            import blood.batch  # noqa: F401 - the arm runs only when its batch module imports
            from blood.config import load_config as load_blood_config
            from blood.errors import ConfigError as BloodConfigError
        except ImportError as error:
            log.warning("blood arm not available (%s)", error)
            configs["blood"] = None
        else:
            try:
                configs["blood"] = load_blood_config(study.blood_config)
            except BloodConfigError as error:
                raise StudyError(f"{error} (study.blood_config)") from None
    if rnaseq:
        from transcriptome.cli import DEFAULT_CONFIG
        from transcriptome.config import ConfigError as RnaseqConfigError
        from transcriptome.config import load_config as load_rnaseq_config

        try:
            configs["transcriptome"] = load_rnaseq_config(study.transcriptome_config
                                                          or DEFAULT_CONFIG)
        except RnaseqConfigError as error:
            raise StudyError(f"{error} (study.transcriptome_config)") from None
    return configs


def _run_slide_arm(samples: list[Sample], study: StudySection, config, *, force: bool,
                   show_progress: bool) -> dict[str, str]:
    from hcccore.lock import RunFolderError, RunLockedError
    from pathology.run.batch import run_slides
    from pathology.run.pipeline import SlideJob
    from pathology.run.serial import BlockMember, plan_serial_pairs

    jobs = [SlideJob(s.sample_id, s.path, s.modality, s.stain, s.mpp) for s in samples]
    serial, _ = plan_serial_pairs([BlockMember(s.sample_id, s.modality, s.block)
                                   for s in samples],
                                  reference_modality=config.registration.reference_modality)
    try:
        rows = run_slides(jobs, study.out, config, scheduler=study.scheduler, force=force,
                          show_progress=show_progress, serial=serial)
    except (RunLockedError, RunFolderError) as error:
        raise StudyError(str(error)) from None
    return {row.sample_id: row.status for row in rows}


def _run_blood_arm(samples: list[Sample], out: Path, config) -> dict[str, str]:
    try:
        from blood.batch import BloodJob, run_blood
    except ImportError:  # pragma: no cover - the config import succeeded
        return {}
    jobs = [BloodJob(s.sample_id, s.modality, s.stain, s.path) for s in samples]
    result = run_blood(jobs, out, config=config)
    return dict(zip(result.batch["sample_id"], result.batch["status"], strict=True))


def _run_rnaseq_arm(samples: list[Sample], out: Path, config) -> dict[str, str]:
    from transcriptome.errors import ExpressionError
    from transcriptome.pipeline import RnaseqRecord, record_failed_run, run_transcriptome

    records = [RnaseqRecord(s.sample_id, s.path) for s in samples]
    try:
        result = run_transcriptome(records, out, config=config)
    except ExpressionError as error:  # the cohort as a whole: every sample fails, study goes on
        reason = " ".join(str(error).split())
        log.warning("transcriptome arm failed as a whole: %s", reason)
        record_failed_run(records, out, reason=reason)
        return {r.sample_id: "failed" for r in records}
    return dict(zip(result.batch["sample_id"], result.batch["status"], strict=True))
