"""Read FCS 2.0 / 3.0 / 3.1 files from any instrument into a FlowKit ``Sample``.

flowio parses the file; this module only handles the quirks it refuses or leaves undone:
a DATA offset that is off by one (retried with ``ignore_offset_error``, recorded) and integer
data with a width other than 8/16/32 bits (e.g. 24-bit Cytek xP5 files), decoded here from the
DATA segment and handed back to flowio for its standard preprocessing (gain, log, timestep).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import flowio
import numpy as np
from flowkit import Sample

from blood.errors import BloodInputError


@dataclass(frozen=True)
class FcsFile:
    """An FCS file read into FlowKit.

    Attributes
    ----------
    path
        The file read.
    sample
        FlowKit sample (raw events preprocessed as the FCS standard says).
    version
        FCS version from the header ("2.0", "3.0", "3.1").
    quirks
        Irregularities met and worked around, in words (empty for a clean file).
    """

    path: Path
    sample: Sample
    version: str
    quirks: tuple[str, ...] = field(default=())

    @property
    def event_count(self) -> int:
        """Number of events."""
        return int(self.sample.event_count)

    @property
    def channels(self) -> list[str]:
        """Channel names ($PnN)."""
        return list(self.sample.pnn_labels)


def read_fcs(path: str | Path, *, sample_id: str | None = None) -> FcsFile:
    """Read one FCS file, working around known writer quirks.

    Parameters
    ----------
    path
        FCS 2.0, 3.0 or 3.1 file.
    sample_id
        Identifier given to the FlowKit sample; default: the file name (FlowJo convention).

    Returns
    -------
    FcsFile
        The sample and the quirks met.

    Raises
    ------
    BloodInputError
        Missing file, or a file flowio cannot parse even with the workarounds.

    Examples
    --------
    >>> fcs = read_fcs("100715.fcs")  # doctest: +SKIP
    >>> fcs.event_count, len(fcs.channels)  # doctest: +SKIP
    (65016, 16)
    """
    path = Path(path)
    if not path.is_file():
        raise BloodInputError(f"{path}: FCS file not found")
    quirks: list[str] = []
    with warnings.catch_warnings():
        # flowio warns about non-standard widths; we detect that case ourselves below
        warnings.simplefilter("ignore", UserWarning)
        try:
            data = flowio.FlowData(str(path))
        except flowio.exceptions.FCSParsingError as error:
            if "offset" not in str(error).lower():
                raise BloodInputError(f"{path}: not a readable FCS file ({error})") from error
            try:
                data = flowio.FlowData(str(path), ignore_offset_error=True)
            except Exception as retry_error:  # noqa: BLE001 - report flowio's reason
                raise BloodInputError(f"{path}: not a readable FCS file ({retry_error})") \
                    from retry_error
            quirks.append(f"data offset error ignored ({error})")
        except Exception as error:  # noqa: BLE001 - flowio raises plain errors on bad bytes
            raise BloodInputError(f"{path}: not a readable FCS file ({error})") from error
    if data.events is None:
        data.events = _decode_odd_width_integers(path, data)
        quirks.append("integer data of non-standard bit width decoded")
    expected = int(data.text.get("tot", data.event_count))
    try:
        sample = Sample(data, sample_id=sample_id or path.name)
    except Exception as error:  # noqa: BLE001
        raise BloodInputError(f"{path}: FlowKit cannot build a sample ({error})") from error
    if sample.event_count != expected:
        raise BloodInputError(f"{path}: $TOT says {expected} events but {sample.event_count} "
                              "were read (truncated file?)")
    return FcsFile(path=path, sample=sample, version=str(data.version), quirks=tuple(quirks))


def _decode_odd_width_integers(path: Path, data: flowio.FlowData) -> np.ndarray:
    """Decode $DATATYPE=I with a uniform width that is a whole number of bytes (e.g. 24 bits)."""
    text = data.text
    if text.get("datatype", "").upper() != "I":
        raise BloodInputError(f"{path}: flowio returned no events for $DATATYPE="
                              f"{text.get('datatype')!r}")
    n_par = int(text["par"])
    widths = {int(text[f"p{i}b"]) for i in range(1, n_par + 1)}
    if len(widths) != 1 or next(iter(widths)) % 8:
        raise BloodInputError(f"{path}: integer widths {sorted(widths)} bits are not supported "
                              "(mixed or not whole bytes)")
    width = next(iter(widths)) // 8
    start = int(text.get("begindata", 0)) or data.header["data_start"]
    order = text.get("byteord", "1,2,3,4").replace(" ", "")
    big_endian = order.startswith("4") or order.startswith(str(width))
    n_events = int(text["tot"])
    with path.open("rb") as handle:
        handle.seek(start)
        raw = np.frombuffer(handle.read(n_events * n_par * width), dtype=np.uint8)
    if raw.size != n_events * n_par * width:
        raise BloodInputError(f"{path}: DATA segment holds {raw.size} bytes, "
                              f"{n_events * n_par * width} expected")
    raw = raw.reshape(-1, width).astype(np.uint64)
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(8)
    if big_endian:
        shifts = shifts[::-1]
    values = (raw << shifts).sum(axis=1).reshape(n_events, n_par)
    # FCS 3.0: bits above the next power of two of $PnR are to be ignored
    ranges = np.array([float(text[f"p{i}r"]) for i in range(1, n_par + 1)])
    masks = (2 ** np.ceil(np.log2(np.maximum(ranges, 1)))).astype(np.uint64) - np.uint64(1)
    return (values & masks).astype(np.float64).ravel()
