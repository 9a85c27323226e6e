"""The seam between the CLI and the runtime. The compiler package imports only this module
and the standard-library ones both sides share: the host contract (runtime/contract.py) and
the routing vocabulary (runtime/routing.py).

`apply` hands over the runtime actions its plan implies (host started, restarted, reloaded,
stopped) with the folder of the newly applied artifacts; this seam records them, one JSON line
each, in `<state>/runtime/actions.jsonl`, and waits until every host runs the new serial. The
plan asks `runtime_action` which action a host's change implies: the runtime owns the host
contract, and its supervisor follows the same rule (runtime/hostchange.py). `mailwright send` and
`mailwright track` reach the running hosts through it too.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailwright.runtime.contract import RuntimeAction, read_gal
from mailwright.runtime.hostchange import runtime_action
from mailwright.runtime.message import Address, Attachment, Recipient, encode, new_message
from mailwright.runtime.tracking import track
from mailwright.runtime.transfer import TransferError, endpoints_in, recipients_payload, send_frame

__all__ = [
    "LaunchError",
    "Submission",
    "SubmitError",
    "launch",
    "runtime_action",
    "start_runtime",
    "status",
    "stop_runtime",
    "submit",
    "track",
    "wait_until_moved",
]


Progress = Callable[[int, int], None]  # (hosts answering, hosts in all)


def launch(
    state_dir: Path,
    artifacts: Path,
    serial: int,
    actions: Sequence[RuntimeAction],
    progress: Progress | None = None,
) -> None:
    log = state_dir / "runtime" / "actions.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        for action in actions:
            record = {
                "serial": serial,
                "host": action.host,
                "action": action.action,
                "reason": action.reason,
                "artifacts": str(artifacts),
            }
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    ensure_running(state_dir, serial, progress)


def runtime_enabled() -> bool:
    return os.environ.get("MAILWRIGHT_RUNTIME", "on") != "off"


def ensure_running(state_dir: Path, serial: int, progress: Progress | None = None) -> None:
    """The runtime of `serial` up and answering (unless MAILWRIGHT_RUNTIME=off)."""
    if runtime_enabled():
        start_runtime(state_dir)
        wait_until_running(state_dir, serial, progress=progress)


def wait_until_moved(
    state_dir: Path,
    stores: Sequence[tuple[str, str]],
    progress: Progress | None = None,
    patience: float = 30.0,
) -> list[str]:
    """Until the old homes' folders (server, alias) of moved or renamed mailboxes are gone,
    which their hosts remove once every message is at the new home (see mailboxmove). Gives
    up after `patience` seconds without a message moved; returns the folders still there (their
    hosts finish by themselves)."""
    if not runtime_enabled():
        return []
    folders = [state_dir / "hosts" / server / "store" / alias for server, alias in stores]
    total = remaining = _messages_in(folders)
    deadline = time.monotonic() + patience
    while (left := [f for f in folders if f.exists()]) and time.monotonic() < deadline:
        if progress is not None:
            progress(total - remaining, total)
        time.sleep(0.1)
        if (now := _messages_in(left)) < remaining:
            remaining, deadline = now, time.monotonic() + patience
    return [f"{f.parent.parent.name}/{f.name}" for f in folders if f.exists()]


def _messages_in(folders: Sequence[Path]) -> int:
    return sum(_entries(folder / "Maildir" / sub) for folder in folders for sub in ("new", "cur"))


def _entries(folder: Path) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:  # moved away, or removed meanwhile
        return 0


class LaunchError(Exception):
    """The runtime did not come up as applied; the message names the hosts and why."""


def supervisor_pid(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / "runtime" / "supervisor.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_runtime(state_dir: Path) -> None:
    """Start the supervisor in the background (it outlives the CLI), or have it look again."""
    pid = supervisor_pid(state_dir)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
        return
    runtime = state_dir / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    with open(runtime / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "mailwright.runtime.supervisor", "--state", str(state_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def status(state_dir: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads((state_dir / "runtime" / "status.json").read_text())
    except (OSError, ValueError):
        return {"pid": None, "serial": None, "hosts": {}}
    document["pid"] = supervisor_pid(state_dir)
    return document


def wait_until_running(
    state_dir: Path, serial: int, timeout: float = 60.0, progress: Progress | None = None
) -> dict[str, Any]:
    """Until every host runs `serial` (started on it, or reloaded it) and answers on every
    endpoint: then the new mailboxes take mail. LaunchError after `timeout`, or at once when a
    host could not reload it or stopped."""
    deadline = time.monotonic() + timeout
    while True:
        current = status(state_dir)
        hosts = current["hosts"]
        waiting = {n: h for n, h in hosts.items() if not _runs(h, serial) or not _answers(h)}
        if progress is not None and current["serial"] == serial:
            progress(len(hosts) - len(waiting), len(hosts))
        if current["serial"] == serial and hosts and not waiting:
            return current
        if current["serial"] == serial and (failed := _failures(waiting, serial)):
            why = "; ".join(f"{n}: {error}" for n, error in failed.items())
            raise LaunchError(f"the runtime did not come up: {why} (see `mailwright logs`)")
        if time.monotonic() > deadline:
            why = "; ".join(
                f"{n}: {h['state']} {h['last_error']}".strip() for n, h in waiting.items()
            )
            raise LaunchError(f"the runtime did not come up: {why or 'no supervisor'}")
        time.sleep(0.2)


def _runs(host: dict[str, Any], serial: int) -> bool:
    # A supervisor of an earlier mailwright, still running, reports no serial per host.
    return bool(host["state"] == "running" and host.get("serial", serial) == serial)


def _failures(waiting: dict[str, dict[str, Any]], serial: int) -> dict[str, str]:
    """Why hosts will not run `serial`: stopped with an error, or their reload of it failed."""
    failed = {n: h["last_error"] for n, h in waiting.items() if h["state"] == "stopped"}
    for name, host in waiting.items():
        if (refused := host.get("reload_failed")) and refused["serial"] == serial:
            failed[name] = f"reload of serial {serial} failed: {refused['error']}"
    return {n: error for n, error in failed.items() if error}


def _answers(host: dict[str, Any]) -> bool:
    for endpoint in host["services"].values():
        address, _, port = endpoint.rpartition(":")
        try:
            with socket.create_connection((address, int(port)), timeout=1):
                pass
        except OSError:
            return False
    return True


def stop_runtime(state_dir: Path, timeout: float = 30.0) -> bool:
    """Stop every host gracefully (queues stay on disk), then the supervisor."""
    pid = supervisor_pid(state_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while supervisor_pid(state_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


class SubmitError(Exception):
    """A message that could not be submitted; the message says why, in one line."""


@dataclass(frozen=True)
class Submission:
    sender: str
    password: str
    to: Sequence[str]
    cc: Sequence[str]
    subject: str
    body: str
    attachments: Sequence[Path] = ()


def parse_address(text: str) -> Address:
    """`TYPE:address`, or the type recognized from its shape (user@domain, c=..;.., NET/PO/BOX)."""
    prefix, sep, rest = text.partition(":")
    if sep and prefix.upper() in ("SMTP", "X400", "MS"):
        return Address(rest, type=prefix.upper())
    kind = "SMTP" if "@" in text else "X400" if "=" in text else "MS"
    return Address(text, type=kind)


def _home_of(state_dir: Path, sender: str) -> tuple[str, str, str, str, str]:
    """(organization, home server, alias, display name, primary SMTP address) of the mailbox
    owning `sender` (any of its addresses, or its alias), from the applied artifacts."""
    try:
        serial = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))["serial"]
    except (OSError, ValueError, KeyError):
        raise SubmitError(
            f"nothing is applied in {state_dir}; run `mailwright apply` first"
        ) from None
    wanted = sender.casefold()
    for gal_file in sorted((state_dir / "artifacts" / str(serial)).glob("*/gal.json")):
        for row in read_gal(gal_file):
            addresses = [*row.primary.values(), *(s.partition(":")[2] for s in row.secondary)]
            if wanted in {a.casefold() for a in addresses} | {row.alias.casefold()}:
                return (
                    gal_file.parent.name,
                    row.home_server,
                    row.alias,
                    row.display_name,
                    row.primary["SMTP"],
                )
    raise SubmitError(f"no mailbox has the address {sender}")


def submit(state_dir: Path, submission: Submission) -> str:
    """Submit in the internal format to the sender's home server (the seed's step 1);
    returns the message id once the home server's queue holds it."""
    organization, home, alias, display_name, address = _home_of(state_dir, submission.sender)
    endpoint = endpoints_in(state_dir)(home)
    if endpoint is None:
        raise SubmitError(f"{organization}'s server {home} is not running")
    try:
        attachments = tuple(
            Attachment(
                p.name,
                mimetypes.guess_type(p.name)[0] or "application/octet-stream",
                p.read_bytes(),
            )
            for p in submission.attachments
        )
    except OSError as exc:
        raise SubmitError(f"cannot read attachment: {exc}") from None
    recipients = [Recipient(parse_address(a), "to") for a in submission.to]
    recipients += [Recipient(parse_address(a), "cc") for a in submission.cc]
    # The mailbox sends as its primary SMTP address, whichever of its addresses named it.
    message = new_message(
        Address(address, display_name),
        recipients=recipients,
        subject=submission.subject,
        body=submission.body,
        attachments=attachments,
        domain=address.rpartition("@")[2],
    )
    document = {
        "user": alias,
        "password": submission.password,
        "message": encode(message),
        "rcpt": recipients_payload([r.address for r in recipients]),
    }
    try:
        asyncio.run(send_frame(*endpoint, "SUBMIT", document))
    except TransferError as exc:
        raise SubmitError(f"{home} refused the message: {exc}") from None
    return message.message_id
