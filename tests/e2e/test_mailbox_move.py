"""Move Mailbox between two real store hosts, over the transfer protocol, with mail arriving.

Acme's Ann lives on alpha with 500 messages (some read: in cur/ with flags). Her home_server
becomes beta; the plan says how much mail moves; after the apply the hosts reload and alpha
sends her mail to beta in MOVE frames while an SMTP client (smtplib) keeps sending mail to her
through alpha's IMS. At the end every message is at beta exactly once, under its own file name
(so its POP3 UIDL and its flags stay), alpha holds nothing of Ann's, and every acknowledged new
message was delivered once. The same with alpha or beta killed (kill -9) in the middle of the
move and started again.
"""

from __future__ import annotations

import asyncio
import os
import poplib
import signal
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import argon2
import pytest

from mailwright.runtime.formats.message import Address, Recipient, encode, new_message
from mailwright.runtime.mta.transfer import recipients_payload, send_frame
from mailwright.runtime.store.mailstore import MailStore, message_uid
from tests.helpers import (
    Endpoint,
    Mailwright,
    Process,
    WaitUntil,
    bundle_applied,
    transfer_tls,
)

SEEDED = 500
SPEC = """\
organization:
  name: Acme
  domains: [acme.test]
sites:
  - name: Main
    addressing:
      smtp: "%m@acme.test"
      x400: {{country: US, admd: " ", prmd: ACME}}
      msmail: {{network: ACME, postoffice: MAIN}}
    servers:
      - {{name: alpha, fqdn: alpha.acme.test, ipv4: 10.9.0.1, roles: [store, ims]}}
      - {{name: beta, fqdn: beta.acme.test, ipv4: 10.9.0.2, roles: [store]}}
mailboxes:
  - {{alias: {ann}, home_server: {ann_home}, password: "{hash}", given_name: Ann, surname: A{was}}}
  - {{alias: al, home_server: alpha, password: "{hash}", given_name: Al, surname: B}}
"""
PASSWORD = "pw-move"

# folder/name -> bytes of every message file in a Maildir
Files = dict[str, bytes]


@pytest.fixture(scope="module")
def password_hash() -> str:
    return argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)


def maildir_files(state: Path, server: str, alias: str) -> Files:
    maildir = state / "hosts" / server / "store" / alias / "Maildir"
    return {
        f"{sub}/{path.name}": path.read_bytes()
        for sub in ("new", "cur")
        for path in sorted((maildir / sub).glob("*"))
    }


def seed_mailbox(state: Path, count: int) -> Files:
    """Ann's mail on alpha before the move, every fifth message read (cur/, flag S)."""
    store = MailStore(state / "hosts" / "alpha" / "store")
    for i in range(count):
        text = f"Message-ID: <seed-{i}@acme.test>\nSubject: seed {i}\n\nbody {i}\n" + "x" * i
        store.deliver("ann", f"<seed-{i}@acme.test>", text.encode())
    maildir = state / "hosts" / "alpha" / "store" / "ann" / "Maildir"
    for path in sorted((maildir / "new").iterdir())[::5]:
        path.rename(maildir / "cur" / f"{path.name}:2,S")
    return maildir_files(state, "alpha", "ann")


class Sender(threading.Thread):
    """An SMTP client (smtplib) on the internet sends mail to Ann through alpha's IMS until told
    to stop; `acknowledged` holds the Message-IDs alpha answered 250 for."""

    def __init__(self, state: Path, endpoint: Endpoint) -> None:
        super().__init__(daemon=True)
        self.state, self.endpoint = state, endpoint
        self.acknowledged: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            message_id = f"<during-{len(self.acknowledged)}@example.org>"
            text = f"Message-ID: {message_id}\r\nSubject: during the move\r\n\r\nhello\r\n"
            try:
                with smtplib.SMTP(*self.endpoint(self.state, "alpha", "smtp"), timeout=10) as smtp:
                    smtp.sendmail("someone@example.org", ["ann@acme.test"], text)
            except (smtplib.SMTPException, OSError):
                time.sleep(0.05)  # alpha is down (killed): no 250, nothing owed
                continue
            self.acknowledged.append(message_id)
            time.sleep(0.01)


