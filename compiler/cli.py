"""The `mailwright` command: the only place that prints or exits."""

from __future__ import annotations

import enum
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mailwright.compiler.build import compile_specs
from mailwright.compiler.graph import render_dot
from mailwright.compiler.report import ValidationReport, render_github, render_json, render_text
from mailwright.compiler.route import RouteError, explain_route
from mailwright.compiler.route_report import render_route, render_route_json
from mailwright.compiler.zones import ZoneError
from mailwright.schema import LoadedSpec, Severity, check_specs
from mailwright.schema.fmt import format_spec
from mailwright.schema.jsonschema import spec_json_schema_text
from mailwright.schema.passwords import hash_password
from mailwright.schema.yamlsource import YamlSyntaxError

app = typer.Typer(
    help="Infrastructure as code for an Exchange-style mail organization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Specs = Annotated[
    list[Path], typer.Argument(help="Organization spec files (YAML).", show_default=False)
]


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"


@app.command()
def validate(
    specs: Specs,
    output: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="text, json, or GitHub Actions annotations."),
    ] = OutputFormat.TEXT,
) -> None:
    """Check specs: every problem at once, each at FILE:LINE:COL. Exit 1 on any error."""
    loaded, diagnostics = check_specs(specs)
    report = ValidationReport([str(s) for s in specs], loaded, diagnostics)
    if output is OutputFormat.JSON:
        print(render_json(report))
    elif output is OutputFormat.GITHUB:
        for line in render_github(report):
            print(line)
    else:
        for text, style in render_text(report):
            out.print(text, style=style or None, markup=False)
    raise typer.Exit(0 if report.valid else 1)


def _load(specs: list[Path]) -> list[LoadedSpec]:
    """Valid organizations, or the diagnostics and exit 1; warnings go to stderr either way."""
    loaded, diagnostics = check_specs(specs)
    for diagnostic in diagnostics:
        color = "red" if diagnostic.severity is Severity.ERROR else "yellow"
        err.print(str(diagnostic), style=color, markup=False)
    if any(d.severity is Severity.ERROR for d in diagnostics):
        raise typer.Exit(1)
    return loaded


@app.command("compile")
def compile_command(
    specs: Specs,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("build"),
) -> None:
    """Compile specs into GAL, GWART, zone files and per-host configs under DIR/<org>/."""
    try:
        compiled = compile_specs(_load(specs), out_dir)
    except ZoneError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    for artifacts in compiled:
        hosts = sum(name.startswith("hosts/") for name in artifacts.files)
        zones = sum(name.startswith("zones/") for name in artifacts.files)
        out.print(
            f"{out_dir / artifacts.organization}: gal.json, gwart.json, gwart.txt, "
            f"{hosts} host configs, {zones} zones",
            markup=False,
        )


@app.command()
def route(
    address: Annotated[str, typer.Argument(help="user@domain, c=..;.. (X.400) or NET/PO/BOX.")],
    from_server: Annotated[str, typer.Option("--from", help="The server the message starts on.")],
    specs: Specs,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    message_id: Annotated[str, typer.Option(help="Spreads equal routes as the MTA would.")] = "",
) -> None:
    """Explain how a message to ADDRESS is routed from a server. Exit 1 when not routable."""
    try:
        result = explain_route(_load(specs), address, from_server, message_id)
    except (RouteError, ZoneError) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    if as_json:
        print(render_route_json(result))
    else:
        for line in render_route(result):
            out.print(line, markup=False)
    raise typer.Exit(0 if result.routable else 1)


GRAPH_FORMATS = ("dot", "svg", "png")


@app.command()
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
    text = render_dot(_load(specs))
    if out_file is None:
        sys.stdout.write(text)
        return
    if kind == "dot":
        try:
            out_file.write_text(text, encoding="utf-8", newline="\n")
        except OSError as exc:
            err.print(f"error: cannot write {out_file}: {exc.strerror}", markup=False)
            raise typer.Exit(1) from None
    else:
        _run_dot(kind, text, out_file)
    out.print(f"wrote {out_file}", markup=False)


def _run_dot(kind: str, text: str, out_file: Path) -> None:
    dot = shutil.which("dot")
    if dot is None:
        err.print(
            f"error: writing {out_file} needs Graphviz's `dot` on PATH "
            "(e.g. `apt-get install graphviz`); or write --out FILE.dot",
            markup=False,
        )
        raise typer.Exit(1)
    result = subprocess.run(
        [dot, f"-T{kind}", "-o", str(out_file)],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        err.print(f"error: dot failed: {result.stderr.strip()}", markup=False)
        raise typer.Exit(1)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec (for yaml-language-server and other editors)."""
    sys.stdout.write(spec_json_schema_text())


@app.command()
def fmt(
    specs: Specs,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 if a file would change.")
    ] = False,
) -> None:
    """Rewrite specs in canonical form, keeping comments."""
    changed, failed = [], False
    for path in specs:
        try:
            text = path.read_text(encoding="utf-8")
            formatted = format_spec(text)
        except (OSError, UnicodeDecodeError) as exc:
            err.print(
                f"{path}:1:1: error: cannot read: {getattr(exc, 'strerror', None) or exc}",
                markup=False,
            )
            failed = True
            continue
        except YamlSyntaxError as exc:
            err.print(f"{path}:{exc.line}:{exc.column}: error: {exc.message}", markup=False)
            failed = True
            continue
        if formatted != text:
            changed.append(path)
            if not check:
                path.write_text(formatted, encoding="utf-8")
    for path in changed:
        out.print(f"{'would reformat' if check else 'reformatted'} {path}", markup=False)
    raise typer.Exit(1 if failed or (check and changed) else 0)


@app.command("hash-password")
def hash_password_command() -> None:
    """Read a password (prompt, or stdin when not a terminal) and print its argon2id hash."""
    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        err.print("error: empty password", markup=False)
        raise typer.Exit(1)
    print(hash_password(password))


def main() -> None:
    app()
