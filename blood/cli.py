"""``hccbio blood ...`` commands: a thin layer over the blood Python API."""

from __future__ import annotations

from pathlib import Path

import typer

from blood.errors import BloodInputError

app = typer.Typer(no_args_is_help=True, help="Blood assays: flow cytometry, ELISA, scRNA-seq.")


@app.command("flow")
def flow(
    fcs: Path = typer.Argument(..., help="FCS 2.0 / 3.0 / 3.1 file."),
    gates: Path = typer.Option(..., "--gates", help="Gating-ML .xml, FlowJo .wsp or YAML."),
    out: Path = typer.Option(..., "--out", help="Output folder (created)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write gating plots (PNG)."),
    sample: str | None = typer.Option(None, "--sample", help="FlowJo .wsp: the workspace "
                                      "sample whose gates apply to FCS (default: the one named "
                                      "like the file, else the workspace's only sample)."),
) -> None:
    """Gate one FCS file: DIR/populations.csv (one row per gate), qc.json and plots."""
    from blood.flow.pipeline import analyse_fcs

    try:
        result = analyse_fcs(fcs, gates, out, plots=plots, wsp_sample=sample)
    except BloodInputError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    for row in result.populations.itertuples():
        typer.echo(f"{row.population:24s} {row.count:9d} {row.pct_parent:7.2f}% of {row.parent}")
    for flag in result.qc.flags:
        typer.secho(f"QC: {flag}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"wrote {out / 'populations.csv'}")
