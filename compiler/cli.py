"""The `mailwright` command: the only place that prints or exits."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, TaskID

from mailwright.compiler import apply as apply_module
from mailwright.compiler import plan_report
from mailwright.compiler.apply import (
    StepProgress,
    apply,
    load_plan,
    moving_stores,
    prepare,
    save_plan,
)
from mailwright.compiler.build import compile_specs
from mailwright.compiler.graph import render_dot
from mailwright.compiler.plan import Action, Plan, UnsafePlanError
from mailwright.compiler.report import ValidationReport, render_github, render_json, render_text
from mailwright.compiler.route import RouteError, explain_route
from mailwright.compiler.route_report import render_route, render_route_json
from mailwright.compiler.state import DEFAULT_STATE_DIR, StateDir, StateError
from mailwright.compiler.zones import ZoneError, zone_diagnostics
from mailwright.runtime.mta import tracking
from mailwright.runtime.submit import Submission, SubmitError, submit
from mailwright.runtime.targets import LaunchError
from mailwright.runtime.targets import local as launcher
from mailwright.schema import Diagnostic, LoadedSpec, Severity, check_specs
from mailwright.schema.diagnostics import sorted_diagnostics
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
    loaded, diagnostics = _check(specs)
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


def _check(
    specs: list[Path], cache: Path | None = None
) -> tuple[list[LoadedSpec], list[Diagnostic]]:
    """The schema's checks, and what the zones' name servers would refuse."""
    loaded, diagnostics = check_specs(specs, cache)
    zone_problems = [d for spec in loaded for d in zone_diagnostics(spec)]
    if zone_problems:
        bad = {d.position.file for d in zone_problems}
        loaded = [spec for spec in loaded if str(spec.path) not in bad]
    return loaded, sorted_diagnostics([*diagnostics, *zone_problems])


def _load(specs: list[Path], cache: Path | None = None) -> list[LoadedSpec]:
    """Valid organizations, or the diagnostics and exit 1; warnings go to stderr either way."""
    loaded, diagnostics = _check(specs, cache)
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


StateOption = Annotated[
    Path,
    typer.Option(
        "--state", envvar="MAILWRIGHT_STATE", help="State directory (or $MAILWRIGHT_STATE)."
    ),
]
LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", help="Seconds to wait for another apply's lock.")
]


class PlanFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


def _print_plan(plan: Plan) -> None:
    _write_styled(plan_report.render_text(plan))


WRITE_BATCH = 1024  # blocks of lines joined into one write


def _write_styled(blocks: Iterable[tuple[str, str]]) -> None:
    """Blocks of lines to stdout, each line between its style's ANSI escapes where rich would
    colour (a terminal, or FORCE_COLOR) and plain elsewhere. Written directly and in batches:
    through rich, a first plan of 100,000 mailboxes (two million lines) took many minutes."""
    escapes: dict[str, tuple[str, str]] = {}
    batch: list[str] = []
    for text, style in blocks:
        if style not in escapes:
            escapes[style] = _escapes(style)
        start, end = escapes[style]
        batch.append(start + text.replace("\n", f"{end}\n{start}") + end if start else text)
        if len(batch) == WRITE_BATCH:
            sys.stdout.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        sys.stdout.write("\n".join(batch) + "\n")
    sys.stdout.flush()


def _escapes(style: str) -> tuple[str, str]:
    """What rich writes to stdout before and after a line in `style`: nothing when it would not
    colour, and then exactly its escapes (NO_COLOR, the terminal's colours) when it would."""
    with out.capture() as captured:
        out.print("x", style=style or None, markup=False, end="")
    start, _, end = captured.get().partition("x")
    return start, end


@app.command()
def plan(
    specs: Specs,
    state: StateOption = Path(DEFAULT_STATE_DIR),
    output: Annotated[
        PlanFormat, typer.Option("--format", help="text, json or markdown.")
    ] = PlanFormat.TEXT,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Only the changed addresses.")] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Save the plan for `apply PLANFILE`.")
    ] = None,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0 no changes, 1 error, 2 changes.")
    ] = False,
    expect_no_changes: Annotated[
        bool, typer.Option("--expect-no-changes", help="Exit 2 on any change or drift.")
    ] = False,
) -> None:
    """Show what apply would change, against the applied state."""
    try:
        state_dir = StateDir(state)
        with _progress() as progress:
            progress("Loading specs", 0, None)
            prepared = prepare(_load(specs, state_dir.import_cache), state_dir, progress)
    except (StateError, ZoneError) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    result = prepared.plan
    if summary:
        for line in plan_report.render_summary(result):
            print(line)
    elif as_json or output is PlanFormat.JSON:
        print(plan_report.render_json(result))
    elif output is PlanFormat.MARKDOWN:
        sys.stdout.write(plan_report.render_markdown(result))
    else:
        _print_plan(result)
    if out_file is not None:
        try:
            save_plan(prepared, out_file)
        except OSError as exc:
            err.print(f"error: cannot save the plan to {out_file}: {exc.strerror}", markup=False)
            raise typer.Exit(1) from None
        err.print(
            f"Saved the plan to {out_file}; apply it with `mailwright apply {out_file}`.",
            markup=False,
        )
    if (detailed_exitcode or expect_no_changes) and result.has_changes:
        raise typer.Exit(2)


