"""Acquisition QC: event count, flow-rate drift over time and margin (saturated) events.

Most checks only flag. The ``flow_events`` check fails a file with fewer events than
``flow.qc.fail_below_events``: an empty or aborted acquisition has no population to take a
percentage of (0 or 1 event gives 0 % or 100 %), so it must not reach the feature table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from flowkit import Sample


@dataclass(frozen=True)
class AcquisitionQc:
    """Acquisition quality of one FCS file.

    Attributes
    ----------
    events
        Events acquired.
    rate_cv
        Coefficient of variation of the event rate across equal time bins (NaN without a
        time channel).
    rate_drift
        Mean rate of the last third of the run minus the first third, relative to the
        overall mean (0.2 = the rate rose by 20%).
    margin_fraction
        Fraction of events at the top of the range ($PnR) of any scatter or fluorescence
        channel.
    flags
        Human-readable QC flags (empty = pass); the sample is still used.
    failures
        Human-readable QC failures: the sample gives no features.
    checks
        Check name -> "pass", "flag" or "fail" (``flow_events``: the event count).
    """

    events: int
    rate_cv: float
    rate_drift: float
    margin_fraction: float
    flags: tuple[str, ...] = field(default=())
    failures: tuple[str, ...] = field(default=())
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """Overall QC: fail (any failure), flag (any flag) or pass."""
        return "fail" if self.failures else "flag" if self.flags else "pass"

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON (with ``status``)."""
        data = asdict(self)
        data["flags"], data["failures"] = list(self.flags), list(self.failures)
        data["status"] = self.status
        return data


def acquisition_qc(sample: Sample, *, min_events: int = 5000, fail_below_events: int = 100,
                   time_bins: int = 20, max_rate_cv: float = 0.3, max_rate_drift: float = 0.3,
                   max_margin_fraction: float = 0.05) -> AcquisitionQc:
    """Measure acquisition quality: flags, and a failure for a (nearly) empty file.

    Parameters
    ----------
    sample
        FlowKit sample.
    min_events
        Fewer events are flagged.
    fail_below_events
        Fewer events fail the ``flow_events`` check (0 = never).
    time_bins
        Equal-duration bins of the time channel for the rate.
    max_rate_cv, max_rate_drift
        Flag thresholds for the event-rate CV and the absolute relative drift.
    max_margin_fraction
        Flag threshold for the fraction of margin events.

    Returns
    -------
    AcquisitionQc
    """
    raw = sample.get_events(source="raw")
    flags: list[str] = []
    failures: list[str] = []
    events = int(raw.shape[0])
    if events < fail_below_events:
        failures.append(f"{events} events < {fail_below_events} (flow.qc.fail_below_events): "
                        "an empty or aborted acquisition has no population to measure")
    elif events < min_events:
        flags.append(f"{events} events < {min_events}")
    checks = {"flow_events": "fail" if failures else "flag" if flags else "pass"}
    rate_cv = rate_drift = float("nan")
    if sample.time_index is not None and events > time_bins:
        time = raw[:, sample.time_index]
        if np.ptp(time) > 0:
            counts, _ = np.histogram(time, bins=time_bins)
            mean = counts.mean()
            rate_cv = float(counts.std() / mean)
            third = max(1, time_bins // 3)
            rate_drift = float((counts[-third:].mean() - counts[:third].mean()) / mean)
            if rate_cv > max_rate_cv:
                flags.append(f"event rate CV {rate_cv:.2f} > {max_rate_cv}")
            if abs(rate_drift) > max_rate_drift:
                flags.append(f"event rate drift {rate_drift:+.2f} beyond +/-{max_rate_drift}")
    channels = [*sample.scatter_indices, *sample.fluoro_indices]
    margin_fraction = 0.0
    if channels and events:
        table = sample.channels.iloc[channels]
        top = table["pnr"].to_numpy(dtype=float)
        decades = np.array([pne[0] for pne in table["pne"]], dtype=float)
        log0 = np.array([pne[1] or 1.0 for pne in table["pne"]], dtype=float)
        # log-amplified channels are linearised by flowio: their ceiling is log0 * 10^decades
        top = np.where(decades > 0, log0 * 10.0 ** decades, top)
        observed = raw[:, channels].max(axis=0)
        # a channel has margin events only when acquisition reached its ceiling (5% slack for
        # writers whose $PnR exceeds the ADC maximum, e.g. 262207 vs 262143.5)
        reached = observed >= 0.95 * top
        ceiling = np.minimum(top, observed) * (1 - 1e-9)
        at_margin = (raw[:, channels] >= ceiling) & reached
        margin_fraction = float(at_margin.any(axis=1).mean())
        if margin_fraction > max_margin_fraction:
            flags.append(f"margin events {margin_fraction:.1%} > {max_margin_fraction:.0%}")
    return AcquisitionQc(events, rate_cv, rate_drift, margin_fraction, tuple(flags),
                         tuple(failures), checks)
