"""Is a registration good enough to use? Checks that each say why they fired.

A registration whose checks fire is *flagged*: it is stored and shown in QC, but nothing
(regions carried across, ``hccbio slides map-points``) uses it unless told to.
"""

from __future__ import annotations

import math

from pathology.config import RegistrationSection
from pathology.qc.flags import Flag
from pathology.registration.align import Alignment

CHECK_NAMES = ("tissue", "dice", "nmi", "scale", "anisotropy", "converged")


# A registration check has the shape of a QC flag, so QC shows it like any other.
Check = Flag


def evaluate(alignment: Alignment, *, moving_tissue: float, fixed_tissue: float,
             physical: bool, config: RegistrationSection) -> list[Check]:
    """Every check of a registration.

    Parameters
    ----------
    alignment
        From :func:`pathology.registration.align.align`.
    moving_tissue, fixed_tissue
        Tissue fraction of each view.
    physical
        Whether both images have a pixel size (the absolute scale check applies only then).
    config
        The ``registration`` section.

    Returns
    -------
    list of Check
        One per name in :data:`CHECK_NAMES`, in that order.
    """
    final = next(s for s in reversed(alignment.stages) if s.kept)
    sim = final.similarity
    checks = []
    least = min(moving_tissue, fixed_tissue)
    checks.append(Check("tissue", least < 0.001, float(least), "tissue fraction >= 0.001",
                        f"tissue fraction of the views {moving_tissue:.3g} (moving), "
                        f"{fixed_tissue:.3g} (fixed)" + ("; one has no tissue to register"
                                                          if least < 0.001 else "")))
    checks.append(Check("dice", sim.dice < config.min_dice, sim.dice,
                        f"registration.min_dice = {config.min_dice:g}",
                        f"tissue-mask Dice after registration {sim.dice:.3f} "
                        f"{'<' if sim.dice < config.min_dice else '>='} {config.min_dice:g}"
                        + (": the tissues do not overlap (different tissue, or a failed fit)"
                           if sim.dice < config.min_dice else "")))
    checks.append(Check("nmi", sim.nmi < config.min_nmi, sim.nmi,
                        f"registration.min_nmi = {config.min_nmi:g}",
                        f"normalised mutual information after registration {sim.nmi:.3f} "
                        f"{'<' if sim.nmi < config.min_nmi else '>='} {config.min_nmi:g}"
                        + (": the tissue structures do not correspond (different tissue?)"
                           if sim.nmi < config.min_nmi else "")))
    large, small = alignment.transform.singular_values()
    scale = math.sqrt(large * small)
    low, high = config.scale_range
    if physical:
        bad = not (low <= scale <= high)
        checks.append(Check("scale", bad, scale, f"registration.scale_range = [{low:g}, {high:g}]",
                            f"affine scale {scale:.3f} is "
                            f"{'outside' if bad else 'within'} [{low:g}, {high:g}]"
                            + (": sections do not shrink or grow that much" if bad else "")))
    else:
        checks.append(Check("scale", False, scale, f"registration.scale_range = [{low:g}, "
                            f"{high:g}]", f"affine scale {scale:.3f}: not checked (no pixel "
                            "size, so the images' scales may differ)"))
    anisotropy = large / small if small > 0 else math.inf
    bad = anisotropy > config.max_anisotropy
    checks.append(Check("anisotropy", bad, anisotropy if math.isfinite(anisotropy) else None,
                        f"registration.max_anisotropy = {config.max_anisotropy:g}",
                        f"stretch of one axis against the other {anisotropy:.3f} "
                        f"{'>' if bad else '<='} {config.max_anisotropy:g}"
                        + (": a degenerate transform" if bad else "")))
    affine = alignment.stage("affine")
    failed = affine is not None and affine.optimizer == "failed"
    limit = affine is not None and "Maximum number of iterations" in affine.optimizer
    checks.append(Check("converged", failed, float(affine.iterations) if affine else None,
                        f"registration.iterations = {config.iterations}",
                        "affine optimiser failed: " + affine.note if failed else
                        "affine optimiser at its iteration limit (not flagged by itself: the "
                        "Dice and NMI checks judge the fit)" if limit else
                        f"affine optimiser converged ({affine.optimizer if affine else '-'})"))
    return checks
