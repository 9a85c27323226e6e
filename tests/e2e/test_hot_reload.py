"""Hot reload (issue 13): an apply that only changes mailboxes reaches the running host by reload.

Minasi's Arlington (store, IMS and DNS) runs under the real supervisor (MAILWRIGHT_RUNTIME=on)
with 20 readers, each with one large message. While 20 POP3 sessions (poplib) are in the middle
of RETR and Postfix's smtp-source keeps sending to the IMS, an apply adds 100 mailboxes and
changes Mark's password. Every POP3 session completes, no connection is refused, no host
restarts, the new mailboxes take mail as soon as apply returns, and the next logins see the new
password. Traffic goes only to the host's loopback address; processes are stopped by pid
(`mailwright down`).
"""

from __future__ import annotations

import json
import os
import poplib
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import argon2
import pytest

from tests.helpers import EPOCH, MAILWRIGHT, SEED_DIR

READERS = 20
NEWCOMERS = 100
LARGE = 512 * 1024  # octets of the message each reader is in the middle of retrieving
LINE = "a line of a message that takes a while to retrieve\n"
# Cheap argon2id parameters: the logins of this test must not wait for the seed's costly hashes.
_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
HASHES = {password: _HASHER.hash(password) for password in ("reader", "old-mark", "new-mark")}


def _mailbox(alias: str, password: str, surname: str) -> str:
    return (
        f"  - alias: {alias}\n    home_server: arlington\n    password: {HASHES[password]}\n"
        f"    given_name: {alias.capitalize()}\n    surname: {surname}\n"
    )


def _spec(mark_password: str, newcomers: int) -> str:
    """Minasi of the seed, with Mark's password, the readers and `newcomers` new mailboxes."""
    seed = (SEED_DIR / "minasi.yaml").read_text(encoding="utf-8")
    mailboxes = [_mailbox("mark", mark_password, "Minasi")]
    mailboxes += [_mailbox(f"reader{n:02}", "reader", "Reader") for n in range(READERS)]
    mailboxes += [_mailbox(f"new{n:03}", "reader", "Newcomer") for n in range(newcomers)]
    head, tail = seed[: seed.index("mailboxes:")], seed[seed.index("\ndns:") :]
    return head + "mailboxes:\n" + "".join(mailboxes) + tail


@dataclass
class Minasi:
    folder: Path

    @property
    def state(self) -> Path:
        return self.folder / "state"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MAILWRIGHT, *args, "--state", str(self.state)],
            cwd=self.folder,
            env={**os.environ, "MAILWRIGHT_RUNTIME": "on", "SOURCE_DATE_EPOCH": EPOCH},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def apply(self, spec: str) -> subprocess.CompletedProcess[str]:
        (self.folder / "minasi.yaml").write_text(spec, encoding="utf-8")
        return self.run("apply", "minasi.yaml", "--auto-approve")

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.run("status", "--json").stdout)
        return document

    def endpoint(self, service: str) -> tuple[str, int]:
        address = self.status()["hosts"]["Minasi/arlington"]["services"][service]
        host, _, port = address.rpartition(":")
        return host, int(port)

    def delivered(self, alias: str) -> int:
        maildir = self.state / "hosts" / "arlington" / "store" / alias / "Maildir"
        return sum(1 for sub in ("new", "cur") for _ in (maildir / sub).glob("*"))

    def each_holds_one(self, aliases: list[str]) -> bool:
        return all(self.delivered(alias) == 1 for alias in aliases)


@pytest.fixture
def minasi(tmp_path: Path) -> Iterator[Minasi]:
    running = Minasi(tmp_path)
    done = running.apply(_spec("old-mark", newcomers=0))
    assert done.returncode == 0, done.stderr
    yield running
    running.run("down")


def _send(smtp: tuple[str, int], recipients: list[str], body: str) -> dict[str, Any]:
    """One message to `recipients` over SMTP; whom the IMS refused."""
    message = EmailMessage()
    message["From"] = "sender@example.net"
    message["To"] = ", ".join(recipients[:3])
    message["Subject"] = "hot reload"
    message.set_content(body)
    with smtplib.SMTP(*smtp, timeout=30) as client:
        refused: dict[str, Any] = client.send_message(message, to_addrs=recipients)
    return refused


