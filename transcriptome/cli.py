"""``hccbio rnaseq``: sub-commands of the transcriptome arm (a thin layer over the API).

The manifest-driven ``hccbio rnaseq run`` is registered on this app by ``integration.cli``,
which owns the study manifest.
"""

from __future__ import annotations

from pathlib import Path

import typer

from transcriptome.config import PROJECT_ROOT, load_config
from transcriptome.signatures import load_gene_sets

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "transcriptome.yaml"

rnaseq_app = typer.Typer(no_args_is_help=True,
                         help="Tumour bulk RNA-seq: normalised expression and gene signatures.")


@rnaseq_app.command("signatures")
def signatures(config: Path = typer.Option(DEFAULT_CONFIG, "--config",
                                           help="Transcriptome config YAML.")) -> None:
    """List the gene sets the config scores, with their genes and sources."""
    cfg = load_config(config)
    for gene_set in load_gene_sets(cfg.signatures.gene_sets):
        typer.echo(f"{gene_set.key}\t{len(gene_set.genes)} genes\t{' '.join(gene_set.genes)}"
                   f"\t{gene_set.source}")
    typer.echo(f"single genes\t{' '.join(cfg.signatures.single_genes)}")
