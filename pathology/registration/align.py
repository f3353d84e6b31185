"""Align two low-resolution views: orientation search, rigid, affine, optional B-spline.

Every optimisation is SimpleITK's (ITK's v4 registration framework): Mattes mutual information
on the stain-independent signals (so H&E, IHC and fluorescence can be compared), sampled inside
the moving image's tissue, multi-resolution, with a regular-step gradient descent for the rigid
and affine stages and L-BFGS-B for the B-spline. Nothing here is a hand-written optimiser.

1. **Orientation search.** A section may lie on the glass rotated by any angle or upside
   down (flipped). Every flip x angle (``rigid_angle_step_deg`` apart) is tried with the tissue
   centroids superposed, and scored on a coarse grid by the tissue-mask Dice plus the
   normalised mutual information of the signals; the best ``rigid_candidates`` are refined.
2. **Rigid**: rotation + translation for each candidate (a flipped candidate is optimised on
   the moving view mirrored pixel by pixel); the best refined candidate (same score) is kept.
3. **Affine**: scale and shear on top (sections stretch, shrink and shear when cut and
   mounted).
4. **Non-rigid** (``nonrigid``): a cubic B-spline over a coarse grid; kept only if it improves
   the score without folding (the Jacobian determinant stays positive everywhere).

All stages map the moving image onto the fixed one; in SimpleITK's terms the moving slide is
the *fixed* image, because ITK's transforms map fixed-image points to moving-image points and
the pipeline needs moving -> reference (see :mod:`pathology.registration.transform`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from pathology.config import RegistrationSection
from pathology.registration.images import Overview
from pathology.registration.transform import BSplineField, Transform

SEED = 20240917  # metric sampling: same inputs, same transform
REGISTRATION_THREADS = 1  # ITK 5 balances work across threads dynamically: one is reproducible


@dataclass(frozen=True)
class Similarity:
    """How well the two tissues agree after mapping the fixed view onto the moving grid.

    Attributes
    ----------
    dice
        Dice coefficient of the tissue masks.
    ncc
        Pearson correlation of the signals over the union of the masks (stains may invert
        contrast: reported, not scored).
    nmi
        Normalised mutual information of the signals over the union of the masks,
        ``2 I(a; b) / (H(a) + H(b))`` in [0, 1] (stain-independent).
    coverage
        Fraction of the moving tissue that falls on fixed tissue.
    """

    dice: float
    ncc: float
    nmi: float
    coverage: float

    @property
    def score(self) -> float:
        """``dice + nmi`` (what the search and the stage choices maximise)."""
        return self.dice + self.nmi

    def to_json(self) -> dict:
        """Rounded JSON form."""
        return {"dice": round(self.dice, 4), "ncc": round(self.ncc, 4),
                "nmi": round(self.nmi, 4), "coverage": round(self.coverage, 4),
                "score": round(self.score, 4)}


@dataclass(frozen=True)
class Stage:
    """One stage's outcome."""

    name: str
    transform: Transform
    similarity: Similarity
    seconds: float
    optimizer: str = ""
    iterations: int = 0
    kept: bool = True
    note: str = ""

    def to_json(self) -> dict:
        """JSON form (without the transform, which the result stores once)."""
        return {"name": self.name, **self.similarity.to_json(), "seconds": round(self.seconds, 2),
                "optimizer": self.optimizer, "iterations": self.iterations, "kept": self.kept,
                "note": self.note}


@dataclass(frozen=True)
class Alignment:
    """The outcome of :func:`align`: the final transform and every stage."""

    transform: Transform
    stages: tuple[Stage, ...]
    candidates: tuple[dict, ...] = field(default_factory=tuple)
    min_jacobian: float | None = None

    def stage(self, name: str) -> Stage | None:
        """A stage by name (``initial``, ``search``, ``rigid``, ``affine``, ``nonrigid``)."""
        return next((s for s in self.stages if s.name == name), None)


# -- SimpleITK helpers ---------------------------------------------------------------------

def _image(array: np.ndarray, spacing: tuple[float, float]):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing((float(spacing[0]), float(spacing[1])))
    image.SetOrigin((0.5 * spacing[0], 0.5 * spacing[1]))  # pixel centres, level-0 convention
    return image


