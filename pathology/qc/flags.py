"""QC flags: each compares one metric with a configured threshold and says why it fired."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pathology.config import QcSection

FLAG_NAMES = ("focus", "pen", "dark", "bright", "stain", "nuclei_density", "nuclear_area",
              "counterstain")
COUNTERSTAIN_REASON = "counterstain too pale for reliable negative counts"


@dataclass(frozen=True)
class Flag:
    """One QC check.

    Attributes
    ----------
    name
        One of :data:`FLAG_NAMES`.
    fired
        Whether the slide fails this check.
    value
        The measured value (``None`` when the check does not apply).
    threshold
        The configured limit, with its config key.
    reason
        Plain-language explanation (why it fired, or why it passed / did not apply).
    """

    name: str
    fired: bool
    value: float | None
    threshold: str
    reason: str

    def to_json(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def _above(name: str, value: float | None, limit: float, key: str, what: str,
           detail: str = "") -> Flag:
    if value is None:
        return Flag(name, False, None, f"{key} = {limit:g}", f"{what}: not applicable")
    fired = value > limit
    sign = ">" if fired else "<="
    extra = f" ({detail})" if detail else ""
    return Flag(name, fired, float(value), f"{key} = {limit:g}",
                f"{what} {value:.4g} {sign} {limit:g} ({key}){extra}")


def _below(name: str, value: float | None, limit: float, key: str, what: str,
           consequence: str) -> Flag:
    if value is None:
        return Flag(name, False, None, f"{key} = {limit:g}", f"{what}: not applicable")
    fired = value < limit
    sign = "<" if fired else ">="
    because = f": {consequence}" if fired else ""
    return Flag(name, fired, float(value), f"{key} = {limit:g}",
                f"{what} {value:.4g} {sign} {limit:g} ({key}){because}")


def _outside(name: str, value: float | None, bounds: tuple[float, float], key: str,
             what: str) -> Flag:
    low, high = bounds
    if value is None:
        return Flag(name, False, None, f"{key} = [{low:g}, {high:g}]",
                    f"{what}: not applicable")
    fired = not (low <= value <= high)
    where = "below" if value < low else "above" if value > high else "within"
    return Flag(name, fired, float(value), f"{key} = [{low:g}, {high:g}]",
                f"{what} {value:.4g} is {where} the expected range [{low:g}, {high:g}] "
                f"({key})")


def evaluate_flags(metrics: dict, *, kind: str, config: QcSection,
                   modality: str | None = None) -> list[Flag]:
    """All QC checks of a slide from its metrics (see :func:`pathology.qc.metrics.slide_qc`).

    Parameters
    ----------
    metrics
        The ``metrics`` mapping of ``qc.json``.
    kind
        ``"brightfield"`` or ``"fluorescence"`` (pen, dark, bright and hematoxylin checks
        apply to brightfield only; saturation to fluorescence).
    config
        The ``qc`` section (thresholds).
    modality
        ``he``, ``ihc`` or ``mif``: the counterstain check applies to ``ihc`` only.

    Returns
    -------
    list of Flag
        One per name in :data:`FLAG_NAMES`, in that order.
    """
    brightfield = kind == "brightfield"
    focus = metrics["focus"]
    flags = [_above("focus", focus["out_of_focus_fraction"], config.focus_max_fraction,
                    "qc.focus_max_fraction", "out-of-focus fraction of tissue tiles",
                    f"{focus['tiles_blurred']} of {focus['tiles_scored']} tiles with variance "
                    f"of the Laplacian < {config.focus_min_laplacian_var:g}")]
    artefacts = metrics["artefacts"]
    for name, key, what in (("pen", "pen_max_fraction", "pen-ink fraction of tissue"),
                            ("dark", "dark_max_fraction", "fold / very dark fraction of tissue"),
                            ("bright", "bright_max_fraction", "bubble / bright fraction of "
                             "tissue")):
        value = artefacts[name]["fraction"] if brightfield else None
        flags.append(_above(name, value, getattr(config, key), f"qc.{key}", what))
    stain = metrics["stain"]
    if brightfield:
        median = stain.get("hematoxylin", {}).get("p50")
        flags.append(_outside("stain", median, config.hematoxylin_median_od_range,
                              "qc.hematoxylin_median_od_range",
                              "median hematoxylin OD of clean tissue"))
    else:
        saturated = stain.get("saturated_fraction", {})
        worst = max(saturated, key=saturated.get) if saturated else None
        flags.append(_above("stain", saturated[worst] if worst else None,
                            config.saturated_max_fraction, "qc.saturated_max_fraction",
                            f"saturated fraction of tissue pixels in channel {worst}"))
    nuclei = metrics["nuclei"]
    flags.append(_outside("nuclei_density", nuclei.get("density_per_mm2"),
                          config.nuclei_density_range, "qc.nuclei_density_range",
                          "nuclei per mm^2 of clean tissue"))
    flags.append(_outside("nuclear_area", nuclei.get("median_area_um2"),
                          config.nuclear_area_range_um2, "qc.nuclear_area_range_um2",
                          "median nuclear area (um^2)"))
    flags.append(_counterstain(metrics, modality, config.counterstain_min_contrast))
    return flags


def _counterstain(metrics: dict, modality: str | None, limit: float) -> Flag:
    """IHC: the counterstain check. Nuclei found but none DAB-negative also fires it: a pale
    counterstain hides exactly those nuclei (an index of 100 % is the symptom)."""
    key, what = "qc.counterstain_min_contrast", ("hematoxylin OD contrast of DAB-negative "
                                                 "nuclei over their rings")
    counterstain = metrics.get("counterstain") or {}
    n_nuclei = (metrics.get("nuclei") or {}).get("n") or 0
    if modality == "ihc" and counterstain.get("n_dab_negative") == 0 and n_nuclei > 0:
        return Flag("counterstain", True, None, f"{key} = {limit:g}",
                    f"no DAB-negative nucleus among {n_nuclei} nuclei: {COUNTERSTAIN_REASON} "
                    "(or a stain without counterstain)")
    contrast = counterstain.get("contrast") if modality == "ihc" else None
    return _below("counterstain", contrast, limit, key, what, COUNTERSTAIN_REASON)
