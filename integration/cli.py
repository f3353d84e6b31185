"""The ``hccbio`` command line: a thin layer over the Python API of each arm.

Each arm owns its sub-commands; manifest-driven ``run`` commands are wired here because the
study manifest belongs to ``integration``.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="hccbio: slides, blood and outcomes for HCC under atezolizumab + "
                       "bevacizumab.")
slides_app = typer.Typer(no_args_is_help=True, help="Whole-slide images: tissue, nuclei, cells.")
app.add_typer(slides_app, name="slides")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
