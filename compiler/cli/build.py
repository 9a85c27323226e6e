"""Commands that read specs and write or explain what they compile to: compile, route, graph."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from mailwright.compiler.build import compile_specs
from mailwright.compiler.cli.errors import CommandError, cannot
from mailwright.compiler.cli.output import out
from mailwright.compiler.cli.params import Specs
from mailwright.compiler.cli.spec import load
from mailwright.compiler.graph import render_dot
from mailwright.compiler.route import explain_route
from mailwright.compiler.route_report import render_route, render_route_json

group = typer.Typer()

GRAPH_FORMATS = ("dot", "svg", "png")


@group.command("compile")
def compile_command(
    specs: Specs,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("build"),
) -> None:
    """Compile specs into GAL, GWART, zone files and per-host configs under DIR/<org>/."""
    for artifacts in compile_specs(load(specs), out_dir):
        hosts = sum(name.startswith("hosts/") for name in artifacts.files)
        zones = sum(name.startswith("zones/") for name in artifacts.files)
        out.print(
            f"{out_dir / artifacts.organization}: gal.json, gwart.json, gwart.txt, "
            f"{hosts} host configs, {zones} zones",
            markup=False,
        )


@group.command()
def route(
    address: Annotated[str, typer.Argument(help="user@domain, c=..;.. (X.400) or NET/PO/BOX.")],
    from_server: Annotated[str, typer.Option("--from", help="The server the message starts on.")],
    specs: Specs,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    message_id: Annotated[str, typer.Option(help="Spreads equal routes as the MTA would.")] = "",
) -> None:
    """Explain how a message to ADDRESS is routed from a server. Exit 1 when not routable."""
    result = explain_route(load(specs), address, from_server, message_id)
    if as_json:
        print(render_route_json(result))
    else:
        for line in render_route(result):
            out.print(line, markup=False)
    raise typer.Exit(0 if result.routable else 1)


@group.command()
def graph(
    specs: Specs,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write FILE instead of printing DOT: .dot as text, .svg/.png through Graphviz.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Draw organizations as a Graphviz picture: sites, servers, connectors, the Internet."""
    kind = out_file.suffix.lower().lstrip(".") if out_file else "dot"
    if kind not in GRAPH_FORMATS:
        raise typer.BadParameter(
            f"'{out_file}' must end in .dot, .svg or .png", param_hint="'--out'"
        )
    text = render_dot(load(specs))
    if out_file is None:
        sys.stdout.write(text)
        return
    if kind == "dot":
        with cannot(f"write {out_file}"):
            out_file.write_text(text, encoding="utf-8", newline="\n")
    else:
        _run_dot(kind, text, out_file)
    out.print(f"wrote {out_file}", markup=False)


def _run_dot(kind: str, text: str, out_file: Path) -> None:
    dot = shutil.which("dot")
    if dot is None:
        raise CommandError(
            f"writing {out_file} needs Graphviz's `dot` on PATH "
            "(e.g. `apt-get install graphviz`); or write --out FILE.dot"
        )
    result = subprocess.run(
        [dot, f"-T{kind}", "-o", str(out_file)],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise CommandError(f"dot failed: {result.stderr.strip()}")
