"""The arguments and options that more than one command group takes, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mailwright.compiler.state import DEFAULT_STATE_DIR

Specs = Annotated[
    list[Path], typer.Argument(help="Organization spec files (YAML).", show_default=False)
]
StateOption = Annotated[
    Path,
    typer.Option(
        "--state", envvar="MAILWRIGHT_STATE", help="State directory (or $MAILWRIGHT_STATE)."
    ),
]
DEFAULT_STATE = Path(DEFAULT_STATE_DIR)
