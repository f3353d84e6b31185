"""What plate and xPONENT analysis share: the quantified plate (:class:`PlateResult`), one
analyte's curve under the config's checks (:func:`quantify_analyte`) and its ``curves.csv`` row
(:func:`curve_row`), and an analyte's feature key (:func:`analyte_key`).

:mod:`blood.elisa.pipeline` (plate exports with a layout) and :mod:`blood.elisa.multiplex`
(Luminex xPONENT exports) both import this module; it imports neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from blood.config import ANALYTE_KEY, ElisaConfig
from blood.elisa.quantify import CurveRejected, Quantified, quantify
from blood.errors import BloodInputError

CONCENTRATION_COLUMNS = ("sample_id", "analyte", "dilution", "response", "cv_pct",
                         "concentration", "flag", "cv_flag", "bead_flag", "lloq", "uloq")
CURVES_FILE = "curves.csv"
NO_CURVE = "no curve"  # flag of a sample whose analyte's curve failed
#: the config key to change for each failed curve check
CHECK_KEYS = {"flat": "elisa.min_curve_span", "non_monotonic": "elisa.min_curve_tau",
              "recovery": "elisa.recovery_window, elisa.min_recovering_standards"}


@dataclass(frozen=True)
class PlateResult:
    """A quantified plate.

    Attributes
    ----------
    path, layout
        Plate export and the layout file used.
    concentrations
        One row per sample, dilution and analyte (:data:`CONCENTRATION_COLUMNS`);
        concentrations are in the sample (dilution applied).
    standards
        One row per analyte and standard level (recovery, used).
    method
        Data-dictionary text of how the concentrations were obtained.
    samples_hint
        Ends the error when a manifest sample is not on the plate ("layout FILE", or the
        plate's sample names and how to map them).
    failed
        Analytes whose standard curve failed -> the reason (they have no concentrations).
    """

    path: Path
    layout: Path
    concentrations: pd.DataFrame
    standards: pd.DataFrame
    method: str = ""
    samples_hint: str = ""
    failed: dict[str, str] = field(default_factory=dict)


def quantify_analyte(wells: pd.DataFrame, config: ElisaConfig, *, path: str | Path,
                     analyte: str, **options: Any) -> tuple[Quantified | None, str]:
    """:func:`~blood.elisa.quantify.quantify` one analyte under the config's curve checks.

    Parameters
    ----------
    wells
        The analyte's well table.
    config
        ELISA config (recovery window, CV limit, below rule and curve checks).
    path, analyte
        Named in the reason of a failed curve.
    **options
        Passed on to ``quantify`` (``model``, ``weight_power``, ``weight_floor``,
        ``exclusion``).

    Returns
    -------
    tuple
        ``(result, "")``, or ``(None, reason)`` when the curve cannot be fitted or does not
        fit its standards; the reason names the file, the analyte, what was wrong and the
        config key.
    """
    try:
        return quantify(wells, recovery_window=config.recovery_window,
                        max_cv_pct=config.max_cv_pct, below_rule=config.below_rule,
                        min_span=config.min_curve_span, min_tau=config.min_curve_tau,
                        min_recovering=config.min_recovering_standards, **options), ""
    except CurveRejected as error:
        return None, (f"{path}: analyte {analyte!r}: {error}; no concentrations reported "
                      f"from this curve (thresholds: {CHECK_KEYS[error.check]})")
    except ValueError as error:
        return None, f"{path}: analyte {analyte!r}: {error}"


def curve_row(analyte: str, key: str, result: Quantified | None,
              reason: str) -> dict[str, object]:
    """One ``curves.csv`` row: the analyte's curve, fitted or failed and why."""
    row: dict[str, object] = {"analyte": analyte, "key": key,
                              "status": "failed" if result is None else "fitted",
                              "reason": reason}
    if result is not None:
        curve, std = result.curve, result.standards
        row.update(model=curve.model, a=curve.a, b=curve.b, c=curve.c, d=curve.d, g=curve.g,
                   rss=curve.rss, lloq=result.lloq, uloq=result.uloq,
                   n_levels=int((std["concentration"] > 0).sum()),
                   n_in_range=int(std["in_range"].sum()))
    return row


def analyte_key(name: str, config: ElisaConfig, *, path: str | Path = "") -> str:
    """Feature key of an analyte: configured, or lowercase alphanumerics ('IL-6' -> 'il6').

    Raises
    ------
    BloodInputError
        The derived key is not a valid name part; map it in ``elisa.analytes``.
    """
    key = config.analytes.get(name) or re.sub(r"[^a-z0-9]", "", name.lower())
    if not ANALYTE_KEY.match(key):
        raise BloodInputError(f"{path}: analyte {name!r} gives no valid feature key ({key!r}); "
                              "map it in elisa.analytes (e.g. {'" + name + "': il6})")
    return key
