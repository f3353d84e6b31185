"""Exceptions of the blood arm: every message names the file and the problem."""

from __future__ import annotations


class BloodInputError(ValueError):
    """A blood input file (FCS, gates, plate, layout, h5ad) is unreadable or inconsistent."""


class ConfigError(ValueError):
    """The blood config is invalid; the message names the file and the key."""
