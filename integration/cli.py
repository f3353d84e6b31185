"""The ``hccbio`` command line: a thin layer over the Python API of each arm.

Each arm owns its sub-commands; manifest-driven ``run`` commands are wired here because the
study manifest belongs to ``integration``.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import typer

from blood.cli import app as blood_app
from integration.manifest import SLIDE_MODALITIES, ManifestError, read_manifest
from pathology.io.folder import CELLS
from pathology.review.cli import app as review_app
from pathology.run.layout import RunFolder
from transcriptome.cli import rnaseq_app

_STATE = {"debug": False}
# The run folder cannot be written (permissions, a read-only or full disk): the user's to fix.
DISK_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


class _Cli(typer.Typer):
    """The console entry point: an unexpected error is one line unless ``--debug``."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as error:  # a bug or an unforeseen input: one line, not a traceback
            if _STATE["debug"]:
                raise
            if isinstance(error, OSError) and error.errno in DISK_ERRNOS:  # not a bug
                where = f"{error.filename}: " if error.filename else ""
                typer.secho(f"error: {where}{error.strerror}; make the folder writable (or "
                            "free space), or give --out another folder",
                            fg=typer.colors.RED, err=True)
                raise SystemExit(2) from None
            text = " ".join(str(error).split()) or "-"
            typer.secho(f"error: unexpected {type(error).__name__}: {text} (run 'hccbio "
                        "--debug ...' for the traceback, and please report it)",
                        fg=typer.colors.RED, err=True)
            raise SystemExit(1) from None


app = _Cli(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
           help="hccbio: slides, blood and outcomes for HCC under atezolizumab + "
                "bevacizumab.")
slides_app = typer.Typer(no_args_is_help=True, help="Whole-slide images: tissue, nuclei, cells.")
app.add_typer(slides_app, name="slides")
app.add_typer(rnaseq_app, name="rnaseq")
app.add_typer(blood_app, name="blood")
app.add_typer(review_app, name="review")

LIBRARY_LOGGERS = ("distributed", "tornado", "bokeh", "asyncio", "absl", "tensorflow")
QUIET_LOGGERS = ("tifffile",)  # warns for every damaged TIFF it meets; the slide's error says it


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks of "
                                        "unexpected errors and debug log lines.")) -> None:
    _STATE["debug"] = debug


