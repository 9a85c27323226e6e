"""Commands on the running organization: send, track, status, down, logs."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mailwright.compiler.cli.errors import CommandError, cannot
from mailwright.compiler.cli.output import out
from mailwright.compiler.cli.params import DEFAULT_STATE, StateOption
from mailwright.runtime.mta import tracking
from mailwright.runtime.submit import Submission, submit
from mailwright.runtime.targets import local as launcher

group = typer.Typer()

# Fields every tracking event has, printed as columns rather than key=value details.
EVENT_COLUMNS = ("time", "host", "event", "message_id")


@group.command()
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
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Submit a message as a mailbox, in the internal format, to its home server."""
    if (body is None) == (body_file is None):
        raise CommandError("give exactly one of --body and --body-file")
    if body_file is not None:
        with cannot(f"read {body_file}"):
            body = body_file.read_text(encoding="utf-8")
    assert body is not None  # one of the two, checked above
    if not password_env and not sys.stdin.isatty():
        raise CommandError(
            "no terminal to ask the password on: put it in an environment variable and "
            "name it with --password-env VAR"
        )
    password = (
        os.environ.get(password_env, "")
        if password_env
        else typer.prompt("Password", hide_input=True)
    )
    submission = Submission(sender, password, to, cc or [], subject, body, attach or [])
    print(submit(state, submission))


@group.command()
def track(
    message_id: Annotated[str, typer.Argument(help="The message id `send` printed.")],
    state: StateOption = DEFAULT_STATE,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Show a message's whole path across the hosts, from their tracking logs."""
    events = tracking.track(state, message_id)
    if not events:
        raise CommandError(f"no host has seen {message_id}")
    for event in events:
        if as_json:
            print(json.dumps(event, sort_keys=True))
        else:
            out.print(_event_line(event), markup=False)


def _event_line(event: dict[str, Any]) -> str:
    details = ", ".join(f"{k}={v}" for k, v in sorted(event.items()) if k not in EVENT_COLUMNS)
    return f"{event['time']}  {event['host']:<12} {event['event']:<11} {details}"


@group.command()
def status(
    state: StateOption = DEFAULT_STATE,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every host of the running organization: pid, state, endpoints, queue, restarts."""
    current = launcher.status(state)
    if as_json:
        print(json.dumps(current, indent=2, sort_keys=True))
        if current["pid"] is None:
            raise typer.Exit(1)  # as the text form: scripts test the exit code
        return
    if current["pid"] is None:
        out.print(
            f"The runtime of {state} is not running (`mailwright apply` starts it).", markup=False
        )
        raise typer.Exit(1)
    out.print(f"supervisor pid {current['pid']}, state serial {current['serial']}", markup=False)
    for name, host in current["hosts"].items():
        out.print(_host_line(name, host), markup=False)


def _host_line(name: str, host: dict[str, Any]) -> str:
    services = " ".join(f"{k}={v}" for k, v in sorted(host["services"].items()))
    line = f"{name:<20} {host['state']:<9} pid {host['pid']}  queue {host['queue']}  {services}"
    if host["restarts"]:
        line += f"  restarted {host['restarts']}x ({host['last_error']})"
    return line


@group.command()
def down(state: StateOption = DEFAULT_STATE) -> None:
    """Stop every host gracefully; queued mail stays on disk and resumes on the next apply."""
    if launcher.stop_runtime(state):
        out.print("The runtime is down.", markup=False)
    else:
        out.print("The runtime was not running.", markup=False)


@group.command()
def logs(
    host: Annotated[str, typer.Argument(help="The server name.")],
    state: StateOption = DEFAULT_STATE,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """Print a host's log."""
    path = state / "runtime" / "logs" / f"{host}.log"
    if not path.exists():
        raise CommandError(f"no log for host {host} in {state}")
    with open(path, encoding="utf-8", errors="replace") as log:
        sys.stdout.write(log.read())
        while follow:
            line = log.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)
