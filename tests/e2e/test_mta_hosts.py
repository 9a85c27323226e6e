"""Two real hosts of one organization: the MTA's hand-off between servers, retries, and kill -9.

Acme has one site and two store servers, alpha and beta, each a real process on 127.0.0.1. A
message from a mailbox on alpha to one on beta is submitted to alpha, routed by the GAL,
transferred in the internal format and delivered into beta's store. The crash tests kill -9 the
receiving and then the sending host in the middle of a burst of SUBMIT frames, restart it, and
check every acknowledged message is delivered exactly once.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import shutil
import socketserver
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import argon2
import pytest

from mailwright.runtime.formats.message import Address, Recipient, encode, new_message
from mailwright.runtime.mta.queue import MessageQueue, QueueEntry
from mailwright.runtime.mta.transfer import TransferError, recipients_payload, send_frame
from tests.helpers import (
    Endpoint,
    Mailwright,
    Messages,
    Process,
    WaitUntil,
    transfer_server_tls,
    transfer_tls,
)

ANN, AL, BOB = "ann@acme.test", "al@acme.test", "bob@acme.test"
HOMES = {"ann": "alpha", "al": "alpha", "bob": "beta"}
BURST = 300  # acknowledged submissions per crash test
DELIVERY_TIMEOUT = 15.0
DRAIN_TIMEOUT = 45.0

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
    protocols:
      pop3: {{enabled: true, message_format: mime, charset: utf-8}}
    servers:
      - {{name: alpha, fqdn: alpha.acme.test, ipv4: 10.9.0.1, roles: [store]}}
      - {{name: beta, fqdn: beta.acme.test, ipv4: 10.9.0.2, roles: [store]}}
mailboxes:
  - alias: ann
    home_server: alpha
    password: "{ann}"
    given_name: Ann
    surname: Alpha
  - alias: al
    home_server: alpha
    password: "{al}"
    given_name: Al
    surname: Alder
  - alias: bob
    home_server: beta
    password: "{bob}"
    given_name: Bob
    surname: Beta
    proxy_addresses: ["smtp:bobby@acme.test"]
"""

Pop3Messages = Callable[[Path, str, str, str], list[EmailMessage]]


def password(alias: str) -> str:
    return f"pw-{alias}"


@pytest.fixture(scope="module")
def acme_applied(tmp_path_factory: pytest.TempPathFactory, mailwright: Mailwright) -> Path:
    """Acme applied to a state directory (no host has run in it yet)."""
    folder = tmp_path_factory.mktemp("acme")
    # Cheap argon2id parameters: a crash test authenticates hundreds of submissions.
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    spec = folder / "acme.yaml"
    spec.write_text(
        SPEC.format(**{alias: hasher.hash(password(alias)) for alias in HOMES}), encoding="utf-8"
    )
    state = folder / "state"
    done = mailwright("apply", str(spec), "--state", str(state), "--auto-approve")
    assert done.returncode == 0, done.stderr
    return state