@app.command("apply")
def apply_command(
    targets: Annotated[
        list[Path], typer.Argument(help="Spec files, or one saved plan file.", show_default=False)
    ],
    state: StateOption = Path(DEFAULT_STATE_DIR),
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Apply a plan that exceeds the safety limits.")
    ] = False,
    lock_timeout: LockTimeout = 0.0,
) -> None:
    """Apply specs (after showing the plan and asking) or a saved plan (exactly, no prompt)."""
    state_dir = StateDir(state)
    from_file = len(targets) == 1 and targets[0].suffix.lower() not in (".yaml", ".yml")
    specs: list[LoadedSpec] = []
    if not from_file:
        with _progress() as progress:
            progress("Loading specs", 0, None)
            specs = _load(targets, state_dir.import_cache)
    try:
        with state_dir.locked(lock_timeout):
            with _progress() as progress:
                progress("Reading the plan" if from_file else "Compiling", 0, None)
                prepared = (
                    load_plan(targets[0], state_dir)
                    if from_file
                    else prepare(specs, state_dir, progress)
                )
            if not from_file:
                _print_plan(prepared.plan)
            prepared.plan.raise_if_unsafe(force)
            if not prepared.plan.has_changes:
                if from_file:
                    _print_plan(prepared.plan)
                if prepared.state_serial:
                    # Nothing to change, but what is applied should be running.
                    launcher.ensure_running(state_dir.path, prepared.state_serial)
                return
            if not from_file and not auto_approve:
                _confirm()
            with _progress() as progress:
                applied = apply(prepared, state_dir, progress)
                moving = _wait_for_moves(prepared.plan, state_dir, progress)
    except (StateError, UnsafePlanError, ZoneError, LaunchError) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    if moving:
        err.print(
            f"note: still moving the mail of {', '.join(moving)}; their hosts finish the move "
            "by themselves (see `mailwright logs HOST`)",
            markup=False,
        )
    counts = prepared.plan.counts()
    out.print(
        f"Apply complete! Resources: {counts[Action.CREATE]} added, "
        f"{counts[Action.UPDATE]} changed, "
        f"{counts[Action.DELETE]} destroyed. State serial {applied.serial}.",
        style="green bold",
        markup=False,
    )


@contextlib.contextmanager
def _progress() -> Iterator[StepProgress]:
    """Progress bars on stderr while the block runs, for the steps the work reports: one bar
    a step, the step before it put away (a pulsing bar while the share done is not known). On a
    terminal only; elsewhere nothing is shown and nothing runs. Printing waits until the block
    is left: while the bars show rich sends stdout to stderr."""
    # A real terminal, not rich's is_terminal: FORCE_COLOR (set in many CI jobs) asks for
    # colour, not for bars redrawn into a log.
    if not sys.stderr.isatty():
        yield _no_progress
        return
    with Progress(console=err, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                for task in tasks.values():
                    bar.update(task, visible=False)
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield update


def _wait_for_moves(plan: Plan, state_dir: StateDir, progress: StepProgress) -> list[str]:
    """Until the moved and renamed mailboxes' mail is at their new homes (or moves no more)."""
    stores = moving_stores(plan)
    if not stores:
        return []
    return launcher.wait_until_moved(
        state_dir.path, stores, lambda done, total: progress("Moving mailboxes", done, total)
    )


def _no_progress(step: str, done: int, total: int | None) -> None:
    """Where there is no terminal to show progress on."""


def _confirm() -> None:
    if not sys.stdin.isatty():
        err.print(
            "error: no terminal to confirm on; review with `mailwright plan` and pass "
            "--auto-approve, or apply a saved plan",
            markup=False,
        )
        raise typer.Exit(1)
    if typer.prompt("Apply these changes? Only 'yes' will be accepted", default="") != "yes":
        err.print("Apply cancelled.", markup=False)
        raise typer.Exit(1)


@app.command("force-unlock")
def force_unlock(state: StateOption = Path(DEFAULT_STATE_DIR)) -> None:
    """Remove a stale lock left by an apply that died."""
    holder = StateDir(state).force_unlock()
    if holder is None:
        out.print(f"{state} is not locked.", markup=False)
    else:
        out.print(
            f"Removed the lock of pid {holder.get('pid')} on {holder.get('host')} "
            f"(since {holder.get('since')}).",
            markup=False,
        )


@app.command()
def purge(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Retained stores to delete (ORG/ALIAS or ALIAS prefixes).", show_default=False
        ),
    ] = None,
    state: StateOption = Path(DEFAULT_STATE_DIR),
    purge_all: Annotated[bool, typer.Option("--all", help="Delete every retained store.")] = False,
) -> None:
    """Delete the retained mail of mailboxes removed from the spec. This cannot be undone."""
    if not names and not purge_all:
        err.print("error: name the retained stores to delete, or pass --all", markup=False)
        raise typer.Exit(1)
    state_dir = StateDir(state)
    try:
        with state_dir.locked():
            purged = apply_module.purge(state_dir, names or [])
    except StateError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    for path in purged:
        out.print(f"purged {path}", markup=False)


