"""Gene identifiers: drop Ensembl version suffixes and map Ensembl ids to HGNC symbols."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from transcriptome.errors import ExpressionError

ENSEMBL_GENE = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")


def load_gene_map(path: str | Path) -> dict[str, str]:
    """Read an Ensembl-to-symbol table.

    Parameters
    ----------
    path
        Tab-separated file with columns ``ensembl_gene_id`` and ``symbol``; ``#`` starts a
        comment line.

    Returns
    -------
    dict
        Ensembl gene id (no version) to symbol.

    Raises
    ------
    ExpressionError
        Missing file or columns, malformed or duplicated ids.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpressionError(f"{path}: gene map file not found")
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    missing = {"ensembl_gene_id", "symbol"} - set(table.columns)
    if missing:
        raise ExpressionError(f"{path}: gene map needs columns ensembl_gene_id and symbol "
                              f"(missing {', '.join(sorted(missing))})")
    ids = table["ensembl_gene_id"].str.strip()
    bad = [i for i in ids if not ENSEMBL_GENE.match(i)]
    if bad:
        raise ExpressionError(f"{path}: not Ensembl gene ids: {', '.join(bad[:5])}")
    ids = ids.map(lambda i: ENSEMBL_GENE.match(i).group(1))
    if ids.duplicated().any():
        raise ExpressionError(f"{path}: Ensembl id(s) listed twice: "
                              f"{', '.join(sorted(set(ids[ids.duplicated()]))[:5])}")
    return dict(zip(ids, table["symbol"].str.strip(), strict=True))


def to_symbols(values: pd.DataFrame, *, gene_map: dict[str, str] | None,
               source: str | Path) -> pd.DataFrame:
    """Return ``values`` re-indexed by gene symbol where the map knows the Ensembl id.

    Ensembl version suffixes are dropped (``ENSG00000120217.14`` -> ``ENSG00000120217``);
    GENCODE ``_PAR_Y`` duplicates of X-chromosome genes are dropped; ids the map does not know
    are kept as they are (they still take part in normalisation and ssGSEA ranks).

    Parameters
    ----------
    values
        Genes by samples.
    gene_map
        Ensembl id to symbol, or None to keep identifiers.
    source
        File name used in error messages.

    Returns
    -------
    pandas.DataFrame
        Same columns, new index named ``gene``.

    Raises
    ------
    ExpressionError
        Two rows end up with the same identifier (e.g. an id given with and without version,
        or an Ensembl id and its symbol both present).

    Examples
    --------
    >>> frame = pd.DataFrame({"s1": [1.0, 2.0]}, index=["ENSG00000120217.14", "GPC3"])
    >>> list(to_symbols(frame, gene_map={"ENSG00000120217": "CD274"}, source="x").index)
    ['CD274', 'GPC3']
    """
    keep = [not str(g).endswith("_PAR_Y") for g in values.index]
    values = values.loc[keep]
    new = []
    for gene in values.index:
        match = ENSEMBL_GENE.match(str(gene))
        if match:
            stable = match.group(1)
            new.append(gene_map.get(stable, stable) if gene_map else stable)
        else:
            new.append(str(gene))
    index = pd.Index(new, name="gene")
    if index.duplicated().any():
        dup = sorted(set(index[index.duplicated()]))
        raise ExpressionError(f"{source}: duplicated gene(s) after dropping Ensembl versions and "
                              f"mapping to symbols: {', '.join(dup[:5])}"
                              + (f" and {len(dup) - 5} more" if len(dup) > 5 else ""))
    out = values.copy()
    out.index = index
    return out