class Acme:
    """Acme's hosts running on one state directory, and what the tests do with them."""

    def __init__(  # noqa: PLR0917 - the conftest's fixtures, gathered once
        self,
        state: Path,
        start_host: Callable[[Path, Path], Process],
        stop_host: Callable[[Process], None],
        kill_host: Callable[[Process], None],
        endpoint: Endpoint,
        maildir: Messages,
        wait_until: WaitUntil,
    ) -> None:
        self.state = state
        self._start_host = start_host
        self._stop_host = stop_host
        self._kill_host = kill_host
        self.endpoint = endpoint
        self.maildir = maildir
        self.wait_until = wait_until
        self.processes: dict[str, Process] = {}

    def start(self, *servers: str) -> None:
        for server in servers:
            config = self.state / "artifacts" / "1" / "Acme" / "hosts" / f"{server}.json"
            self.processes[server] = self._start_host(config, self.state)

    def stop(self, server: str) -> None:
        self._stop_host(self.processes.pop(server))

    def kill(self, server: str) -> None:
        self._kill_host(self.processes.pop(server))

    def close(self) -> None:
        for server in list(self.processes):
            self.stop(server)

    def messages(self, alias: str) -> list[EmailMessage]:
        return self.maildir(self.state, HOMES[alias], alias)

    def count(self, alias: str) -> int:
        """Messages in a mailbox, by its Maildir files (cheap enough to poll)."""
        maildir = self.state / "hosts" / HOMES[alias] / "store" / alias / "Maildir"
        return sum(1 for sub in ("new", "cur") for _ in (maildir / sub).glob("*"))

    def wait_for(self, alias: str, message_id: str) -> EmailMessage:
        def found() -> list[EmailMessage]:
            return [m for m in self.messages(alias) if m["Message-ID"] == message_id]

        self.wait_until(lambda: bool(found()), DELIVERY_TIMEOUT, f"{message_id} for {alias}")
        [message] = found()
        return message

    def wait_for_subject(self, alias: str, subject: str) -> EmailMessage:
        def found() -> list[EmailMessage]:
            return [m for m in self.messages(alias) if m["Subject"] == subject]

        self.wait_until(lambda: bool(found()), DELIVERY_TIMEOUT, f"'{subject}' for {alias}")
        [message] = found()
        return message

    def queue(self, server: str) -> list[QueueEntry]:
        return MessageQueue(self.state / "hosts" / server / "queue").entries()

    def queues_empty(self) -> bool:
        folders = [self.state / "hosts" / server / "queue" for server in ("alpha", "beta")]
        return not any(path for folder in folders for path in folder.glob("*.msg"))

    def events(self, server: str, message_id: str = "") -> list[dict[str, Any]]:
        log = self.state / "hosts" / server / "tracking.jsonl"
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        return [r for r in records if not message_id or r["message_id"] == message_id]

    async def submit(self, recipients: list[Address], subject: str) -> str:
        """One SUBMIT frame as Ann to alpha; returns the message id once alpha replied 250."""
        message = new_message(
            Address(ANN, "Ann Alpha"),
            recipients=[Recipient(r) for r in recipients],
            subject=subject,
            body=f"{subject}\n",
            domain="acme.test",
        )
        document = {
            "user": "ann",
            "password": password("ann"),
            "message": encode(message),
            "rcpt": recipients_payload(recipients),
        }
        where = self.endpoint(self.state, "alpha", "transfer")
        tls = transfer_tls(self.state, "Acme", "alpha")
        reply = await send_frame(*where, "SUBMIT", document, tls)
        assert reply == f"250 2.0.0 {message.message_id}"
        return message.message_id


@pytest.fixture(scope="module")
def acme_pair(  # noqa: PLR0917 - fixtures
    acme_applied: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_host: Callable[[Path, Path], Process],
    stop_host: Callable[[Process], None],
    kill_host: Callable[[Process], None],
    endpoint: Endpoint,
    maildir_messages: Messages,
    wait_until: WaitUntil,
) -> Iterator[Acme]:
    """alpha and beta running for the module, for the tests that only send."""
    state = tmp_path_factory.mktemp("acme-pair") / "state"
    shutil.copytree(acme_applied, state)
    acme = Acme(state, start_host, stop_host, kill_host, endpoint, maildir_messages, wait_until)
    acme.start("alpha", "beta")
    yield acme
    acme.close()


@pytest.fixture
def acme(  # noqa: PLR0917 - fixtures
    acme_applied: Path,
    tmp_path: Path,
    start_host: Callable[[Path, Path], Process],
    stop_host: Callable[[Process], None],
    kill_host: Callable[[Process], None],
    endpoint: Endpoint,
    maildir_messages: Messages,
    wait_until: WaitUntil,
) -> Iterator[Acme]:
    """A fresh state for one test, whose hosts the test starts, stops and kills itself."""
    state = tmp_path / "state"
    shutil.copytree(acme_applied, state)
    acme = Acme(state, start_host, stop_host, kill_host, endpoint, maildir_messages, wait_until)
    yield acme
    acme.close()


