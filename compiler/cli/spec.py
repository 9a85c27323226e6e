"""Commands on the spec itself: validate, fmt, schema, hash-password; and the loading of
specs that every other command starts from."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from mailwright.compiler.cli.errors import CommandError, reason
from mailwright.compiler.cli.output import err, out
from mailwright.compiler.cli.params import Specs
from mailwright.compiler.report import ValidationReport, render_github, render_json, render_text
from mailwright.compiler.zones import zone_diagnostics
from mailwright.schema import Diagnostic, LoadedSpec, Severity, check_specs
from mailwright.schema.diagnostics import sorted_diagnostics
from mailwright.schema.fmt import format_spec
from mailwright.schema.jsonschema import spec_json_schema_text
from mailwright.schema.passwords import hash_password
from mailwright.schema.yamlsource import YamlSyntaxError

group = typer.Typer()


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"


def diagnose(
    specs: list[Path], cache: Path | None = None
) -> tuple[list[LoadedSpec], list[Diagnostic]]:
    """The schema's checks, and what the zones' name servers would refuse."""
    loaded, diagnostics = check_specs(specs, cache)
    zone_problems = [d for spec in loaded for d in zone_diagnostics(spec)]
    if zone_problems:
        bad = {d.position.file for d in zone_problems}
        loaded = [spec for spec in loaded if str(spec.path) not in bad]
    return loaded, sorted_diagnostics([*diagnostics, *zone_problems])


def load(specs: list[Path], cache: Path | None = None) -> list[LoadedSpec]:
    """Valid organizations, or the diagnostics and exit 1; warnings go to stderr either way."""
    loaded, diagnostics = diagnose(specs, cache)
    for diagnostic in diagnostics:
        color = "red" if diagnostic.severity is Severity.ERROR else "yellow"
        err.print(str(diagnostic), style=color, markup=False)
    if any(d.severity is Severity.ERROR for d in diagnostics):
        raise typer.Exit(1)
    return loaded


@group.command()
def validate(
    specs: Specs,
    output: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="text, json, or GitHub Actions annotations."),
    ] = OutputFormat.TEXT,
) -> None:
    """Check specs: every problem at once, each at FILE:LINE:COL. Exit 1 on any error."""
    loaded, diagnostics = diagnose(specs)
    files = list(dict.fromkeys(str(s.resolve()) for s in specs))  # a file named twice is one spec
    report = ValidationReport(files, loaded, diagnostics)
    if output is OutputFormat.JSON:
        print(render_json(report))
    elif output is OutputFormat.GITHUB:
        for line in render_github(report):
            print(line)
    else:
        for text, style in render_text(report):
            out.print(text, style=style or None, markup=False)
    raise typer.Exit(0 if report.valid else 1)


@group.command()
def fmt(
    specs: Specs,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 if a file would change.")
    ] = False,
) -> None:
    """Rewrite specs in canonical form, keeping comments."""
    results = [(path, _reformat(path, write=not check)) for path in specs]
    changed = [path for path, result in results if result]
    for path in changed:
        out.print(f"{'would reformat' if check else 'reformatted'} {path}", markup=False)
    failed = any(result is None for _, result in results)
    raise typer.Exit(1 if failed or (check and changed) else 0)


def _reformat(path: Path, write: bool) -> bool | None:
    """Whether the file is not in canonical form (rewritten when `write`); None, with the
    located problem on stderr, when it cannot be read or parsed: fmt goes on with the rest."""
    try:
        text = path.read_text(encoding="utf-8")
        formatted = format_spec(text)
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"{path}:1:1: error: cannot read: {reason(exc)}", markup=False)
        return None
    except YamlSyntaxError as exc:
        err.print(f"{path}:{exc.line}:{exc.column}: error: {exc.message}", markup=False)
        return None
    if formatted != text and write:
        path.write_text(formatted, encoding="utf-8")
    return formatted != text


@group.command()
def schema() -> None:
    """Print the JSON Schema of the spec (for yaml-language-server and other editors)."""
    sys.stdout.write(spec_json_schema_text())


@group.command("hash-password")
def hash_password_command() -> None:
    """Read a password (prompt, or stdin when not a terminal) and print its argon2id hash."""
    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password")
    print(hash_password(password))