class Retrieval:
    """A POP3 session (poplib) stopped in the middle of RETR 1: the status line and a few lines
    of the message read, the rest still on its way."""

    def __init__(self, pop3: tuple[str, int], user: str) -> None:
        self.client = poplib.POP3(*pop3, timeout=30)
        self.client.user(user)
        self.client.pass_("reader")
        self.client.sock.sendall(b"RETR 1\r\n")
        status = self.client.file.readline()
        assert status.startswith(b"+OK"), status
        self.size = int(status.split()[1])  # octets, CRLF line ends, before dot-stuffing
        self.received = b"".join(self.client.file.readline() for _ in range(5))

    def finish(self) -> bytes:
        """The rest of the message, up to the terminating "." line; then QUIT's reply."""
        while (line := self.client.file.readline()) != b".\r\n":
            assert line, "the server closed the session in the middle of RETR"
            self.received += line
        assert self.client.quit().startswith(b"+OK")
        return self.received


@dataclass(eq=False)  # a thread hashes by identity
class Traffic(threading.Thread):
    """Rounds of smtp-source (4 sessions, each keeping its connection for several messages)
    and a fresh POP3 connection, until stopped; what failed, and when each round ran."""

    smtp_source: str
    smtp: tuple[str, int]
    pop3: tuple[str, int]
    stopping: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)
    rounds: list[tuple[float, float]] = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            began = time.monotonic()
            self._smtp_round()
            self._pop3_connection()
            self.rounds.append((began, time.monotonic()))

    def _smtp_round(self) -> None:
        host, port = self.smtp
        options = ["-d", "-s", "4", "-m", "16", "-l", "2048", "-f", "sender@example.net"]
        done = subprocess.run(
            [self.smtp_source, *options, "-t", "mark@minasi.com", f"{host}:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0 or done.stderr:
            self.failures.append(f"smtp-source: {done.returncode} {done.stderr.strip()}")
        else:
            self.sent += 16

    def _pop3_connection(self) -> None:
        try:
            client = poplib.POP3(*self.pop3, timeout=10)
            client.quit()
        except (OSError, poplib.error_proto) as exc:
            self.failures.append(f"POP3: {exc}")


def test_an_apply_of_mailboxes_reloads_under_load(
    minasi: Minasi,
    require_tool: Callable[[str], str],
    wait_until: Callable[[Callable[[], bool], float, str], None],
) -> None:
    smtp_source = require_tool("smtp-source")
    smtp, pop3 = minasi.endpoint("smtp"), minasi.endpoint("pop3")
    readers = [f"reader{n:02}" for n in range(READERS)]
    large = LINE * (LARGE // len(LINE))
    assert _send(smtp, [f"{r}@minasi.com" for r in readers], large) == {}
    wait_until(lambda: minasi.each_holds_one(readers), 30, "the large messages")
    retrievals = [Retrieval(pop3, reader) for reader in readers]
    before = minasi.status()
    traffic = Traffic(smtp_source, smtp, pop3)
    traffic.start()
    try:
        wait_until(lambda: len(traffic.rounds) >= 1, 30, "a first round of traffic")
        applying = time.monotonic()
        done = minasi.apply(_spec("new-mark", newcomers=NEWCOMERS))
        applied = time.monotonic()
        assert done.returncode == 0, done.stderr
        # Right after apply returns, every new mailbox takes mail.
        addresses = [f"new{n:03}@minasi.com" for n in range(NEWCOMERS)]
        assert _send(smtp, addresses, "welcome\n") == {}
        wait_until(lambda: len(traffic.rounds) >= 2, 30, "another round of traffic")
    finally:
        traffic.stopping.set()
        traffic.join(60)
    assert "reload Minasi/arlington (mailboxes, gal.json changed)" in done.stdout
    assert "restart" not in done.stdout
    assert traffic.failures == []
    assert any(began < applied and ended > applying for began, ended in traffic.rounds)
    for retrieval in retrievals:
        assert len(retrieval.finish().replace(b"\r\n..", b"\r\n.")) == retrieval.size

    after = minasi.status()
    pids = {name: host["pid"] for name, host in after["hosts"].items()}
    assert pids == {name: host["pid"] for name, host in before["hosts"].items()}
    assert after["hosts"]["Minasi/arlington"]["serial"] == after["serial"] == 2
    newcomers = [f"new{n:03}" for n in range(NEWCOMERS)]
    wait_until(lambda: minasi.each_holds_one(newcomers), 30, "the newcomers' mail")
    wait_until(lambda: minasi.delivered("mark") == traffic.sent, 30, "every message to Mark")
    _logs_in_with_the_new_password_only(pop3)


def _logs_in_with_the_new_password_only(pop3: tuple[str, int]) -> None:
    for password, works in (("old-mark", False), ("new-mark", True)):
        client = poplib.POP3(*pop3, timeout=10)
        client.user("mark")
        try:
            client.pass_(password)
        except poplib.error_proto as refused:
            assert not works, refused
            assert b"[AUTH]" in refused.args[0]
        else:
            assert works, f"{password} still works"
        client.quit()