def send(mailwright: Mailwright, state: Path, *args: str) -> str:
    """`mailwright send` as Ann; returns the message id it printed."""
    done = mailwright(
        *("send", "--from", ANN, *args, "--password-env", "MW_TEST_PASSWORD"),
        *("--state", str(state)),
        env={"MW_TEST_PASSWORD": password("ann")},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --- across two hosts -----------------------------------------------------------------------


def test_a_message_from_alpha_reaches_beta(
    tmp_path: Path, acme_pair: Acme, mailwright: Mailwright, pop3_messages: Pop3Messages
) -> None:
    data = bytes(range(256)) * 64
    (tmp_path / "plan.pdf").write_bytes(data)
    body = "Grüße from alpha.\nTwo lines, one umlaut.\n"
    message_id = send(
        mailwright,
        acme_pair.state,
        *("--to", BOB, "--cc", AL, "--subject", "Plans for beta — übermorgen"),
        *("--body", body, "--attach", str(tmp_path / "plan.pdf")),
    )
    acme_pair.wait_for("bob", message_id)
    acme_pair.wait_for("al", message_id)

    [message] = [
        m
        for m in pop3_messages(acme_pair.state, "beta", "bob", password("bob"))
        if m["Message-ID"] == message_id
    ]
    assert message["Subject"] == "Plans for beta — übermorgen"
    assert message["From"].addresses[0].addr_spec == ANN
    assert [a.addr_spec for a in message["To"].addresses] == [BOB]
    assert [a.addr_spec for a in message["Cc"].addresses] == [AL]
    text = message.get_body(("plain",))
    assert text is not None
    # RFC 2045 §6.8: base64 text is in canonical form, with CRLF line breaks.
    assert text.get_content().replace("\r\n", "\n") == body
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "plan.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == data

    alpha = {e["event"] for e in acme_pair.events("alpha", message_id)}
    assert {"received", "submitted", "routed", "transferred", "delivered"} <= alpha
    beta = acme_pair.events("beta", message_id)
    assert (beta[0]["event"], beta[0]["source"]) == ("received", "alpha")
    assert [e["mailbox"] for e in beta if e["event"] == "delivered"] == ["bob"]


@pytest.mark.parametrize(
    "address",
    [
        "X400:c=US;a= ;p=ACME;o=Main;s=Beta;g=Bob;",
        "x400:C=us;A= ;P=acme;O=main;S=beta;G=bob;",
        "MS:ACME/MAIN/BOB",
        "ms:acme/main/bob",
        "bobby@acme.test",
        "BOBBY@Acme.Test",
    ],
)
def test_every_proxy_type_finds_the_home_server(
    address: str, acme_pair: Acme, mailwright: Mailwright
) -> None:
    gal = json.loads((acme_pair.state / "artifacts/1/Acme/gal.json").read_text(encoding="utf-8"))
    [bob] = [r for r in gal["recipients"] if r["alias"] == "bob"]
    proxies = {a.casefold() for a in bob["primary"].values()}
    proxies |= {s.partition(":")[2].casefold() for s in bob["secondary"]}
    assert address.rpartition(":")[2].casefold() in proxies  # the addresses as compiled
    message_id = send(
        mailwright, acme_pair.state, "--to", address, "--subject", address, "--body", "b"
    )
    acme_pair.wait_for("bob", message_id)
    routed = [e["via"] for e in acme_pair.events("alpha", message_id) if e["event"] == "routed"]
    assert routed == ["GAL: bob on beta"]
    transferred = [e for e in acme_pair.events("alpha", message_id) if e["event"] == "transferred"]
    assert [e["to"] for e in transferred] == ["beta"]


def test_track_follows_the_message_across_hosts(acme_pair: Acme, mailwright: Mailwright) -> None:
    message_id = send(
        mailwright, acme_pair.state, "--to", BOB, "--subject", "Tracked", "--body", "b"
    )
    acme_pair.wait_for("bob", message_id)
    acme_pair.wait_until(
        lambda: any(e["event"] == "delivered" for e in acme_pair.events("beta", message_id)),
        DELIVERY_TIMEOUT,
        "beta's delivered event",
    )
    done = mailwright("track", message_id, "--state", str(acme_pair.state), "--json")
    assert done.returncode == 0, done.stderr
    path = [(e["host"], e["event"]) for e in map(json.loads, done.stdout.splitlines())]
    # In time order, as far as cause and effect fix it (alpha notes `transferred` after beta's
    # 250, by when beta may have delivered already).
    steps = [
        ("alpha", "received"),
        ("alpha", "submitted"),
        ("alpha", "routed"),
        ("beta", "received"),
        ("beta", "routed"),
        ("beta", "delivered"),
    ]
    assert [path.index(step) for step in steps] == sorted(path.index(step) for step in steps)
    assert path.index(("beta", "received")) < path.index(("alpha", "transferred"))
    assert sorted(path) == sorted([*steps, ("alpha", "transferred")])

    text = mailwright("track", message_id, "--state", str(acme_pair.state))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [line.split()[1:3] for line in lines] == [[h, e] for h, e in path]
    assert any("to=beta" in line for line in lines if " transferred " in line)


# --- retries --------------------------------------------------------------------------------


def test_a_transfer_to_a_server_that_is_down_is_retried_with_backoff(
    acme: Acme, mailwright: Mailwright
) -> None:
    acme.start("alpha", "beta")
    acme.stop("beta")
    message_id = send(mailwright, acme.state, "--to", BOB, "--subject", "Later", "--body", "b")

    def deferrals() -> list[dict[str, Any]]:
        return [e for e in acme.events("alpha", message_id) if e["event"] == "deferred"]

    acme.wait_until(lambda: bool(deferrals()), DELIVERY_TIMEOUT, "alpha to defer the transfer")
    [entry] = acme.queue("alpha")
    assert entry.message.message_id == message_id
    [pending] = entry.pending
    assert pending.address.address == BOB
    assert pending.attempts >= 1
    assert "cannot connect" in pending.last_error
    first = deferrals()[0]
    assert first["recipient"] == BOB and first["reason"] == pending.last_error

    acme.start("beta")
    acme.wait_for("bob", message_id)
    acme.wait_until(acme.queues_empty, DELIVERY_TIMEOUT, "the queues to drain")

    # Backoff: after each failure the next attempt waited at least 2**attempts seconds.
    events = acme.events("alpha", message_id)
    attempts = [time_of(e) for e in events if e["event"] == "routed"]
    assert len(attempts) >= 2
    for number, (earlier, later) in enumerate(itertools.pairwise(attempts), start=1):
        assert later - earlier >= 2.0**number - 0.1
    assert events[-1]["event"] == "transferred"
    assert len(deferrals()) == len(attempts) - 1


class Refusing(socketserver.BaseRequestHandler):
    """A transfer port that refuses every frame for good, as an MTA refuses a message too big:
    beta's, with beta's certificate (STARTTLS first, RFC 3207)."""

    REPLY = b"552 5.3.4 message too big for beta\r\n"
    context: ssl.SSLContext  # set by the fixture

    def handle(self) -> None:
        with self.request.makefile("rb") as clear:
            assert clear.readline().strip() == b"STARTTLS"
        self.request.sendall(b"220 2.0.0 ready to start TLS\r\n")
        with (
            self.context.wrap_socket(self.request, server_side=True) as tls,
            tls.makefile("rwb") as stream,
        ):
            _, _, size = stream.readline().decode("ascii").partition(" ")
            stream.read(int(size))
            stream.write(self.REPLY)
            stream.flush()
            stream.readline()  # QUIT


@pytest.fixture
def refusing_beta(acme: Acme) -> Iterator[None]:
    """A refusing transfer port where alpha's address map puts beta (which is not started)."""
    acme.start("alpha")
    addresses = json.loads((acme.state / "bundles/Acme/alpha/addresses.json").read_text())
    servers = json.loads((acme.state / "bundles/Acme/alpha/servers.json").read_text())
    beta = addresses["hosts"][servers["beta"]["ipv4"]]
    where = (beta["address"], beta["ports"]["transfer"])
    Refusing.context = transfer_server_tls(acme.state, "Acme", "beta")
    with socketserver.ThreadingTCPServer(where, Refusing) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield
        server.shutdown()
        thread.join()


@pytest.mark.usefixtures("refusing_beta")
def test_a_permanent_refusal_is_reported_not_retried(acme: Acme, mailwright: Mailwright) -> None:
    message_id = send(mailwright, acme.state, "--to", BOB, "--subject", "Too big", "--body", "b")
    report = acme.wait_for_subject("ann", "Undeliverable: Too big")
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    per_recipient = blocks[1]
    assert isinstance(per_recipient, Message)
    assert per_recipient["Final-Recipient"] == f"rfc822; {BOB}"
    assert per_recipient["Status"] == "5.3.4"
    assert "message too big for beta" in per_recipient["Diagnostic-Code"]
    acme.wait_until(acme.queues_empty, DELIVERY_TIMEOUT, "alpha's queue to drain")
    events = [e["event"] for e in acme.events("alpha", message_id)]
    assert "deferred" not in events and "transferred" not in events
    assert events.count("routed") == 1


def time_of(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["time"]).timestamp()


# --- kill -9 in the middle of a burst -------------------------------------------------------


class Burst(threading.Thread):
    """Submits messages from Ann to Bob (on beta) and Al (on alpha) until `total` were
    acknowledged; a submission that fails (alpha down) is tried again as a new message."""

    def __init__(self, acme: Acme, total: int) -> None:
        super().__init__(daemon=True)
        self.acme = acme
        self.total = total
        self.attempted: list[str] = []
        self.acked: list[str] = []
        self.failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._burst())
        except BaseException as exc:  # re-raised in the test thread by finish()
            self.error = exc

    async def _burst(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while len(self.acked) < self.total and time.monotonic() < deadline:
            subject = f"burst {len(self.attempted)}"
            try:
                self.acked.append(await self.acme.submit([Address(BOB), Address(AL)], subject))
            except (TransferError, OSError, ValueError):
                self.failures += 1
                await asyncio.sleep(0.02)
            finally:
                self.attempted.append(subject)

    def finish(self) -> None:
        self.join(DRAIN_TIMEOUT)
        assert not self.is_alive(), "the burst did not finish"
        if self.error is not None:
            raise self.error
        assert len(self.acked) == self.total


def check_exactly_once(acme: Acme, burst: Burst) -> None:
    """After the queues drained: every acknowledged message in both mailboxes exactly once,
    and nothing that was never submitted."""
    acked = set(burst.acked)
    subjects = {f"burst {n}" for n in range(len(burst.attempted))}

    def delivered() -> bool:
        return acme.queues_empty() and all(acme.count(a) >= len(acked) for a in ("bob", "al"))

    acme.wait_until(delivered, DRAIN_TIMEOUT, "the queues to drain")
    for alias in ("bob", "al"):
        messages = acme.messages(alias)
        copies = Counter(str(m["Message-ID"]) for m in messages)
        assert [i for i, n in copies.items() if n > 1] == [], f"duplicates for {alias}"
        assert sorted(acked - copies.keys()) == [], f"acknowledged but lost for {alias}"
        assert {str(m["Subject"]) for m in messages} <= subjects


def _kill_mid_burst(acme: Acme, victim: str) -> Burst:
    """A burst from alpha to beta; `victim` killed -9 a third of the way in and started again;
    the burst finished. The victim must have died before the burst ended."""
    acme.start("alpha", "beta")
    burst = Burst(acme, BURST)
    burst.start()
    acme.wait_until(
        lambda: (
            (len(burst.acked) >= BURST // 3 and acme.count("bob") >= 10) or not burst.is_alive()
        ),
        DRAIN_TIMEOUT,
        "the burst to be under way",
    )
    acme.kill(victim)
    acked_at_kill = len(burst.acked)
    acme.start(victim)
    burst.finish()
    assert acked_at_kill < BURST, f"{victim} was killed after the burst"
    return burst


def test_kill_9_of_the_receiving_host_mid_burst(acme: Acme) -> None:
    burst = _kill_mid_burst(acme, "beta")
    check_exactly_once(acme, burst)
    deferred = [e for e in acme.events("alpha") if e["event"] == "deferred"]
    assert deferred, "alpha never noticed beta was down"


def test_kill_9_of_the_sending_host_mid_burst(acme: Acme) -> None:
    burst = _kill_mid_burst(acme, "alpha")
    assert burst.failures >= 1, "no submission noticed alpha was down"
    check_exactly_once(acme, burst)
