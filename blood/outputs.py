"""Atomic writes of the blood steps: re-exported from the shared core (:mod:`hcccore.atomic`).

Kept only for the steps' imports (``blood.flow``, ``blood.elisa``, ``blood.scrna``); new code
imports :mod:`hcccore.atomic` directly.
"""

from hcccore.atomic import write_csv, write_json, write_png

__all__ = ["write_csv", "write_json", "write_png"]
