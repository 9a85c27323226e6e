"""IMS inbound workers: several processes on the host's SMTP port, queueing into its MTA.

Arlington of the seed runs with two workers (MAILWRIGHT_IMS_WORKERS=2); Python's smtplib is the
remote client. A worker killed mid-burst loses no acknowledged message and is replaced; the
workers follow the host's SIGHUP and die with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailwright.runtime.formats.message import Address
from mailwright.runtime.formats.parse import from_rfc5322
from mailwright.runtime.mta.queue import MessageQueue, QueueEntry
from tests.helpers import SEED_DIR, Process, bundle_applied

WORKERS = 2


@dataclass
class Arlington:
    state: Path
    spec: Path
    host: Process
    address: tuple[str, int]

    def workers(self) -> list[int]:
        """The host's live worker processes, by pid (from /proc, not by name)."""
        children = Path(f"/proc/{self.host.pid}/task/{self.host.pid}/children").read_text()
        return [int(pid) for pid in children.split() if _alive(int(pid))]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


@pytest.fixture
def arlington(  # noqa: PLR0917 - fixtures
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mailwright: Callable[..., subprocess.CompletedProcess[str]],
    start_host: Callable[[Path, Path], Process],
    endpoint: Callable[[Path, str, str], tuple[str, int]],
    wait_until: Callable[[Callable[[], bool], float, str], None],
) -> Iterator[Arlington]:
    spec = tmp_path / "minasi.yaml"
    shutil.copy(SEED_DIR / "minasi.yaml", spec)
    state = tmp_path / "state"
    done = mailwright("apply", str(spec), "--state", str(state), "--auto-approve")
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("MAILWRIGHT_IMS_WORKERS", str(WORKERS))
    host = start_host(state / "artifacts/1/Minasi/hosts/arlington.json", state)
    found = Arlington(state, spec, host, endpoint(state, "arlington", "smtp"))
    wait_until(lambda: len(found.workers()) == WORKERS, 20, "the IMS workers")
    yield found


def _message(n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "sender@example.net"
    message["To"] = "mark@minasi.com"
    message["Subject"] = f"burst {n}"
    message["Message-ID"] = f"<burst-{n}@example.net>"
    message.set_content(f"message {n}\n")
    return message


@dataclass(eq=False)  # a thread hashes by identity
class Burst(threading.Thread):
    """Messages one after another, each on its own connection; which ones got a 250."""

    address: tuple[str, int]
    count: int
    acknowledged: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        for n in range(self.count):
            try:
                with smtplib.SMTP(*self.address, timeout=10) as client:
                    client.send_message(_message(n))
            except (OSError, smtplib.SMTPException):
                continue  # not acknowledged: the sender keeps it and tries again
            self.acknowledged.append(n)


def _ids(messages: list[EmailMessage]) -> list[str]:
    return sorted(str(m["Message-ID"]) for m in messages)


def test_a_worker_killed_mid_burst_loses_no_acknowledged_message(
    arlington: Arlington,
    wait_until: Callable[[Callable[[], bool], float, str], None],
    maildir_messages: Callable[[Path, str, str], list[EmailMessage]],
) -> None:
    burst = Burst(arlington.address, 60)
    burst.start()
    wait_until(lambda: len(burst.acknowledged) >= 10, 30, "the first messages")
    victim = arlington.workers()[0]
    os.kill(victim, signal.SIGKILL)
    burst.join(60)
    expected = sorted(f"<burst-{n}@example.net>" for n in burst.acknowledged)
    assert len(expected) > 10

    def delivered() -> list[str]:
        return _ids(maildir_messages(arlington.state, "arlington", "mark"))

    wait_until(lambda: set(expected) <= set(delivered()), 30, "every acknowledged message")
    got = delivered()
    assert len(got) == len(set(got))  # none twice
    # The one in flight when the worker died (the burst sends one at a time) may have been
    # queued but never acknowledged: delivered (its sender would send it again), or not.
    assert len(set(got) - set(expected)) <= 1
    wait_until(lambda: len(arlington.workers()) == WORKERS, 20, "a replacement worker")
    assert victim not in arlington.workers()
    with smtplib.SMTP(*arlington.address, timeout=10) as client:
        assert client.send_message(_message(1000)) == {}


def test_the_workers_follow_the_hosts_reload(
    arlington: Arlington,
    mailwright: Callable[..., subprocess.CompletedProcess[str]],
    rcpt: Callable[[tuple[str, int], str], int],
) -> None:
    newcomer = "newbie@minasi.com"
    # Several connections, so that each worker answers some of them.
    assert {rcpt(arlington.address, newcomer) for _ in range(8)} == {550}
    text = arlington.spec.read_text(encoding="utf-8")
    mark = text[text.index("  - alias: mark") : text.index("  - alias: paula")]
    arlington.spec.write_text(
        text.replace(mark, mark + mark.replace("mark", "newbie").replace("Mark", "Newbie")),
        encoding="utf-8",
    )
    done = mailwright(
        "apply", str(arlington.spec), "--state", str(arlington.state), "--auto-approve"
    )
    assert done.returncode == 0, done.stderr
    bundle_applied(arlington.state, "Minasi", "arlington")
    arlington.host.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    codes: set[Any] = set()
    while time.monotonic() < deadline:
        codes = {rcpt(arlington.address, newcomer) for _ in range(8)}
        if codes == {250}:
            break
        time.sleep(0.2)
    assert codes == {250}


def test_the_workers_die_with_the_host(
    arlington: Arlington,
    kill_host: Callable[[Process], None],
    wait_until: Callable[[Callable[[], bool], float, str], None],
) -> None:
    workers = arlington.workers()
    kill_host(arlington.host)
    wait_until(lambda: not any(_alive(pid) for pid in workers), 10, "the workers to exit")


def _queued_unnamed(queue: MessageQueue, n: int) -> Path:
    """Message n written into Arlington's queue and made durable, its rename into place lost:
    what a power loss can leave of an entry whose 250 went out."""
    message = from_rfc5322(_message(n).as_bytes(), "sender@example.net", ["mark@minasi.com"])
    entry = QueueEntry.new(message, [Address("mark@minasi.com")], "smtp 192.0.2.1")
    return Path(queue._write(entry, sync=True))


def test_a_queued_entry_whose_rename_was_lost_is_delivered_at_start(
    arlington: Arlington,
    kill_host: Callable[[Process], None],
    start_host: Callable[[Path, Path], Process],
    wait_until: Callable[[Callable[[], bool], float, str], None],
    maildir_messages: Callable[[Path, str, str], list[EmailMessage]],
) -> None:
    workers = arlington.workers()
    kill_host(arlington.host)
    # Its workers hold the SMTP port until they see the host gone; the next host binds it.
    wait_until(lambda: not any(_alive(pid) for pid in workers), 10, "the workers to exit")
    queue = MessageQueue(arlington.state / "hosts" / "arlington" / "queue")
    _queued_unnamed(queue, 7)
    torn = _queued_unnamed(queue, 8)
    torn.write_bytes(torn.read_bytes()[:200])  # never acknowledged: its write was not whole
    start_host(arlington.state / "artifacts/1/Minasi/hosts/arlington.json", arlington.state)

    def delivered() -> list[str]:
        return _ids(maildir_messages(arlington.state, "arlington", "mark"))

    wait_until(lambda: "<burst-7@example.net>" in delivered(), 30, "the recovered entry")
    assert "<burst-8@example.net>" not in delivered()
    assert not list(queue.root.glob(".*.tmp"))
    log = (arlington.state / "hosts" / "arlington" / "stderr.log").read_text()
    assert "1 entries recovered after a crash" in log
