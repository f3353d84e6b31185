"""Gene sets (YAML or GMT) and per-sample scores: mean z-score and ssGSEA."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from transcriptome.errors import ExpressionError

KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,17}$")  # rna_<key>_ssgsea stays <= 32 characters


@dataclass(frozen=True)
class GeneSet:
    """A named gene set.

    Attributes
    ----------
    key
        Short name used in feature columns (``[a-z][a-z0-9_]``, at most 18 characters).
    label
        Long name for the data dictionary.
    genes
        HGNC symbols, unique, in the order given.
    source
        Citation.
    """

    key: str
    label: str
    genes: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class SetScores:
    """Scores of one gene set over a cohort.

    Attributes
    ----------
    gene_set
        The set.
    found
        Genes of the set present in the expression table.
    used
        Genes that entered the mean z-score (present and not constant across samples).
    status
        'ok', or why the scores are missing. ssGSEA needs only enough genes present, so it is
        still reported when the z-score fails for lack of variable genes or of samples.
    zscore, ssgsea
        Per-sample scores (NaN when not computed or when the set failed).
    """

    gene_set: GeneSet
    found: tuple[str, ...]
    used: tuple[str, ...]
    status: str
    zscore: pd.Series
    ssgsea: pd.Series


def load_gene_sets(paths: Sequence[str | Path]) -> list[GeneSet]:
    """Read gene sets from YAML or GMT files.

    YAML: a mapping with ``sets``, a list of ``{key, label, source, genes}``. GMT: one set per
    line, ``key<TAB>description<TAB>gene...``; the description is the label and the source is
    the file name.

    Parameters
    ----------
    paths
        Files to read, in order.

    Returns
    -------
    list of GeneSet

    Raises
    ------
    ExpressionError
        Missing file, bad structure, invalid or repeated key, empty or repeated genes.
    """
    sets: list[GeneSet] = []
    seen: dict[str, Path] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ExpressionError(f"{path}: gene-set file not found")
        loaded = _read_gmt(path) if path.suffix.lower() == ".gmt" else _read_yaml(path)
        for gene_set in loaded:
            if gene_set.key in seen:
                raise ExpressionError(f"{path}: gene set '{gene_set.key}' is also defined in "
                                      f"{seen[gene_set.key]}")
            seen[gene_set.key] = path
            sets.append(gene_set)
    return sets


def _read_yaml(path: Path) -> list[GeneSet]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ExpressionError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("sets"), list):
        raise ExpressionError(f"{path}: expected a top-level 'sets:' list")
    out = []
    for number, entry in enumerate(data["sets"], start=1):
        if not isinstance(entry, dict) or set(entry) != {"key", "label", "source", "genes"}:
            raise ExpressionError(f"{path}: set #{number} needs exactly the keys key, label, "
                                  "source, genes")
        if not isinstance(entry["genes"], list):
            raise ExpressionError(f"{path}: set #{number} 'genes' must be a list")
        out.append(_make_set(path, str(entry["key"]), str(entry["label"]),
                             [str(g) for g in entry["genes"]], str(entry["source"])))
    return out


def _read_gmt(path: Path) -> list[GeneSet]:
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 3:
            raise ExpressionError(f"{path}, line {number}: a GMT line needs a name, a "
                                  "description and at least one gene, tab-separated")
        out.append(_make_set(path, fields[0].strip(), fields[1].strip() or fields[0].strip(),
                             [g for g in fields[2:] if g.strip()], path.name))
    return out


def _make_set(path: Path, key: str, label: str, genes: list[str], source: str) -> GeneSet:
    if not KEY_PATTERN.match(key):
        raise ExpressionError(f"{path}: gene-set key '{key}' must match [a-z][a-z0-9_]{{0,17}}")
    genes = [g.strip() for g in genes]
    if not genes or any(not g for g in genes):
        raise ExpressionError(f"{path}: gene set '{key}' has an empty gene name or no genes")
    if len(set(genes)) != len(genes):
        raise ExpressionError(f"{path}: gene set '{key}' lists a gene twice")
    return GeneSet(key, label, tuple(genes), source)


def zscore_genes(log2: pd.DataFrame) -> pd.DataFrame:
    """Z-score each gene across samples (mean 0, standard deviation 1 with ddof=1).

    Constant genes get NaN. Needs at least two samples.

    Examples
    --------
    >>> zscore_genes(pd.DataFrame({"a": [1.0, 5.0], "b": [3.0, 5.0]})).round(4).iloc[0].tolist()
    [-0.7071, 0.7071]
    """
    mean = log2.mean(axis=1)
    std = log2.std(axis=1, ddof=1)
    std = std.where(std > 0)
    return log2.sub(mean, axis=0).div(std, axis=0)


def ssgsea_scores(log2: pd.DataFrame, gene_sets: Sequence[GeneSet], *,
                  weight: float = 0.25) -> pd.DataFrame:
    """Single-sample GSEA enrichment scores (Barbie et al., Nature 2009) computed by gseapy.

    Each sample's genes are ranked by expression (gseapy ``sample_norm_method='rank'``); the
    score is the un-normalised enrichment score (ES), which depends on that sample alone. Genes
    are put in alphabetical order first so that ties rank the same whatever the input order.

    Parameters
    ----------
    log2
        Genes by samples.
    gene_sets
        Sets to score (genes absent from ``log2`` are ignored by ssGSEA).
    weight
        Rank weight alpha.

    Returns
    -------
    pandas.DataFrame
        Samples by set keys; a set with no gene in ``log2`` is NaN.
    """
    import gseapy

    ordered = log2.sort_index()
    ordered = ordered.loc[:, sorted(ordered.columns)]
    genes = set(ordered.index)
    usable = {s.key: [g for g in s.genes if g in genes] for s in gene_sets}
    usable = {k: v for k, v in usable.items() if v}
    out = pd.DataFrame(np.nan, index=log2.columns, columns=[s.key for s in gene_sets])
    if not usable or ordered.shape[1] == 0:
        return out
    result = gseapy.ssgsea(data=ordered, gene_sets=usable, sample_norm_method="rank",
                           correl_norm_type=None, weight=weight, min_size=1,
                           max_size=max(len(v) for v in usable.values()), outdir=None,
                           no_plot=True, threads=1, verbose=False)
    table = result.res2d.pivot(index="Name", columns="Term", values="ES").astype(float)
    for key in usable:
        out[key] = table[key].reindex(out.index).to_numpy()
    return out


def score_gene_sets(log2: pd.DataFrame, gene_sets: Sequence[GeneSet], *,
                    methods: Sequence[str] = ("zscore", "ssgsea"), min_genes: int = 3,
                    min_fraction: float = 0.5, weight: float = 0.25) -> list[SetScores]:
    """Score gene sets per sample; a set with too few genes present gets NaN and a status.

    ``zscore``: mean over the set's genes of each gene's z-score across the samples of
    ``log2`` (so it is relative to this cohort). ``ssgsea``: see :func:`ssgsea_scores`.

    Parameters
    ----------
    log2
        Normalised log2 expression, genes by samples.
    gene_sets
        Sets to score.
    methods
        Any of 'zscore', 'ssgsea'.
    min_genes, min_fraction
        A set scores only when at least ``min_genes`` and ``min_fraction`` of its genes are
        present (and, for zscore, not constant).
    weight
        ssGSEA rank weight.

    Returns
    -------
    list of SetScores
        One per set, in the given order.

    Examples
    --------
    >>> frame = pd.DataFrame({"a": [1.0, 2, 3], "b": [3.0, 1, 1], "c": [2.0, 3, 2]},
    ...                      index=["G1", "G2", "G3"])
    >>> s = GeneSet("x", "x", ("G1", "G2", "G9"), "doc")
    >>> r = score_gene_sets(frame, [s], methods=("zscore",), min_genes=2)[0]
    >>> r.status, r.zscore.round(3).tolist()
    ('ok', [-0.5, 0.0, 0.5])
    """
    samples = log2.columns
    present = set(log2.index)
    eligible = []
    plans = []
    for gene_set in gene_sets:
        found = tuple(g for g in gene_set.genes if g in present)
        needed = max(min_genes, int(np.ceil(min_fraction * len(gene_set.genes))))
        status = "ok"
        if len(found) < needed:
            status = (f"too few genes: {len(found)} of {len(gene_set.genes)} found, "
                      f"need {needed}")
        else:
            eligible.append(GeneSet(gene_set.key, gene_set.label, found, gene_set.source))
        plans.append((gene_set, found, needed, status))
    z = zscore_genes(log2) if "zscore" in methods and log2.shape[1] >= 2 else None
    ss = (ssgsea_scores(log2, eligible, weight=weight) if "ssgsea" in methods and eligible
          else None)
    results = []
    for gene_set, found, needed, status in plans:
        nan = pd.Series(np.nan, index=samples, dtype=float)
        zscore, ssgsea, used = nan.copy(), nan.copy(), ()
        if status == "ok" and "zscore" in methods:
            if z is None:
                status = "zscore needs at least 2 samples"
            else:
                block = z.loc[list(found)]
                used = tuple(g for g in found if block.loc[g].notna().all())
                if len(used) < needed:
                    status = (f"too few variable genes: {len(used)} of {len(found)} found "
                              f"genes vary across samples, need {needed}")
                else:
                    zscore = block.loc[list(used)].mean(axis=0)
        if ss is not None and gene_set.key in ss.columns and len(found) >= needed:
            ssgsea = ss[gene_set.key].reindex(samples)
        results.append(SetScores(gene_set, found, used, status, zscore.rename(gene_set.key),
                                 ssgsea.rename(gene_set.key)))
    return results
