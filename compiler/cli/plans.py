"""Commands that change the applied state: plan, apply, force-unlock, purge; with their
progress bars, the confirmation prompt and the wait for moved mailboxes."""

from __future__ import annotations

import contextlib
import enum
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID

from mailwright.compiler import apply as apply_module
from mailwright.compiler import plan_report
from mailwright.compiler.apply import (
    PreparedPlan,
    StepProgress,
    apply,
    load_plan,
    moving_stores,
    prepare,
    save_plan,
)
from mailwright.compiler.cli.errors import CommandError, cannot
from mailwright.compiler.cli.output import err, out, write_styled
from mailwright.compiler.cli.params import DEFAULT_STATE, Specs, StateOption
from mailwright.compiler.cli.spec import load
from mailwright.compiler.plan import Action, Plan
from mailwright.compiler.state import StateDir
from mailwright.runtime.targets import local as launcher
from mailwright.schema import LoadedSpec

group = typer.Typer()


PLAN_FILE_START = b'{"checksum": '


class Runtime(enum.StrEnum):
    """Where the hosts run (runtime/targets/placement.py RUNTIMES)."""

    LOCAL = "local"
    NETNS = "netns"


LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", help="Seconds to wait for another apply's lock.")
]


class PlanFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


@group.command()
def plan(
    specs: Specs,
    state: StateOption = DEFAULT_STATE,
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
    if as_json and output not in (PlanFormat.TEXT, PlanFormat.JSON):
        raise CommandError(f"--json and --format {output} ask for two formats; give one")
    if summary and (as_json or output is not PlanFormat.TEXT):
        raise CommandError("--summary is text only; drop --json or --format")
    state_dir = StateDir(state)
    with _progress() as progress:
        progress("Loading specs", 0, None)
        prepared = prepare(load(specs, state_dir.import_cache), state_dir, progress)
    _print_plan(prepared.plan, PlanFormat.JSON if as_json else output, summary)
    if out_file is not None:
        with cannot(f"save the plan to {out_file}"):
            save_plan(prepared, out_file)
        err.print(
            f"Saved the plan to {out_file}; apply it with `mailwright apply {out_file}`.",
            markup=False,
        )
    if (detailed_exitcode or expect_no_changes) and prepared.plan.has_changes:
        raise typer.Exit(2)


def _print_plan(result: Plan, output: PlanFormat = PlanFormat.TEXT, summary: bool = False) -> None:
    if summary:
        for line in plan_report.render_summary(result):
            print(line)
    elif output is PlanFormat.JSON:
        print(plan_report.render_json(result))
    elif output is PlanFormat.MARKDOWN:
        sys.stdout.write(plan_report.render_markdown(result))
    else:
        write_styled(plan_report.render_text(result))


@group.command("apply")
def apply_command(
    targets: Annotated[
        list[Path], typer.Argument(help="Spec files, or one saved plan file.", show_default=False)
    ],
    state: StateOption = DEFAULT_STATE,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Apply a plan that exceeds the safety limits.")
    ] = False,
    lock_timeout: LockTimeout = 0.0,
    runtime: Annotated[
        Runtime | None,
        typer.Option(
            "--runtime",
            help="Run the hosts on loopback (local) or each in a network namespace at its "
            "spec address (netns; Linux, root). Default: as they run now, else local.",
        ),
    ] = None,
    rotate_ca: Annotated[
        bool,
        typer.Option(
            "--rotate-ca",
            help="A new CA for every applied organization, and new host certificates from it "
            "(the old CA stays trusted until the next rotation).",
        ),
    ] = False,
) -> None:
    """Apply specs (after showing the plan and asking) or a saved plan (exactly, no prompt)."""
    launcher.runtime_enabled()  # a MAILWRIGHT_RUNTIME that is neither on nor off: said first
    state_dir = StateDir(state)
    chosen = runtime.value if runtime else launcher.running_runtime(state) or "local"
    target = launcher.LocalTarget(state_dir.path, chosen)
    # A saved plan is applied exactly as reviewed: it is neither shown again nor confirmed.
    plan_file = targets[0] if len(targets) == 1 and not _is_spec(targets[0]) else None
    # Specs are read before the lock is taken: another apply need not wait for that.
    specs = [] if plan_file else _load_specs(targets, state_dir)
    with state_dir.locked(lock_timeout):
        prepared = _prepare(specs, plan_file, state_dir)
        prepared.plan.raise_if_unsafe(force)
        # A rotation is a new serial even without a change: its bundles carry the new CA.
        if not prepared.plan.has_changes and not rotate_ca:
            if plan_file is not None:
                _print_plan(prepared.plan)
            if prepared.state_serial:
                # Nothing to change, but what is applied should be running.
                target.ensure_running(prepared.state_serial)
            return
        if plan_file is None and not auto_approve:
            _confirm()
        with _progress() as progress:
            serial = apply(prepared, state_dir, progress, target, rotate_ca=rotate_ca).serial
            moving = _wait_for_moves(prepared.plan, state_dir, progress)
    _print_applied(prepared.plan, state_dir, serial, moving)


