"""Exceptions of the transcriptome arm."""

from __future__ import annotations


class ExpressionError(ValueError):
    """An expression file or gene-set file breaks the input contract.

    The message names the file and the problem (duplicated genes, negative counts, a sample
    missing from the matrix...).
    """