@app.command()
def send(
    sender: Annotated[str, typer.Option("--from", help="The sender's address (its mailbox).")],
    to: Annotated[list[str], typer.Option("--to", help="A recipient (repeatable).")],
    subject: Annotated[str, typer.Option("--subject", help="The subject line.")],
    cc: Annotated[
        list[str] | None, typer.Option("--cc", help="A copy recipient (repeatable).")
    ] = None,
    body: Annotated[str | None, typer.Option("--body", help="The message text.")] = None,
    body_file: Annotated[
        Path | None, typer.Option("--body-file", help="Read the text from FILE.")
    ] = None,
    attach: Annotated[
        list[Path] | None, typer.Option("--attach", help="Attach FILE (repeatable).")
    ] = None,
    password_env: Annotated[
        str | None, typer.Option("--password-env", help="Read the password from $VAR.")
    ] = None,
    state: StateOption = Path(DEFAULT_STATE_DIR),
) -> None:
    """Submit a message as a mailbox, in the internal format, to its home server."""
    if (body is None) == (body_file is None):
        err.print("error: give exactly one of --body and --body-file", markup=False)
        raise typer.Exit(1)
    text = body if body is not None else _read_text(body_file)
    password = (
        os.environ.get(password_env, "")
        if password_env
        else typer.prompt("Password", hide_input=True)
    )
    submission = Submission(sender, password, to, cc or [], subject, text, attach or [])
    try:
        message_id = submit(state, submission)
    except SubmitError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    print(message_id)


def _read_text(path: Path | None) -> str:
    assert path is not None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"error: cannot read {path}: {exc}", markup=False)
        raise typer.Exit(1) from None


@app.command()
def track(
    message_id: Annotated[str, typer.Argument(help="The message id `send` printed.")],
    state: StateOption = Path(DEFAULT_STATE_DIR),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Show a message's whole path across the hosts, from their tracking logs."""
    events = tracking.track(state, message_id)
    if not events:
        err.print(f"error: no host has seen {message_id}", markup=False)
        raise typer.Exit(1)
    for event in events:
        if as_json:
            print(json.dumps(event, sort_keys=True))
            continue
        details = ", ".join(
            f"{k}={v}"
            for k, v in sorted(event.items())
            if k not in ("time", "host", "event", "message_id")
        )
        out.print(
            f"{event['time']}  {event['host']:<12} {event['event']:<11} {details}", markup=False
        )


@app.command()
def status(
    state: StateOption = Path(DEFAULT_STATE_DIR),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every host of the running organization: pid, state, endpoints, queue, restarts."""
    current = launcher.status(state)
    if as_json:
        print(json.dumps(current, indent=2, sort_keys=True))
        return
    if current["pid"] is None:
        out.print(
            f"The runtime of {state} is not running (`mailwright apply` starts it).", markup=False
        )
        raise typer.Exit(1)
    out.print(f"supervisor pid {current['pid']}, state serial {current['serial']}", markup=False)
    for name, host in current["hosts"].items():
        services = " ".join(f"{k}={v}" for k, v in sorted(host["services"].items()))
        line = f"{name:<20} {host['state']:<9} pid {host['pid']}  queue {host['queue']}  {services}"
        if host["restarts"]:
            line += f"  restarted {host['restarts']}x ({host['last_error']})"
        out.print(line, markup=False)


@app.command()
def down(state: StateOption = Path(DEFAULT_STATE_DIR)) -> None:
    """Stop every host gracefully; queued mail stays on disk and resumes on the next apply."""
    if launcher.stop_runtime(state):
        out.print("The runtime is down.", markup=False)
    else:
        out.print("The runtime was not running.", markup=False)


@app.command()
def logs(
    host: Annotated[str, typer.Argument(help="The server name.")],
    state: StateOption = Path(DEFAULT_STATE_DIR),
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """Print a host's log."""
    path = state / "runtime" / "logs" / f"{host}.log"
    if not path.exists():
        err.print(f"error: no log for host {host} in {state}", markup=False)
        raise typer.Exit(1)
    with open(path, encoding="utf-8", errors="replace") as log:
        sys.stdout.write(log.read())
        while follow:
            line = log.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)


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