def configure_logging() -> None:
    """hccbio's own lines (``slide=S01 status=done ...``) at INFO, libraries at WARNING.

    The same with and without ``--quiet``, which only leaves out the live display; Dask's
    scheduler chatter and TensorFlow's start-up notes never reach the log.
    """
    import distributed  # noqa: F401  (it sets its own levels on import: import it first)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("hccbio").setLevel(logging.DEBUG if _STATE["debug"] else logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if _STATE["debug"] else logging.ERROR)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _check_out(out: Path) -> None:
    """``--out`` must be a folder or creatable as one (exit 2 naming it otherwise)."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "--out" if folder == out else f"--out {out}: its parent"
                _fail(f"{what} {folder} is a file, not a folder; give --out a new folder or "
                      "an earlier run's folder")
            return


@slides_app.command("run")
def slides_run(
    manifest: Path = typer.Argument(..., help="Study manifest (samples.csv)."),
    out: Path = typer.Option(..., "--out", help="Run folder (created; resumed if it exists)."),
    config: Path | None = typer.Option(None, "--config", help="pathology YAML "
                                       "(default: built-in defaults = configs/pathology.yaml)."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="sync | local[:N] (Dask LocalCluster, N single-threaded "
        "workers) | tcp://HOST:PORT | slurm; default: batch.scheduler of the config (local)."),
    force: bool = typer.Option(False, "--force", help="Recompute finished slides."),
    quiet: bool = typer.Option(False, "--quiet", help="No live progress; log lines only."),
) -> None:
    """Segment and measure every slide (he, ihc, mif rows) of a manifest."""
    from pathology.config import ConfigError, load_config
    from pathology.run.batch import run_slides
    from pathology.run.pipeline import SlideJob

    configure_logging()
    _check_out(out)
    try:
        samples = read_manifest(manifest)
        cfg = load_config(config)
    except (ManifestError, ConfigError) as error:
        _fail(str(error))
    jobs = [SlideJob(s.sample_id, s.path, s.modality, s.stain, s.mpp)
            for s in samples if s.modality in SLIDE_MODALITIES]
    if not jobs:
        _fail(f"{manifest}: no slide rows (modality {', '.join(SLIDE_MODALITIES)})")
    from hcccore.lock import RunLockedError
    from pathology.run.serial import BlockMember, plan_serial_pairs

    serial, notes = plan_serial_pairs(
        [BlockMember(s.sample_id, s.modality, s.block) for s in samples
         if s.modality in SLIDE_MODALITIES],
        reference_modality=cfg.registration.reference_modality)
    for note in notes:
        typer.echo(f"note: {note}")
    try:
        rows = run_slides(jobs, out, cfg, scheduler=scheduler or cfg.batch.scheduler,
                          force=force, show_progress=not quiet, serial=serial)
    except (RunLockedError, ValueError) as error:
        _fail(str(error))
    failed = [r for r in rows if r.status == "failed"]
    for row in rows:
        typer.echo(f"{row.sample_id:24s} {row.status:8s} {row.seconds:8.1f}s  {row.reason}")
    typer.echo(f"{len(rows) - len(failed)} of {len(rows)} slides done or skipped; "
               f"report: {out / 'batch_report.csv'}")
    if failed:
        raise typer.Exit(code=1)


KIND_NAMES = {"he": "H&E", "bf": "brightfield (H&E and IHC)", "fluo": "nuclear-channel"}
INT8_STATES = {"yes": "int8 network shipped", "none": "no int8 network",
               "stale": "int8 network quantised from other weights (run models/quantize.py)"}


@slides_app.command("models")
def slides_models(
    config: Path | None = typer.Option(None, "--config", help="pathology YAML (segmentation "
                                       "section)."),
) -> None:
    """Which segmentation model each slide modality gets (he, ihc, mif), with its pixel size,
    thresholds, int8 network and model card; exit 1 if one is missing (check before a batch)."""
    from pathology.config import ConfigError, load_config
    from pathology.segmentation.nuclei import describe_model

    try:
        cfg = load_config(config)
    except ConfigError as error:
        _fail(str(error))
    seg = cfg.segmentation
    settings = {"he": "brightfield_model", "ihc": "ihc_model", "mif": "fluorescence_model"}
    missing = 0
    for modality, setting in settings.items():
        info = describe_model(getattr(seg, setting))
        head = f"{modality:4s} segmentation.{setting:19s} {info['spec']}"
        if not info["found"]:
            missing += 1
            typer.secho(f"{head}: {info.get('folder', info['spec'])}: {info['problem']}",
                        fg=typer.colors.RED)
            continue
        if info.get("pretrained"):
            typer.echo(f"{head}: registered pretrained StarDist model (loaded with "
                       "StarDist2D.from_pretrained; needs its weights downloaded once)")
            continue
        prob = seg.prob_thresh if seg.prob_thresh is not None else info["prob"]
        nms = seg.nms_thresh if seg.nms_thresh is not None else info["nms"]
        trained = (f"works at {info['mpp']} um/px" if info["mpp"] else
                   "trained without a pixel size, run at the working resolution")
        kind = KIND_NAMES.get(info["kind"], info["kind"] or "unknown kind of")
        typer.echo(f"{head}\n     folder {info['folder']} (weights sha256 {info['sha256'][:12]})"
                   f"\n     {kind} model, {trained}, prob {prob:.3f},"
                   f" nms {nms:.2f}, precision {seg.precision} ({INT8_STATES[info['int8']]})"
                   f"\n     card {info['card'] or 'none (no MODEL_CARD.md)'}")
        if seg.precision == "int8" and info["int8"] != "yes":
            missing += 1
            typer.secho(f"     precision int8 is set but {INT8_STATES[info['int8']]}",
                        fg=typer.colors.RED)
    if missing:
        raise typer.Exit(code=1)


@slides_app.command("features")
def slides_features(
    out: Path = typer.Argument(..., help="Run folder of 'hccbio slides run'."),
    config: Path | None = typer.Option(None, "--config", help="pathology YAML (panels, "
                                       "regions, spatial sections)."),
) -> None:
    """Recompute phenotypes, regions and slide features from cells.parquet (no segmentation)."""
    from pathology.config import ConfigError, load_config
    from pathology.run.tables import DICTIONARY_FILE, RUN_FEATURES_FILE, run_features

    try:
        cfg = load_config(config)
    except ConfigError as error:
        _fail(str(error))
    if not RunFolder(out).slides.is_dir():
        _fail(f"{out}: no slides/ folder (run 'hccbio slides run' first)")
    statuses = run_features(out, config=cfg)
    for s in statuses:
        typer.echo(f"{s.sample_id:24s} {s.status:8s} {s.reason}")
    typer.echo(f"{sum(s.status == 'done' for s in statuses)} of {len(statuses)} slides; "
               f"table: {out / RUN_FEATURES_FILE}, dictionary: {out / DICTIONARY_FILE}")
    if any(s.status == "failed" for s in statuses):
        raise typer.Exit(code=1)


@slides_app.command("qc")
def slides_qc(
    out: Path = typer.Argument(..., help="Run folder of 'hccbio slides run'."),
    config: Path | None = typer.Option(None, "--config", help="pathology YAML (qc section)."),
) -> None:
    """Slide QC of every finished slide: qc/ folders, OUT/qc/qc_summary.csv and index.html."""
    from pathology.config import ConfigError, load_config
    from pathology.run.qc_summary import write_qc_summary
    from pathology.run.review_log import ReviewError
    from pathology.run.tables import run_qc

    try:
        cfg = load_config(config)
    except ConfigError as error:
        _fail(str(error))
    if not RunFolder(out).slides.is_dir():
        _fail(f"{out}: no slides/ folder (run 'hccbio slides run' first)")
    statuses = run_qc(out, config=cfg)
    try:
        summary = write_qc_summary(out)
    except ReviewError as error:  # every slide's QC is saved; the summary needs the log
        _fail(str(error))
    for sample_id, status in statuses.items():
        typer.echo(f"{sample_id:24s} {status}")
    typer.echo(f"{len(statuses)} slide(s); summary: {summary}, page: "
               f"{summary.with_name('index.html')}")
    if any(s.startswith("failed") for s in statuses.values()):
        raise typer.Exit(code=1)


@slides_app.command("export")
def slides_export(
    out: Path = typer.Argument(..., help="Run folder of 'hccbio slides run'."),
    sample: list[str] = typer.Option([], "--sample", help="Only these sample ids (repeat)."),
) -> None:
    """Each slide's cells as AnnData (slides/<id>/cells.h5ad, obsm['spatial'] in um) for
    squidpy, scimap or scanpy."""
    from pathology.io.export import ExportError, export_anndata

    if not RunFolder(out).slides.is_dir():
        _fail(f"{out}: no slides/ folder (run 'hccbio slides run' first)")
    ids = sample or [s.sample_id for s in RunFolder(out).slide_folders(having=CELLS)]
    failed = 0
    for sample_id in ids:
        try:
            typer.echo(f"{sample_id:24s} {export_anndata(RunFolder(out).slide(sample_id).root)}")
        except (ExportError, OSError, ValueError) as error:
            failed += 1
            typer.echo(f"{sample_id:24s} failed: {' '.join(str(error).split())}")
    if failed or not ids:
        raise typer.Exit(code=1)


@slides_app.command("register")
def slides_register(
    moving: Path = typer.Argument(..., help="Image to map (slide, or plain RGB image)."),
    fixed: Path = typer.Argument(..., help="Reference image (e.g. the block's H&E)."),
    out: Path = typer.Option(..., "--out", help="Folder for registration.json and "
                             "registration.png (created)."),
    config: Path | None = typer.Option(None, "--config", help="pathology YAML "
                                       "(registration, tissue, slide sections)."),
    moving_mpp: float | None = typer.Option(None, "--moving-mpp", help="Level-0 um/px of "
                                            "MOVING if its file lacks it."),
    fixed_mpp: float | None = typer.Option(None, "--fixed-mpp", help="Level-0 um/px of FIXED "
                                           "if its file lacks it."),
) -> None:
    """Align MOVING onto FIXED at low resolution (rigid, affine, B-spline); flag a poor fit."""
    from pathology.config import ConfigError, load_config
    from pathology.registration import RegistrationInputError
    from pathology.registration.record import register_to_folder

    try:
        cfg = load_config(config)
        record = register_to_folder(moving, fixed, out, config=cfg, moving_mpp=moving_mpp,
                                    fixed_mpp=fixed_mpp)
    except (ConfigError, RegistrationInputError) as error:
        _fail(str(error))
    final = next(s for s in reversed(record["stages"]) if s["kept"])
    typer.echo(f"{record['status']}: {final['name']} transform, tissue Dice {final['dice']:.3f}, "
               f"NMI {final['nmi']:.3f}, {record['seconds']:.1f}s; "
               f"{out / 'registration.json'}, figure {out / 'registration.png'}")
    for reason in record["reasons"]:
        typer.echo(f"  flagged: {reason}")
    if record["status"] != "pass":
        raise typer.Exit(code=1)


@slides_app.command("map-points")
def slides_map_points(
    registration: Path = typer.Argument(..., help="registration.json of 'slides register'."),
    points: Path = typer.Argument(..., help="CSV with columns x, y (level-0 px of MOVING)."),
    out: Path = typer.Option(..., "--out", help="Output CSV: x, y in level-0 px of FIXED, "
                             "other columns kept."),
    allow_flagged: bool = typer.Option(False, "--allow-flagged", help="Use a registration "
                                       "that failed its checks."),
) -> None:
    """Map points of the moving image onto the fixed image through a stored registration."""
    from pathology.registration import RegistrationInputError, map_points_csv

    try:
        n = map_points_csv(registration, points, out, allow_flagged=allow_flagged)
    except RegistrationInputError as error:
        _fail(str(error))
    typer.echo(f"{n} point(s) mapped: {out}")


@rnaseq_app.command("run")
def rnaseq_run(
    manifest: Path = typer.Argument(..., help="Study manifest (samples.csv)."),
    out: Path = typer.Option(..., "--out", help="Run folder (created if needed)."),
    config: Path | None = typer.Option(None, "--config", help="transcriptome YAML "
                                       "(default: configs/transcriptome.yaml)."),
) -> None:
    """Normalise and score every RNA-seq sample (rnaseq rows) of a manifest."""
    from transcriptome.cli import DEFAULT_CONFIG
    from transcriptome.config import ConfigError
    from transcriptome.config import load_config as load_rnaseq_config
    from transcriptome.errors import ExpressionError
    from transcriptome.pipeline import RnaseqRecord, run_transcriptome

    _check_out(out)
    try:
        samples = read_manifest(manifest)
        cfg = load_rnaseq_config(config or DEFAULT_CONFIG)
    except (ManifestError, ConfigError) as error:
        _fail(str(error))
    records = [RnaseqRecord(s.sample_id, s.path) for s in samples if s.modality == "rnaseq"]
    if not records:
        _fail(f"{manifest}: no rnaseq rows")
    from hcccore.lock import RunFolderError, RunLockedError
    from hcccore.sample_features import SampleFeaturesError

    try:
        result = run_transcriptome(records, out, config=cfg)
    except (ExpressionError, RunLockedError, RunFolderError, SampleFeaturesError) as error:
        _fail(str(error))
    for note in result.notes:
        typer.echo(f"note: {note}")
    for row in result.batch.itertuples():
        typer.echo(f"{row.sample_id:24s} {row.status:8s} {row.seconds:8.2f}s  {row.reason}")
    typer.echo(f"{len(records) - len(result.failed)} of {len(records)} RNA-seq samples done; "
               f"report: {out / 'batch_report.csv'}")
    if result.failed:
        raise typer.Exit(code=1)


@blood_app.command("run")
def blood_run(
    manifest: Path = typer.Argument(..., help="Study manifest (samples.csv)."),
    out: Path = typer.Option(..., "--out", help="Run folder (created if needed)."),
    config: Path | None = typer.Option(None, "--config", help="blood YAML "
                                       "(default: configs/blood.yaml)."),
) -> None:
    """Process every blood sample (flow, elisa, scrna rows) of a manifest."""
    from blood.batch import BloodJob, run_blood
    from blood.config import load_config as load_blood_config
    from blood.errors import ConfigError as BloodConfigError
    from integration.manifest import BLOOD_MODALITIES

    _check_out(out)
    try:
        samples = read_manifest(manifest)
        cfg = load_blood_config(config)
    except (ManifestError, BloodConfigError) as error:
        _fail(str(error))
    jobs = [BloodJob(s.sample_id, s.modality, s.stain, s.path)
            for s in samples if s.modality in BLOOD_MODALITIES]
    if not jobs:
        _fail(f"{manifest}: no blood rows (modality {', '.join(BLOOD_MODALITIES)})")
    from hcccore.lock import RunFolderError, RunLockedError
    from hcccore.sample_features import SampleFeaturesError

    try:
        result = run_blood(jobs, out, config=cfg)
    except (RunLockedError, RunFolderError, SampleFeaturesError) as error:
        _fail(str(error))
    for note in result.notes:
        typer.echo(f"note: {note}")
    for row in result.batch.itertuples():
        typer.echo(f"{row.sample_id:24s} {row.status:8s} {row.seconds:8.2f}s  {row.reason}")
    typer.echo(f"{len(jobs) - len(result.failed)} of {len(jobs)} blood samples done; "
               f"report: {out / 'batch_report.csv'}")
    if result.failed:
        raise typer.Exit(code=1)


@app.command("integrate")
def integrate_cmd(
    manifest: Path = typer.Argument(..., help="Study manifest (samples.csv)."),
    out: Path = typer.Option(..., "--out", help="Run folder holding the arms' *_features.csv."),
) -> None:
    """Merge the arms' feature tables into features.csv/.parquet/.dta and data_dictionary.csv."""
    from hcccore.batch_report import BatchReportError
    from hcccore.lock import RunFolderError, RunLockedError
    from integration.arms import FeatureTableError
    from integration.integrate import run_integration
    from integration.review import ReviewError

    _check_out(out)
    try:
        table = run_integration(manifest, out)
    except (ManifestError, FeatureTableError, ReviewError, RunLockedError,
            RunFolderError, BatchReportError) as error:
        _fail(str(error))
    for note in table.notes:
        typer.echo(f"note: {note}")
    counts = table.counts
    typer.echo(f"{counts['samples_used']} of {counts['manifest_samples']} samples used "
               f"({counts['samples_rejected_qc']} rejected at QC review, "
               f"{counts['slides_not_reviewed']} slide(s) not yet reviewed); "
               f"{counts['patient_timepoints']} patient x time point rows: {out / 'features.csv'}")


