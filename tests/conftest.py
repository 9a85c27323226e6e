"""Real mailwright host processes for the tests that run them (tests/runtime, tests/e2e).

A host is `python -m mailwright.runtime.host` run from its bundle (tests/helpers.py
host_bundle: each host of the compiled tree on a loopback address of its own), started with
subprocess.Popen and stopped by its pid (SIGTERM, then SIGKILL) when the test module ends. Its
stderr goes to `<state>/hosts/<server>/stderr.log`, so a failure can show what the host said.
Outside tools (curl, swaks, Postfix's smtp-source) are found with `require_tool`, for every test
folder. What runs or cleans up is handed out as fixtures; their types, the paths and the plain
functions are in tests/helpers.py.
"""

from __future__ import annotations

import json
import os
import poplib
import select
import signal
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.helpers import (
    MAILWRIGHT,
    Endpoint,
    Mailwright,
    Messages,
    Process,
    RequireTool,
    WaitUntil,
    host_command,
    parse_message,
    require_tool,
    wait_until,
)

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def _stderr_log(config: Path, state: Path) -> Path:
    server: str = json.loads(config.read_text(encoding="utf-8"))["server"]["name"]
    folder = state / "hosts" / server
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "stderr.log"


def _start(config: Path, state: Path) -> Process:
    log = _stderr_log(config, state)
    with open(log, "a", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            host_command(config, state),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
        line = process.stdout.readline() if readable else ""
        if line.startswith("ready "):
            return process
        if not line and process.poll() is not None:
            break
    _stop(process)
    pytest.fail(f"{config.stem} did not start; it said:\n{log.read_text(encoding='utf-8')}")


def _stop(process: Process) -> None:
    """SIGTERM, then SIGKILL if the host does not stop in time; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
    if process.stdout is not None:
        process.stdout.close()


def _kill(process: Process) -> None:
    """kill -9: no chance to finish anything."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(STOP_TIMEOUT)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="module")
def start_host() -> Iterator[Callable[[Path, Path], Process]]:
    """Start a host from its compiled config with a state directory; returns once it is ready.
    Every host still running when the module ends is stopped; a host that logged a traceback
    (a lost MTA worker or session task) fails the module."""
    started: list[tuple[Process, Path]] = []

    def start(config: Path, state: Path) -> Process:
        started.append((_start(config, state), _stderr_log(config, state)))
        return started[-1][0]

    yield start
    for process, _ in started:
        _stop(process)
    for log in sorted({log for _, log in started}):
        text = log.read_text(encoding="utf-8")
        assert "Traceback" not in text, f"{log} says:\n{text}"


@pytest.fixture(scope="session")
def stop_host() -> Callable[[Process], None]:
    return _stop


@pytest.fixture(scope="session")
def kill_host() -> Callable[[Process], None]:
    return _kill


@pytest.fixture(scope="session")
def mailwright() -> Mailwright:
    """Run the `mailwright` CLI: `mailwright(*args, env={...})` adds `env` to os.environ.
    `apply` leaves the runtime alone (MAILWRIGHT_RUNTIME=off): the tests run the hosts."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MAILWRIGHT, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "MAILWRIGHT_RUNTIME": "off", **(env or {})},
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def endpoint() -> Endpoint:
    """Where a running host's service (`pop3`, `transfer`) listens, from its endpoints.json."""

    def lookup(state: Path, server: str, service: str) -> tuple[str, int]:
        endpoints = json.loads((state / "hosts" / server / "endpoints.json").read_text())
        host, _, port = endpoints[service].rpartition(":")
        return host, int(port)

    return lookup


@pytest.fixture(scope="session")
def pop3_messages(
    endpoint: Endpoint,
) -> Callable[[Path, str, str, str], list[EmailMessage]]:
    """Every message of a mailbox over POP3 (`state, server, user, password`), parsed; nothing
    is deleted."""

    def fetch(state: Path, server: str, user: str, password: str) -> list[EmailMessage]:
        client = poplib.POP3(*endpoint(state, server, "pop3"), timeout=10)
        try:
            client.user(user)
            client.pass_(password)
            count, _ = client.stat()
            return [
                parse_message(b"\r\n".join(client.retr(n)[1]) + b"\r\n")
                for n in range(1, count + 1)
            ]
        finally:
            client.quit()

    return fetch


@pytest.fixture(scope="session")
def maildir_messages() -> Messages:
    """Every message in a mailbox's Maildir (`state, server, alias`), read from the files."""

    def read(state: Path, server: str, alias: str) -> list[EmailMessage]:
        maildir = state / "hosts" / server / "store" / alias / "Maildir"
        files = [p for sub in ("new", "cur") for p in (maildir / sub).glob("*") if p.is_file()]
        return [parse_message(p.read_bytes()) for p in sorted(files)]

    return read


@pytest.fixture(name="wait_until", scope="session")
def _wait_until() -> WaitUntil:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    return wait_until


@pytest.fixture(scope="session")
def rcpt() -> Callable[[tuple[str, int], str], int]:
    """The reply code an SMTP server (`(host, port)`) gives to RCPT TO a recipient."""

    def probe(smtp: tuple[str, int], recipient: str) -> int:
        with smtplib.SMTP(*smtp, timeout=10) as client:
            client.ehlo()
            client.mail("sender@example.net")
            code, _ = client.rcpt(recipient)
            return code

    return probe


@pytest.fixture(name="require_tool")
def _require_tool() -> RequireTool:
    return require_tool


@pytest.fixture(autouse=True, scope="session")
def _no_background_runtime() -> Iterator[None]:
    """`apply` starts the background runtime; tests that want it set MAILWRIGHT_RUNTIME=on and
    stop it with `mailwright down`, the others run hosts themselves or none at all. Session-wide,
    so module-scoped fixtures that apply are covered too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAILWRIGHT_RUNTIME", "off")
        yield