def _is_spec(path: Path) -> bool:
    """A spec unless it is a saved plan, whatever the file's name: `plan --out` writes a JSON
    object with sorted keys, which begins with its checksum."""
    try:
        with open(path, "rb") as handle:
            return not handle.read(len(PLAN_FILE_START)).startswith(PLAN_FILE_START)
    except OSError:
        return True  # the spec loader says what is wrong with it, at its place


def _load_specs(targets: list[Path], state_dir: StateDir) -> list[LoadedSpec]:
    with _progress() as progress:
        progress("Loading specs", 0, None)
        return load(targets, state_dir.import_cache)


def _prepare(specs: list[LoadedSpec], plan_file: Path | None, state_dir: StateDir) -> PreparedPlan:
    """The saved plan, or the specs' plan against the state, shown for the prompt to ask."""
    with _progress() as progress:
        progress("Reading the plan" if plan_file else "Compiling", 0, None)
        if plan_file is not None:
            return load_plan(plan_file, state_dir)
        prepared = prepare(specs, state_dir, progress)
    _print_plan(prepared.plan)
    return prepared


def _print_applied(result: Plan, state_dir: StateDir, serial: int, moving: list[str]) -> None:
    if moving:
        err.print(
            f"note: still moving the mail of {', '.join(moving)}; their hosts finish the move "
            "by themselves (see `mailwright logs HOST`)",
            markup=False,
        )
    for kept in sorted(state_dir.retained.glob(f"*/*.{serial}")):
        name = f"{kept.parent.name}/{kept.name.rpartition('.')[0]}"
        err.print(
            f"note: the mail of {name} is kept in {kept} (`mailwright purge {name}` deletes it)",
            markup=False,
        )
    counts = result.counts()
    out.print(
        f"Apply complete! Resources: {counts[Action.CREATE]} added, "
        f"{counts[Action.UPDATE]} changed, "
        f"{counts[Action.DELETE]} destroyed. State serial {serial}.",
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


def _no_progress(step: str, done: int, total: int | None) -> None:
    """Where there is no terminal to show progress on."""


def _wait_for_moves(plan: Plan, state_dir: StateDir, progress: StepProgress) -> list[str]:
    """Until the moved and renamed mailboxes' mail is at their new homes (or moves no more)."""
    stores = moving_stores(plan)
    if not stores:
        return []
    return launcher.wait_until_moved(
        state_dir.path, stores, lambda done, total: progress("Moving mailboxes", done, total)
    )


def _confirm() -> None:
    if not sys.stdin.isatty():
        raise CommandError(
            "no terminal to confirm on; review with `mailwright plan` and pass "
            "--auto-approve, or apply a saved plan"
        )
    if typer.prompt("Apply these changes? Only 'yes' will be accepted", default="") != "yes":
        err.print("Apply cancelled.", markup=False)
        raise typer.Exit(1)


@group.command("force-unlock")
def force_unlock(state: StateOption = DEFAULT_STATE) -> None:
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


@group.command()
def retained(state: StateOption = DEFAULT_STATE) -> None:
    """List the mail kept of mailboxes removed from the spec (what `purge` deletes)."""
    state_dir = StateDir(state)
    stores = apply_module.retained(state_dir)
    if not stores:
        out.print(f"Nothing is retained in {state}.", markup=False)
    for path, messages in stores:
        out.print(f"{path.parent.name}/{path.name}  {messages} messages  {path}", markup=False)


@group.command()
def purge(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Retained stores to delete: ALIAS, ORG/ALIAS or ORG/ALIAS.SERIAL.",
            show_default=False,
        ),
    ] = None,
    state: StateOption = DEFAULT_STATE,
    purge_all: Annotated[bool, typer.Option("--all", help="Delete every retained store.")] = False,
) -> None:
    """Delete the retained mail of mailboxes removed from the spec. This cannot be undone."""
    if not names and not purge_all:
        raise CommandError("name the retained stores to delete, or pass --all")
    state_dir = StateDir(state)
    if not state_dir.state_file.is_file():
        raise CommandError(f"{state} holds no applied state; nothing to purge")
    with state_dir.locked():
        purged = apply_module.purge(state_dir, names or [])
    for path in purged:
        out.print(f"purged {path}", markup=False)