@app.command("analyze")
def analyze_cmd(
    features: Path = typer.Option(..., "--features", help="Merged features.csv (or .parquet)."),
    clinical: Path = typer.Option(..., "--clinical", help="Clinical table (clinical.csv)."),
    out: Path = typer.Option(..., "--out", help="Output folder (analysis/ and report.html)."),
    config: Path | None = typer.Option(None, "--config", help="Study YAML; its 'analysis' "
                                       "section is used (default: built-in defaults)."),
) -> None:
    """Survival, response, change and subtype analyses with the study report."""
    from integration.analyze import REPORT_FILE, run_analysis
    from integration.clinical import ClinicalError
    from integration.config import ConfigError, load_analysis_config
    from integration.frame import AnalysisInputError

    _check_out(out)
    try:
        result = run_analysis(features, clinical, out, config=load_analysis_config(config))
    except (ConfigError, ClinicalError, AnalysisInputError) as error:
        _fail(str(error))
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"{len(result.data.variables)} variables, {len(result.data.clinical.data)} "
               f"patients; tables: {out / 'analysis'}, report: {out / REPORT_FILE}")


study_app = typer.Typer(no_args_is_help=True, help="A whole study from one YAML.")
app.add_typer(study_app, name="study")


@study_app.command("run")
def study_run(
    study: Path = typer.Argument(..., help="Study YAML (sections 'study' and 'analysis', "
                                 "e.g. configs/study.yaml)."),
    force: bool = typer.Option(False, "--force", help="Recompute finished slides."),
    quiet: bool = typer.Option(False, "--quiet", help="No live progress; log lines only."),
) -> None:
    """Slides, blood, RNA-seq, integration and analysis of a study, into its 'out' folder."""
    from integration.study import StudyError, run_study

    configure_logging()
    try:
        summary = run_study(study, force=force, show_progress=not quiet)
    except StudyError as error:
        _fail(str(error))
    for arm, counts in summary["arms"].items():
        typer.echo(f"{arm:16s} {counts}")
    for arm, place in summary["where"].items():
        typer.echo(f"{arm:16s} ran {place}")
    for key in ("batch_report", "features", "data_dictionary", "report", "qc"):
        typer.echo(f"{key:16s} {summary.get(key) or '-'}")
    if summary["failed"]:
        typer.echo(f"{len(summary['failed'])} sample(s) failed; reasons in "
                   f"{summary['batch_report']}")
        raise typer.Exit(code=1)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