def _affine_of(transform) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``q = A p + b`` of an ITK matrix-offset transform."""
    a = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(2, 2)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    t = np.asarray(transform.GetTranslation(), dtype=np.float64)
    return a, t + c - a @ c


def _sitk_affine(matrix: np.ndarray, offset: np.ndarray, center: np.ndarray):
    import SimpleITK as sitk

    affine = sitk.AffineTransform(2)
    affine.SetCenter([float(v) for v in center])
    affine.SetMatrix([float(v) for v in matrix.ravel()])
    affine.SetTranslation([float(v) for v in offset + matrix @ center - center])
    return affine


def _centroid(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return np.array([mask.shape[1] * spacing[0] / 2, mask.shape[0] * spacing[1] / 2])
    return np.array([(cols.mean() + 0.5) * spacing[0], (rows.mean() + 0.5) * spacing[1]])


class _Pair:
    """The two views as SimpleITK images, at full registration resolution and coarse."""

    def __init__(self, moving: Overview, fixed: Overview, *, search_size_px: int) -> None:
        import SimpleITK as sitk

        self.moving, self.fixed = moving, fixed
        self.m_signal = _image(moving.signal.astype(np.float32), moving.spacing)
        self.f_signal = _image(fixed.signal.astype(np.float32), fixed.spacing)
        self.m_mask = _image(moving.mask.astype(np.uint8), moving.spacing)
        self.f_mask = _image(fixed.mask.astype(np.uint8), fixed.spacing)
        # The metric samples the moving tissue and a rim around it (the tissue border counts).
        rim = max(2, int(round(0.02 * max(moving.mask.shape))))
        sample = ndi.binary_dilation(moving.mask, iterations=rim) if moving.mask.any() else \
            np.ones(moving.mask.shape, bool)
        self.sample_mask = _image(sample.astype(np.uint8), moving.spacing)
        # The moving view mirrored left-right (exactly, by pixels) for flipped candidates:
        # ITK optimises the rigid transform on it, never through a mirroring initial transform.
        self.m_signal_mirrored = _image(moving.signal[:, ::-1].astype(np.float32),
                                        moving.spacing)
        self.sample_mask_mirrored = _image(sample[:, ::-1].astype(np.uint8), moving.spacing)
        self.width = moving.mask.shape[1] * moving.spacing[0]
        factor = max(1, int(math.ceil(max(moving.mask.shape + fixed.mask.shape)
                                      / search_size_px)))
        self.factor = factor
        shrink = [factor, factor]
        self.cm_signal = sitk.BinShrink(self.m_signal, shrink)
        self.cf_signal = sitk.BinShrink(self.f_signal, shrink)
        self.cm_mask = sitk.BinShrink(sitk.Cast(self.m_mask, sitk.sitkFloat32), shrink) > 0.5
        self.cf_mask = sitk.BinShrink(sitk.Cast(self.f_mask, sitk.sitkFloat32), shrink) > 0.5
        self.c_moving = _centroid(moving.mask, moving.spacing)
        self.c_fixed = _centroid(fixed.mask, fixed.spacing)

    def similarity(self, transform, *, coarse: bool = False) -> Similarity:
        """Map the fixed view onto the moving grid with ``transform`` and compare."""
        import SimpleITK as sitk

        m_signal, f_signal = ((self.cm_signal, self.cf_signal) if coarse
                              else (self.m_signal, self.f_signal))
        m_mask, f_mask = (self.cm_mask, self.cf_mask) if coarse else (self.m_mask, self.f_mask)
        warped = sitk.GetArrayFromImage(sitk.Resample(
            f_signal, m_signal, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        warped_mask = sitk.GetArrayFromImage(sitk.Resample(
            f_mask, m_mask, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
        mask = sitk.GetArrayFromImage(m_mask) > 0
        signal = sitk.GetArrayFromImage(m_signal)
        return similarity(mask, warped_mask, signal, warped)


def similarity(mask: np.ndarray, other_mask: np.ndarray, signal: np.ndarray,
               other_signal: np.ndarray, *, bins: int = 32) -> Similarity:
    """Dice of two masks; correlation and mutual information of two signals over their
    union; coverage of the first mask.

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True; signal = np.arange(16.0).reshape(4, 4)
    >>> s = similarity(a, a, signal, signal)
    >>> (s.dice, round(s.ncc, 6), round(s.nmi, 6), s.coverage)
    (1.0, 1.0, 1.0, 1.0)
    """
    mask, other_mask = np.asarray(mask, bool), np.asarray(other_mask, bool)
    total = int(mask.sum()) + int(other_mask.sum())
    both = int(np.count_nonzero(mask & other_mask))
    dice = 2.0 * both / total if total else 0.0
    union = mask | other_mask
    ncc = 0.0
    if union.sum() > 2:
        a = np.asarray(signal, np.float64)[union]
        b = np.asarray(other_signal, np.float64)[union]
        a, b = a - a.mean(), b - b.mean()
        denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        ncc = float((a * b).sum() / denominator) if denominator > 0 else 0.0
    nmi = _nmi(np.asarray(signal)[union], np.asarray(other_signal)[union], bins) \
        if union.sum() > 2 else 0.0
    coverage = both / int(mask.sum()) if mask.any() else 0.0
    return Similarity(float(dice), ncc, nmi, float(coverage))


def _nmi(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """``2 I(a; b) / (H(a) + H(b))`` from a joint histogram (0: independent, 1: one
    determines the other)."""
    edges = [np.unique(np.quantile(v, np.linspace(0, 1, bins + 1))) for v in (a, b)]
    if len(edges[0]) < 3 or len(edges[1]) < 3:
        return 1.0 if len(edges[0]) == len(edges[1]) else 0.0
    joint, _, _ = np.histogram2d(a, b, bins=edges)
    p = joint / joint.sum()
    pa, pb = p.sum(axis=1), p.sum(axis=0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    ha, hb, hab = entropy(pa), entropy(pb), entropy(p.ravel())
    return float(2 * (ha + hb - hab) / (ha + hb)) if ha + hb > 0 else 0.0


def _method(pair: _Pair, *, shrink: list[int], smooth: list[float], bins: int,
            sampling: float, mirrored: bool = False):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    # ITK splits the metric over threads and sums partial results in that order: a fixed
    # count gives the same transform on a laptop, a Dask worker or a cluster node.
    method.SetNumberOfThreads(REGISTRATION_THREADS)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, SEED)
    method.SetMetricFixedMask(pair.sample_mask_mirrored if mirrored else pair.sample_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(smooth)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _pyramid(pair: _Pair, finest: int) -> tuple[list[int], list[float]]:
    size = max(pair.moving.mask.shape)
    shrink = [f for f in (8, 4, 2, 1) if f >= finest and size / f >= 48] or [finest]
    return shrink, [max(0.0, math.log2(f)) for f in shrink]


def _run(method, pair: _Pair, *, mirrored: bool = False) -> tuple[str, int]:
    method.Execute(pair.m_signal_mirrored if mirrored else pair.m_signal, pair.f_signal)
    return method.GetOptimizerStopConditionDescription(), int(method.GetOptimizerIteration())


def _mirror(pair: _Pair, flipped: bool):
    """The left-right mirror of the moving view, ``x -> width - x`` (or the identity)."""
    import SimpleITK as sitk

    mirror = sitk.AffineTransform(2)
    if flipped:
        mirror.SetMatrix([-1.0, 0.0, 0.0, 1.0])
        mirror.SetTranslation([pair.width, 0.0])
    return mirror


def _candidate(pair: _Pair, flipped: bool, angle_deg: float):
    """``q = R (m(p) - m(c_moving)) + c_fixed`` with ``m`` the mirror (if flipped), as the
    SimpleITK transforms ``(euler, mirror)``: the candidate is ``euler(mirror(p))``."""
    import SimpleITK as sitk

    mirror = _mirror(pair, flipped)
    centre = np.asarray(mirror.TransformPoint([float(v) for v in pair.c_moving]))
    euler = sitk.Euler2DTransform()
    euler.SetCenter([float(v) for v in centre])
    euler.SetAngle(math.radians(angle_deg))
    euler.SetTranslation([float(v) for v in pair.c_fixed - centre])
    return euler, mirror


def _compose(outer, inner) -> Transform:
    """``outer(inner(p))`` of two matrix-offset transforms as a :class:`Transform`."""
    a1, b1 = _affine_of(inner)
    a2, b2 = _affine_of(outer)
    return Transform(a2 @ a1, a2 @ b1 + b2)


def _with_units(transform: Transform, pair: _Pair) -> Transform:
    return Transform(transform.matrix, transform.offset, pair.moving.source.unit_per_px,
                     pair.fixed.source.unit_per_px, transform.field)


def align(moving: Overview, fixed: Overview, *, config: RegistrationSection) -> Alignment:
    """Register ``moving`` onto ``fixed`` (both from :func:`~.images.read_overview`).

    Parameters
    ----------
    moving
        The view to map (e.g. an IHC slide).
    fixed
        The reference (e.g. the block's H&E), in the same physical units.
    config
        The ``registration`` section.

    Returns
    -------
    Alignment
        The final transform and every stage with its similarity.
    """
    import SimpleITK as sitk

    # Every ITK filter and metric on one thread, not only the optimiser: ITK 5's Mattes metric
    # keeps partial sums per thread while work units move between threads, so with the
    # default thread count two runs of one pair differed, and a sync run from a Dask run.
    if sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() != REGISTRATION_THREADS:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(REGISTRATION_THREADS)
    if moving.source.unit != fixed.source.unit:
        raise ValueError(f"{moving.source.path} is in {moving.source.unit}, "
                         f"{fixed.source.path} in {fixed.source.unit}: give both pixel sizes "
                         "or neither")
    pair = _Pair(moving, fixed, search_size_px=config.search_size_px)
    stages: list[Stage] = []
    identity = sitk.AffineTransform(2)
    stages.append(Stage("initial", _with_units(Transform(np.eye(2), np.zeros(2)), pair),
                        pair.similarity(identity), 0.0, note="no transform (unregistered)"))

    # 1. orientation search on the coarse grid
    started = time.perf_counter()
    scored = []
    angles = np.arange(0.0, 360.0, config.rigid_angle_step_deg)
    for flipped in (False, True) if config.allow_flip else (False,):
        for angle in angles:
            euler, mirror = _candidate(pair, flipped, float(angle))
            total = sitk.CompositeTransform([euler, mirror])  # euler(mirror(p))
            scored.append((pair.similarity(total, coarse=True).score, flipped, float(angle)))
    scored.sort(key=lambda item: -item[0])
    candidates = _distinct(scored, config.rigid_candidates, config.rigid_angle_step_deg)
    search_seconds = time.perf_counter() - started
    best_flip, best_angle = candidates[0][1], candidates[0][2]
    euler, mirror = _candidate(pair, best_flip, best_angle)
    stages.append(Stage("search", _with_units(_compose(euler, mirror), pair),
                        pair.similarity(sitk.CompositeTransform([euler, mirror])),
                        search_seconds, note=f"{len(scored)} orientations; best "
                        f"{'flipped, ' if best_flip else ''}{best_angle:g} deg"))

    # 2. rigid refinement of each candidate
    shrink, smooth = _pyramid(pair, 2)
    best = None
    failures: list[str] = []
    for _, flipped, angle in candidates:
        started = time.perf_counter()
        euler, mirror = _candidate(pair, flipped, angle)
        method = _method(pair, shrink=shrink, smooth=smooth, bins=config.histogram_bins,
                         sampling=config.sampling_fraction, mirrored=flipped)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=config.iterations,
            relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(euler, inPlace=True)
        try:
            stop, iterations = _run(method, pair, mirrored=flipped)
        except RuntimeError as error:  # ITK: the images stopped overlapping
            failures.append(f"{'flipped, ' if flipped else ''}{angle:g} deg: "
                            f"{_itk_message(error)}")
            continue
        transform = _compose(euler, mirror)
        score = pair.similarity(transform.to_sitk())
        stage = Stage("rigid", _with_units(transform, pair), score,
                      time.perf_counter() - started, stop, iterations,
                      note=f"from {'flipped, ' if flipped else ''}{angle:g} deg")
        if best is None or score.score > best.similarity.score:
            best = stage
    if best is None:  # every refinement failed: keep the search's answer, say so
        euler, mirror = _candidate(pair, best_flip, best_angle)
        transform = _with_units(_compose(euler, mirror), pair)
        best = Stage("rigid", transform, stages[-1].similarity, 0.0, "failed", 0, True,
                     "; ".join(failures))
    stages.append(best)

    # 3. affine
    started = time.perf_counter()
    shrink, smooth = _pyramid(pair, config.finest_shrink)
    affine = _sitk_affine(best.transform.matrix, best.transform.offset, pair.c_moving)
    method = _method(pair, shrink=shrink, smooth=smooth, bins=config.histogram_bins,
                     sampling=config.sampling_fraction)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-5, numberOfIterations=config.iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(affine, inPlace=True)
    try:
        stop, iterations = _run(method, pair)
        a, b = _affine_of(affine)
        affine_t = _with_units(Transform(a, b), pair)
        affine_sim = pair.similarity(affine_t.to_sitk())
        kept = affine_sim.score >= best.similarity.score - 1e-3
        note = "" if kept else "worse than rigid: rigid kept"
    except RuntimeError as error:
        affine_t, affine_sim, kept = best.transform, best.similarity, False
        stop, iterations, note = "failed", 0, f"failed: {_itk_message(error)}; rigid kept"
    stages.append(Stage("affine", affine_t, affine_sim, time.perf_counter() - started, stop,
                        iterations, kept, note))
    final = affine_t if kept else best.transform
    final_sim = affine_sim if kept else best.similarity

    # 4. non-rigid
    min_jacobian = None
    if config.nonrigid:
        started = time.perf_counter()
        try:
            field_t, stop, iterations, min_jacobian = _bspline(pair, final, config)
        except RuntimeError as error:
            field_t, stop, iterations = final, "failed", 0
            note, kept, field_sim = f"failed: {_itk_message(error)}", False, final_sim
        else:
            field_sim = pair.similarity(field_t.to_sitk())
            folds = min_jacobian is not None and min_jacobian <= config.min_jacobian
            gain = field_sim.score - final_sim.score
            kept = gain > config.nonrigid_min_gain and not folds
            note = (f"folds (Jacobian determinant {min_jacobian:.3g} <= "
                    f"{config.min_jacobian:g})" if folds else
                    f"score {'+' if gain >= 0 else ''}{gain:.4f}"
                    + ("" if kept else f" <= {config.nonrigid_min_gain:g}: affine kept"))
        stages.append(Stage("nonrigid", field_t, field_sim, time.perf_counter() - started,
                            stop, iterations, kept, note))
        if kept:
            final = field_t
    return Alignment(final, tuple(stages),
                     tuple({"flipped": f, "angle_deg": a, "coarse_score": round(s, 4)}
                           for s, f, a in candidates), min_jacobian)


def _itk_message(error: RuntimeError) -> str:
    """The last line of an ITK exception (the reason, without the C++ location)."""
    text = " ".join(str(error).split())
    return text.split("ITK ERROR:")[-1].split("):", 1)[-1].strip()[:200]


def _distinct(scored: list, n: int, step: float) -> list:
    """The best ``n`` candidates, skipping near-duplicates (same flip, neighbouring angle)."""
    chosen: list = []
    for item in scored:
        if any(item[1] == c[1] and min(abs(item[2] - c[2]), 360 - abs(item[2] - c[2]))
               <= step * 1.01 for c in chosen):
            continue
        chosen.append(item)
        if len(chosen) == n:
            break
    return chosen


def _bspline(pair: _Pair, affine: Transform, config: RegistrationSection
             ) -> tuple[Transform, str, int, float | None]:
    import SimpleITK as sitk

    rows, cols = pair.moving.mask.shape
    spacing = pair.moving.spacing
    extent = max(cols * spacing[0], rows * spacing[1])
    mesh = [max(1, int(round(cols * spacing[0] / extent * config.nonrigid_grid))),
            max(1, int(round(rows * spacing[1] / extent * config.nonrigid_grid)))]
    bspline = sitk.BSplineTransformInitializer(pair.m_signal, mesh, order=3)
    shrink, smooth = _pyramid(pair, config.finest_shrink)
    shrink, smooth = shrink[-2:], smooth[-2:]
    method = _method(pair, shrink=shrink, smooth=smooth, bins=config.histogram_bins,
                     sampling=config.sampling_fraction)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5,
                                numberOfIterations=config.iterations,
                                maximumNumberOfCorrections=5,
                                maximumNumberOfFunctionEvaluations=4 * config.iterations,
                                costFunctionConvergenceFactor=1e7)
    affine_sitk = affine.to_sitk()
    method.SetMovingInitialTransform(affine_sitk)
    method.SetInitialTransform(bspline, inPlace=True)
    stop, iterations = _run(method, pair)
    field = BSplineField.from_sitk(bspline)
    transform = Transform(affine.matrix, affine.offset, affine.moving_unit_per_px,
                          affine.fixed_unit_per_px, field)
    displacement = sitk.TransformToDisplacementField(
        bspline, sitk.sitkVectorFloat64, pair.m_signal.GetSize(), pair.m_signal.GetOrigin(),
        pair.m_signal.GetSpacing(), pair.m_signal.GetDirection())
    jacobian = sitk.GetArrayFromImage(
        sitk.DisplacementFieldJacobianDeterminant(displacement))
    return transform, stop, iterations, float(jacobian.min())