def submission(to: str) -> tuple[str, dict[str, object]]:
    """A SUBMIT frame's document of a message from Al to `to`, and the message's id."""
    message = new_message(
        Address("al@acme.test", "Al"),
        recipients=[Recipient(Address(to))],
        subject="sent during the move",
        body="hello\n",
        domain="acme.test",
    )
    return message.message_id, {
        "user": "al",
        "password": PASSWORD,
        "message": encode(message),
        "rcpt": recipients_payload([Address(to)]),
    }


class Move:
    """Acme applied with Ann on alpha, her mail seeded, both hosts running."""

    def __init__(  # noqa: PLR0917 - the conftest's fixtures, gathered once
        self,
        root: Path,
        password_hash: str,
        mailwright: Mailwright,
        start_host: Callable[[Path, Path], Process],
        kill_host: Callable[[Process], None],
        endpoint: Endpoint,
    ) -> None:
        self.root, self.hash, self.run = root, password_hash, mailwright
        self.state = root / "state"
        self._start, self._kill = start_host, kill_host
        self.endpoint = endpoint
        self.apply("alpha")
        self.seeded = seed_mailbox(self.state, SEEDED)
        self.hosts = {server: self._start(self.config(server), self.state) for server in HOSTS}

    def write_spec(self, ann_home: str, alias: str) -> Path:
        """Ann's mailbox on `ann_home`, called `alias` (`ann` before)."""
        was = "" if alias == "ann" else ", previous_aliases: [ann]"
        text = SPEC.format(ann=alias, ann_home=ann_home, hash=self.hash, was=was)
        spec = self.root / "acme.yaml"
        spec.write_text(text, encoding="utf-8")
        return spec

    def apply(self, ann_home: str, alias: str = "ann") -> str:
        spec = str(self.write_spec(ann_home, alias))
        done = self.run("apply", spec, "--state", str(self.state), "--auto-approve")
        assert done.returncode == 0, done.stderr
        return done.stdout

    def plan(self, ann_home: str, alias: str = "ann") -> str:
        spec = str(self.write_spec(ann_home, alias))
        done = self.run("plan", spec, "--state", str(self.state))
        assert done.returncode == 0, done.stderr
        return done.stdout

    def config(self, server: str) -> Path:
        serial = max(int(p.name) for p in (self.state / "artifacts").iterdir())
        return self.state / "artifacts" / str(serial) / "Acme" / "hosts" / f"{server}.json"

    def reload(self) -> None:
        for server, process in self.hosts.items():
            bundle_applied(self.state, "Acme", server)
            os.kill(process.pid, signal.SIGHUP)

    def kill(self, server: str) -> None:
        self._kill(self.hosts.pop(server))

    def start(self, server: str) -> None:
        self.hosts[server] = self._start(self.config(server), self.state)

    def kill_and_restart(self, server: str) -> None:
        self.kill(server)
        self.start(server)

    def moved(self) -> bool:
        return not (self.state / "hosts" / "alpha" / "store" / "ann").exists()

    def uidls(self, server: str, user: str = "ann") -> list[str]:
        client = poplib.POP3(*self.endpoint(self.state, server, "pop3"), timeout=10)
        try:
            client.user(user)
            client.pass_(PASSWORD)
            return [line.split()[1].decode() for line in client.uidl()[1]]
        finally:
            client.quit()

    def submit(self, to: str) -> str:
        """One message from Al to `to`, submitted to alpha; its id once alpha said 250."""
        message_id, document = submission(to)
        endpoint = self.endpoint(self.state, "alpha", "transfer")
        tls = transfer_tls(self.state, "Acme", "alpha")
        asyncio.run(send_frame(*endpoint, "SUBMIT", document, tls))
        return message_id


HOSTS = ("alpha", "beta")


@pytest.fixture
def move(  # noqa: PLR0917 - fixtures
    tmp_path: Path,
    password_hash: str,
    mailwright: Mailwright,
    start_host: Callable[[Path, Path], Process],
    kill_host: Callable[[Process], None],
    endpoint: Endpoint,
) -> Iterator[Move]:
    move = Move(tmp_path, password_hash, mailwright, start_host, kill_host, endpoint)
    yield move
    for process in move.hosts.values():
        kill_host(process)


def delivered_during(state: Path, files: Files) -> Counter[str]:
    """Message-ID -> how many of Ann's files at beta carry it (the mail sent during the move)."""
    found: Counter[str] = Counter()
    for data in files.values():
        for line in data.split(b"\n"):
            if line.lower().startswith(b"message-id:"):
                found[line.split(b":", 1)[1].strip().decode()] += 1
                break
    return found


