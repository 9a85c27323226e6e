"""The `mailwright` command: the only place that prints or exits.

The commands live in groups by what they work on (spec, build, plans, operations) and are
merged into one flat command line: the groups are modules, not sub-command prefixes. `main`
runs it in-process and returns the exit code; `run` is the console script.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from typing import Annotated, NoReturn

import typer

from mailwright.compiler.cli import build, errors, hosts, operations, plans, spec

app = typer.Typer(
    help="Infrastructure as code for an Exchange-style mail organization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(asked: bool) -> None:
    if asked:
        print(f"mailwright {version('mailwright')}")
        raise typer.Exit


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Infrastructure as code for an Exchange-style mail organization."""


for _group in (spec.group, build.group, plans.group, operations.group, hosts.group):
    app.add_typer(_group)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: this process's arguments) and return its exit
    code; an error a command meets is printed as errors.report says, without a traceback."""
    try:
        # Standalone, typer prints usage errors, aborts and Ctrl-C in its own format and
        # exits with click's codes; catching that exit keeps those exactly as a shell sees
        # them without reaching into typer's vendored click for its exception classes.
        app(args=argv, prog_name="mailwright")
    except SystemExit as exit_:
        return _exit_code(exit_.code)
    except Exception as exc:
        code = None if os.environ.get("MAILWRIGHT_DEBUG") == "1" else errors.report(exc)
        if code is None:
            raise  # a bug (or MAILWRIGHT_DEBUG=1): its traceback says more than a message
        return code
    return 0  # not reached: a standalone typer app always exits


def _exit_code(code: str | int | None) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)  # what sys.exit does with a message
    return 1


def run() -> NoReturn:
    """The console script `mailwright`."""
    sys.exit(main())
