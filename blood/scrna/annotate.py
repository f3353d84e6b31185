"""PBMC cell-type annotation: marker-gene scores (default, offline) or a CellTypist model."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from blood.config import MarkerSet, ScrnaConfig
from blood.errors import BloodInputError, ConfigError

CELL_TYPE = "cell_type"
UNASSIGNED = "unassigned"
OTHER = "other"
CELLTYPIST_FOLDER = "CELLTYPIST_FOLDER"  # environment variable celltypist reads


@dataclass(frozen=True)
class Annotation:
    """Cell types of every cell.

    Attributes
    ----------
    labels
        One label per cell (index = obs names): a marker key, 'unassigned' or 'other'.
    scores
        Marker scores (cells x measurable types); empty for CellTypist.
    method
        "markers" or "celltypist:<model file name>".
    missing_genes
        Cell type -> marker genes absent from the data.
    not_measurable
        Cell type -> why it cannot be measured in these data (none of its positive marker
        genes present); such a type gets no cell and an empty fraction.
    model_sha256
        SHA-256 of the CellTypist model file ('' for markers).
    """

    labels: pd.Series
    scores: pd.DataFrame
    method: str
    missing_genes: dict[str, list[str]]
    not_measurable: dict[str, str] = field(default_factory=dict)
    model_sha256: str = ""


def unmeasurable_types(markers: dict[str, MarkerSet], genes: pd.Index | list[str]
                       ) -> dict[str, str]:
    """Cell types none of whose positive marker genes are in ``genes``, with the reason.

    Examples
    --------
    >>> from blood.config import MarkerSet
    >>> unmeasurable_types({"b": MarkerSet(positive=["MS4A1"]),
    ...                     "treg": MarkerSet(positive=["FOXP3", "IL2RA"])}, ["MS4A1", "CD3E"])
    {'treg': 'none of its positive marker genes (FOXP3, IL2RA) are in the data'}
    """
    present = set(genes)
    return {name: f"none of its positive marker genes ({', '.join(marker.positive)}) are in "
                  "the data"
            for name, marker in markers.items() if not present.intersection(marker.positive)}


def marker_scores(adata: ad.AnnData, markers: dict[str, MarkerSet], *, seed: int = 0
                  ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Score every cell for every measurable marker set with ``scanpy.tl.score_genes``.

    The score of a type is the score of its positive genes minus the positive part of the
    score of its negative genes (when any are present). ``adata.X`` must be log-normalised.
    A type none of whose positive genes are in the data is not measurable
    (:func:`unmeasurable_types`) and gets no column.

    Returns
    -------
    scores
        Cells x measurable types.
    missing
        Type -> genes not in ``adata.var_names`` (every type).

    Raises
    ------
    BloodInputError
        No cell type has any of its positive marker genes in the data.
    """
    import scanpy as sc

    genes = set(adata.var_names)
    missing = {name: [g for g in [*m.positive, *m.negative] if g not in genes]
               for name, m in markers.items()}
    skipped = unmeasurable_types(markers, adata.var_names)
    if len(skipped) == len(markers):
        wanted = sorted({g for m in markers.values() for g in m.positive})
        raise BloodInputError(f"no cell type can be measured: none of the positive marker "
                              f"genes {wanted} are in the data (are var_names gene symbols?)")
    work = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names), var=adata.var[[]])
    scores: dict[str, np.ndarray] = {}
    ctrl = max(10, min(50, adata.n_vars // 10))
    for name, marker in markers.items():
        if name in skipped:
            continue
        total = np.zeros(adata.n_obs)
        for sign, gene_list in ((1.0, marker.positive), (-1.0, marker.negative)):
            present = [g for g in gene_list if g in genes]
            if not present:
                continue
            sc.tl.score_genes(work, present, ctrl_size=ctrl, score_name="_score",
                              random_state=seed, use_raw=False)
            score = work.obs["_score"].to_numpy()
            # negative markers only penalise expression above background: their absence
            # must not reward a type (T cells lack HLA-DR too, yet are not MDSC-like)
            total += score if sign > 0 else -np.clip(score, 0, None)
        scores[name] = total
    return pd.DataFrame(scores, index=adata.obs_names), missing


def annotate(adata: ad.AnnData, *, config: ScrnaConfig) -> Annotation:
    """Annotate cells by marker scores, or by CellTypist when a model is configured.

    Markers: each cell takes the measurable type of its highest score; cells whose best
    score is not above ``config.min_score`` are 'unassigned'; types none of whose positive
    markers are in the data are reported in ``not_measurable`` and get no cells.
    CellTypist: its predicted labels mapped through ``config.celltypist_labels`` (unmapped
    labels become 'other').

    Parameters
    ----------
    adata
        Cells x genes, log-normalised ``X``, gene symbols as ``var_names``.
    config
        scRNA config.

    Returns
    -------
    Annotation
    """
    if config.celltypist_model is not None:
        return _celltypist(adata, config.celltypist_model, config.celltypist_labels)
    scores, missing = marker_scores(adata, config.markers, seed=config.seed)
    best = scores.to_numpy().argmax(axis=1)
    labels = np.asarray(scores.columns)[best].astype(object)
    labels[scores.to_numpy().max(axis=1) <= config.min_score] = UNASSIGNED
    return Annotation(pd.Series(labels, index=adata.obs_names, name=CELL_TYPE), scores,
                      "markers", missing, unmeasurable_types(config.markers, adata.var_names))


def celltypist_models_folder() -> Path:
    """Folder where CellTypist keeps downloaded models: ``$CELLTYPIST_FOLDER/data/models``.

    Follows celltypist's own rule (``celltypist.models.models_path``): the environment
    variable ``CELLTYPIST_FOLDER``, default ``~/.celltypist``; read at each call.
    """
    root = os.environ.get(CELLTYPIST_FOLDER) or str(Path.home() / ".celltypist")
    return Path(root) / "data" / "models"


def resolve_celltypist_model(model: str | Path) -> Path:
    """The model file: ``model`` itself, else a file of that name in the models folder.

    Parameters
    ----------
    model
        Path to a CellTypist ``.pkl``, or the file name of a model downloaded by
        ``celltypist.models.download_models`` (e.g. ``Immune_All_Low.pkl``).

    Returns
    -------
    pathlib.Path
        Absolute path of an existing file.

    Raises
    ------
    ConfigError
        Neither exists; the message names both places.
    """
    model = Path(model)
    for candidate in (model, celltypist_models_folder() / model.name):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{model}: CellTypist model file not found (scrna.celltypist_model), nor "
                      f"in CellTypist's models folder {celltypist_models_folder()} (set "
                      f"{CELLTYPIST_FOLDER} to the folder holding data/models/)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _celltypist(adata: ad.AnnData, model: Path, mapping: dict[str, str]) -> Annotation:
    try:
        import celltypist
    except ImportError as error:
        raise ConfigError("scrna.celltypist_model is set but the celltypist package is not "
                          "installed (pip install celltypist), or unset it to use the "
                          "marker genes") from error
    path = resolve_celltypist_model(model)
    known = [str(t) for t in celltypist.models.Model.load(str(path)).cell_types]
    unknown = sorted(set(mapping) - set(known))
    if not mapping or unknown:
        problem = ("is empty" if not mapping else
                   f"names labels the model does not have: {unknown}")
        raise ConfigError(f"scrna.celltypist_labels {problem}; map the labels of {path.name} "
                          f"({known}) to cell-type keys")
    # a path string with a '/' is loaded as a file: celltypist never looks for a download
    predicted = celltypist.annotate(adata, model=str(path), majority_voting=False)
    raw = predicted.predicted_labels["predicted_labels"].astype(str)
    labels = raw.map(lambda label: mapping.get(label, OTHER))
    return Annotation(pd.Series(labels.to_numpy(), index=adata.obs_names, name=CELL_TYPE),
                      pd.DataFrame(index=adata.obs_names), f"celltypist:{path.name}", {},
                      model_sha256=_sha256(path))