@pytest.mark.parametrize("victim", [None, "alpha", "beta"])
def test_a_move_takes_every_message_once_with_its_uidl_while_mail_arrives(
    move: Move, victim: str | None, wait_until: WaitUntil
) -> None:
    size = sum(len(data) for data in move.seeded.values())
    plan = move.plan("beta")
    assert f'      home_server: "alpha" → "beta" (move {SEEDED} messages, {size} bytes)\n' in plan
    assert "  ~ mailbox Acme/ann\n" in plan

    sender = Sender(move.state, move.endpoint)
    sender.start()
    move.apply("beta")
    move.reload()
    if victim is not None:
        beta_ann = move.state / "hosts" / "beta" / "store" / "ann" / "Maildir" / "new"
        wait_until(lambda: any(beta_ann.glob("*")), 30, "the move to begin")
        move.kill_and_restart(victim)
    wait_until(move.moved, 60, "alpha to hand all of Ann's mail to beta")
    sender.stopping.set()
    sender.join(10)

    def all_delivered() -> bool:
        counts = delivered_during(move.state, maildir_files(move.state, "beta", "ann"))
        return all(counts[i] for i in sender.acknowledged)

    wait_until(all_delivered, 60, "every acknowledged message at beta")
    at_beta = maildir_files(move.state, "beta", "ann")
    # Every seeded message under its own name (its UIDL, its flags), with its own bytes.
    assert {name: at_beta.get(name) for name in move.seeded} == move.seeded
    counts = delivered_during(move.state, at_beta)
    assert sender.acknowledged, "nothing was sent during the move"
    assert not [i for i in sender.acknowledged if counts[i] != 1]
    assert len(at_beta) == SEEDED + len(sender.acknowledged)
    uids = [name.split(".")[1] for name in at_beta]
    assert len(set(uids)) == len(uids)
    assert message_uid("<seed-0@acme.test>") in uids
    assert not (move.state / "hosts" / "alpha" / "store" / "ann").exists()
    # A POP3 client that leaves mail on the server finds every UIDL it knew at the new home.
    assert {name.split(".")[1] for name in move.seeded} <= set(move.uidls("beta"))


def test_moving_back_and_forth_loses_nothing(move: Move, wait_until: WaitUntil) -> None:
    move.apply("beta")
    move.reload()
    move.apply("alpha")
    move.reload()
    wait_until(
        lambda: (
            not (move.state / "hosts" / "beta" / "store" / "ann").exists()
            and maildir_files(move.state, "alpha", "ann") == move.seeded
        ),
        60,
        "Ann's mail back on alpha",
    )


def test_a_declared_rename_takes_the_folder_in_one_rename(
    move: Move, wait_until: WaitUntil
) -> None:
    plan = move.plan("alpha", "anna")
    assert "  ~ mailbox Acme/anna (renamed from Acme/ann)\n" in plan
    assert '      alias: "ann" → "anna"\n' in plan
    assert "Warning" not in plan  # ann@acme.test stays hers, as a secondary address
    move.apply("alpha", "anna")
    move.reload()
    wait_until(move.moved, 30, "alpha to rename Ann's folder")
    assert maildir_files(move.state, "alpha", "anna") == move.seeded
    assert sorted(move.uidls("alpha", "anna")) == sorted(n.split(".")[1] for n in move.seeded)


def test_a_rename_and_move_takes_mail_and_queued_mail_along(
    move: Move, wait_until: WaitUntil
) -> None:
    move.kill("beta")  # mail for Ann's new home waits in alpha's queue meanwhile
    move.apply("beta", "anna")
    move.reload()
    queued = [move.submit("ann@acme.test") for _ in range(5)]
    move.start("beta")
    wait_until(move.moved, 60, "alpha to hand Ann's mail to beta")
    wait_until(
        lambda: all(
            delivered_during(move.state, maildir_files(move.state, "beta", "anna"))[i]
            for i in queued
        ),
        60,
        "the queued mail at beta",
    )
    at_beta = maildir_files(move.state, "beta", "anna")
    assert {name: at_beta.get(name) for name in move.seeded} == move.seeded
    assert len(at_beta) == SEEDED + len(queued)
