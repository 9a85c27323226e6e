"""The Internet Mail Service on loopback.

Inbound: Arlington's IMS (aiosmtpd, with its MTA and store) runs in-process on an event loop of
its own; swaks and smtplib speak to it as the internet's clients would, and the open-relay probe
tries every address trick relays were abused with. Outbound: an organization of one server
delivers through Postfix's smtp-sink as the remote MX (its options inject 4xx, 421, disconnects
and 5xx), with the recipient domains' MX records served by mailwright's own DNS server. Last, the
round trip internal -> RFC 5322 -> internal keeps every property (hypothesis).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import datetime
import email.parser
import email.policy
import email.utils
import json
import os
import poplib
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any, TypeVar

import argon2
import dns.zone
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwright.compiler.build import compile_specs
from mailwright.runtime.auth.accounts import Account, Accounts
from mailwright.runtime.contract import HostConfig, read_host_config
from mailwright.runtime.formats import parse as ims_module
from mailwright.runtime.formats.message import (
    Address,
    Attachment,
    InternalMessage,
    Recipient,
    new_message,
)
from mailwright.runtime.formats.parse import from_rfc5322, parse_message
from mailwright.runtime.formats.render import to_rfc5322
from mailwright.runtime.ims.inbound import MAX_RECEIVED, InboundHandler
from mailwright.runtime.ims.outbound import Outbound
from mailwright.runtime.ims.smtpserver import smtp_server
from mailwright.runtime.mta.agent import Mta
from mailwright.runtime.mta.ndr import REPORT_FLAG, is_report
from mailwright.runtime.mta.queue import MessageQueue, QueueEntry
from mailwright.runtime.mta.router import Router
from mailwright.runtime.mta.transfer import endpoints_in
from mailwright.runtime.nameserver import Authority, NameServer
from mailwright.runtime.store.mailstore import MailStore
from mailwright.runtime.store.pop3 import Pop3Server
from mailwright.schema import load_specs
from tests.helpers import RequireTool
from tests.helpers import parse_message as parse
from tests.helpers import wait_until as wait_for

HOST = "127.0.0.1"
TIMEOUT = 10.0
CLIENT_NAME = "client.example"
T = TypeVar("T")


def run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(TIMEOUT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class SmtpListener:
    """An aiosmtpd listener and every session it started, to stop them all."""

    def __init__(self, listener: asyncio.Server, sessions: list[SMTP]) -> None:
        self.listener = listener
        self.sessions = sessions

    async def stop(self) -> None:
        self.listener.close()
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()
        tasks = [s._handler_coroutine for s in self.sessions if s._handler_coroutine is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT)
        await self.listener.wait_closed()


@pytest.fixture
def smtp_listeners(server_loop: asyncio.AbstractEventLoop) -> Iterator[list[SmtpListener]]:
    listeners: list[SmtpListener] = []
    yield listeners
    for listener in listeners:
        run_on(server_loop, listener.stop())


def listen(
    loop: asyncio.AbstractEventLoop,
    listeners: list[SmtpListener],
    factory: Callable[[], SMTP],
) -> int:
    """Serve aiosmtpd sessions made by `factory` on 127.0.0.1 and an ephemeral port."""
    sessions: list[SMTP] = []

    def session() -> SMTP:
        sessions.append(factory())
        return sessions[-1]

    async def start() -> asyncio.Server:
        return await loop.create_server(session, HOST, 0)

    listener = run_on(loop, start())
    listeners.append(SmtpListener(listener, sessions))
    port: int = listener.sockets[0].getsockname()[1]
    return port


# --- inbound -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Ims:
    """Arlington's IMS listening on `port`; its MTA does not run, so what it accepted stays
    in the queue until a test processes it."""

    port: int
    mta: Mta
    store: MailStore
    settings: dict[str, Any]
    loop: asyncio.AbstractEventLoop

    def queued(self) -> list[QueueEntry]:
        return self.mta.queue.entries()

    def process(self) -> None:
        for entry in self.queued():
            run_on(self.loop, self.mta.process(entry))


@pytest.fixture
def start_ims(  # noqa: PLR0917 - fixtures
    server_loop: asyncio.AbstractEventLoop,
    smtp_listeners: list[SmtpListener],
    arlington: dict[str, Any],
    seed_artifacts: Path,
    fast_accounts: dict[str, Account],
    server_tls: ssl.SSLContext,
    tmp_path: Path,
) -> Callable[..., Ims]:
    """Start Arlington's IMS with its compiled settings, changed by keyword: `networks` (relay
    networks), `authenticated` (relay after AUTH), `max_message_size`, `transfer_mode`."""
    runs = iter(range(100))

    def start(**changes: Any) -> Ims:
        state = tmp_path / f"state-{next(runs)}"
        settings = copy.deepcopy(arlington["ims"])
        for key, value in changes.items():
            if key in ("networks", "authenticated"):
                settings["relay"][key] = value
            else:
                settings[key] = value
        config = HostConfig.from_json({**arlington, "ims": settings})
        store = MailStore(state / "hosts" / "arlington" / "store")
        accounts = Accounts(fast_accounts)
        router = Router.load(config, seed_artifacts / "Minasi")
        mta = Mta(config, router, state, store, accounts, endpoints_in(state))
        handler = InboundHandler(mta, config.connector, accounts)
        port = listen(
            server_loop,
            smtp_listeners,
            lambda: smtp_server(handler, config.connector, server_tls),
        )
        return Ims(port, mta, store, settings, server_loop)

    return start


def client(port: int) -> smtplib.SMTP:
    return smtplib.SMTP(HOST, port, local_hostname=CLIENT_NAME, timeout=TIMEOUT)


def rcpt(port: int, address: str, *, mail_from: str = "<someone@example.org>") -> tuple[int, str]:
    """One RCPT TO:<address> as written (no quoting by smtplib) from an unauthenticated client."""
    with client(port) as smtp:
        smtp.ehlo()
        assert smtp.docmd("MAIL", f"FROM:{mail_from}")[0] == 250
        code, reply = smtp.docmd("RCPT", f"TO:{address}")
        return code, reply.decode()


def message_bytes(subject: str, body: bytes = b"Hello Mark.\r\n", headers: bytes = b"") -> bytes:
    return (
        b"From: Someone <someone@example.org>\r\n"
        b"To: Mark Minasi <mark@minasi.com>\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@example.org>\r\n"
        b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n" + headers + b"\r\n" + body
    )


def test_ehlo_advertises_the_extensions_and_auth_only_after_starttls(
    start_ims: Callable[..., Ims], client_tls: ssl.SSLContext
) -> None:
    ims = start_ims()
    with client(ims.port) as smtp:
        code, _ = smtp.ehlo()
        assert code == 250
        assert smtp.esmtp_features["size"] == str(ims.settings["max_message_size"])
        for extension in ("8bitmime", "pipelining", "enhancedstatuscodes", "starttls"):
            assert smtp.has_extn(extension), extension
        assert not smtp.has_extn("auth")
        # RFC 4954 §4: no AUTH over a connection that is not protected.
        credentials = base64.b64encode(b"\0mark\0demo-mark").decode()
        code, reply = smtp.docmd("AUTH", f"PLAIN {credentials}")
        assert (code, reply[:6]) == (538, b"5.7.11")
        smtp.starttls(context=client_tls)
        smtp.ehlo()
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        assert not smtp.has_extn("starttls")
        assert smtp.login("mark", "demo-mark")[0] == 235


def swaks(require_tool: RequireTool, port: int, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("swaks"), "--server", f"{HOST}:{port}", "--helo", CLIENT_NAME, *options],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_swaks_sees_the_extensions(
    start_ims: Callable[..., Ims], require_tool: RequireTool
) -> None:
    ims = start_ims()
    done = swaks(require_tool, ims.port, "--quit-after", "EHLO")
    assert done.returncode == 0, done.stdout + done.stderr
    advertised = [
        line.split("250", 1)[1][1:] for line in done.stdout.splitlines() if "<-  250" in line
    ]
    assert f"SIZE {ims.settings['max_message_size']}" in advertised
    for extension in ("8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"):
        assert extension in advertised
    assert not any(line.startswith("AUTH") for line in advertised)
    # After STARTTLS, AUTH; swaks authenticates and sends to Mark.
    options = ["--tls", "--auth", "PLAIN", "--auth-user", "mark", "--auth-password", "demo-mark"]
    done = swaks(require_tool, ims.port, *options, "--to", "mark@minasi.com", "--from", "a@b.org")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  250-AUTH LOGIN PLAIN" in done.stdout
    assert "<~  235 2.7.0 Authentication successful" in done.stdout
    assert "<~  250 2.0.0 queued as" in done.stdout
    assert len(ims.queued()) == 1


def test_swaks_delivers_and_is_refused_an_unknown_recipient(
    start_ims: Callable[..., Ims], require_tool: RequireTool
) -> None:
    ims = start_ims()
    done = swaks(require_tool, ims.port, "--to", "mark@minasi.com", "--from", "someone@example.org")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<-  250 2.1.5 recipient ok" in done.stdout
    done = swaks(require_tool, ims.port, "--to", "nobody@minasi.com", "--from", "x@example.org")
    assert done.returncode == 24, done.stdout  # swaks: every recipient was refused
    assert "<** 550 5.1.1" in done.stdout
    assert len(ims.queued()) == 1


@pytest.mark.parametrize(
    "address", ["<mark@minasi.com>", "<MARK@Minasi.COM>", "<paula@minasi.com>"]
)
def test_an_existing_recipient_of_an_owned_domain_is_accepted(
    start_ims: Callable[..., Ims], address: str
) -> None:
    ims = start_ims()
    assert rcpt(ims.port, address) == (250, "2.1.5 recipient ok")


# Not a proxy address of anyone's: the owned domain says there is no such recipient.
@pytest.mark.parametrize("address", ["<nobody@minasi.com>", "<mark.minasi@minasi.com>"])
def test_an_unknown_recipient_of_an_owned_domain_is_refused(
    start_ims: Callable[..., Ims], address: str
) -> None:
    ims = start_ims()
    assert rcpt(ims.port, address) == (550, "5.1.1 no such recipient here")


# RFC 5321 §3.6.2 and the relay tests of the open-relay era: a foreign domain, and the tricks
# that made relays forward by rewriting (percent hack, quoted local part, bang path, source route).
RELAY_PROBES = [
    "<user@other.org>",
    "<user%other.org@minasi.com>",
    '<"user@other.org"@minasi.com>',
    "<other.org!user@minasi.com>",
    "<@minasi.com:user@other.org>",
    "<mark%other.org@minasi.com>",
    '<"mark%other.org"@minasi.com>',
    "<user@other.org@minasi.com>",
    "<user@[10.2.0.10]>",
    "<user@minasi.com.other.org>",
]
ADDRESS_TRICKS = RELAY_PROBES[1:5]


@pytest.mark.parametrize("address", RELAY_PROBES)
def test_open_relay_probe_from_an_unauthenticated_client_is_refused(
    start_ims: Callable[..., Ims], address: str
) -> None:
    ims = start_ims()  # the seed's Arlington: no relay networks
    code, reply = rcpt(ims.port, address)
    if address == "<user@other.org@minasi.com>":
        # Not even an address: aiosmtpd refuses it before the policy sees it.
        assert (code, reply[:5]) == (553, "5.1.3")
        return
    assert (code, reply[:5]) == (554, "5.7.1"), reply
    assert ims.queued() == []


def test_swaks_open_relay_probe(start_ims: Callable[..., Ims], require_tool: RequireTool) -> None:
    ims = start_ims()
    for address in ["user@other.org", "user%other.org@minasi.com", "other.org!user@minasi.com"]:
        done = swaks(require_tool, ims.port, "--to", address, "--from", "spammer@example.org")
        assert done.returncode == 24, done.stdout
        assert "<** 554 5.7.1 relaying denied" in done.stdout
    assert ims.queued() == []


def send_foreign(smtp: smtplib.SMTP, address: str = "user@other.org") -> tuple[int, str]:
    assert smtp.docmd("MAIL", "FROM:<mark@minasi.com>")[0] == 250
    code, reply = smtp.docmd("RCPT", f"TO:<{address}>")
    return code, reply.decode()


def test_relay_is_allowed_from_a_relay_network(start_ims: Callable[..., Ims]) -> None:
    ims = start_ims(networks=["127.0.0.0/8"])
    with client(ims.port) as smtp:
        smtp.ehlo()
        assert send_foreign(smtp) == (250, "2.1.5 recipient ok")
        code, reply = smtp.data(message_bytes("relayed"))
        assert code == 250, reply
    # The tricks stay refused even for a client that may relay.
    for address in ADDRESS_TRICKS[:3]:
        assert rcpt(ims.port, address)[0] == 554
    # Accepted for the internet: the MTA hands it to the IMS's outbox.
    ims.process()
    [outgoing] = ims.mta.outbox.entries()
    assert [p.address.address for p in outgoing.pending] == ["user@other.org"]


def test_relay_is_allowed_after_auth_over_tls_only(
    start_ims: Callable[..., Ims], client_tls: ssl.SSLContext
) -> None:
    ims = start_ims()
    with client(ims.port) as smtp:
        smtp.ehlo()
        smtp.starttls(context=client_tls)
        smtp.ehlo()
        # TLS alone does not let a client relay.
        assert send_foreign(smtp)[0] == 554
        smtp.rset()
        smtp.login("mark", "demo-mark")
        assert send_foreign(smtp) == (250, "2.1.5 recipient ok")
        code, _ = smtp.data(message_bytes("authenticated relay"))
        assert code == 250
    [entry] = ims.queued()
    assert b"with ESMTPSA;" in (entry.message.rfc5322 or b"")
    with client(ims.port) as smtp:
        smtp.ehlo()
        smtp.starttls(context=client_tls)
        smtp.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("mark", "wrong")
        assert send_foreign(smtp)[0] == 554


def test_no_relay_after_auth_when_the_connector_says_so(
    start_ims: Callable[..., Ims], client_tls: ssl.SSLContext
) -> None:
    ims = start_ims(authenticated=False)
    with client(ims.port) as smtp:
        smtp.ehlo()
        smtp.starttls(context=client_tls)
        smtp.ehlo()
        smtp.login("mark", "demo-mark")
        assert send_foreign(smtp)[0] == 554


def test_an_outbound_only_connector_takes_no_mail_in(start_ims: Callable[..., Ims]) -> None:
    ims = start_ims(transfer_mode="outbound_only")
    assert rcpt(ims.port, "<mark@minasi.com>")[0] == 550


def test_over_size_is_refused_with_552_5_3_4(start_ims: Callable[..., Ims]) -> None:
    ims = start_ims(max_message_size=4096)
    with client(ims.port) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == "4096"
        # Declared too big in MAIL (RFC 1870 §6.1) ...
        code, reply = smtp.docmd("MAIL", "FROM:<a@example.org> SIZE=5000")
        assert (code, reply[:5]) == (552, b"5.3.4")
        # ... or found too big in DATA.
        assert smtp.docmd("MAIL", "FROM:<a@example.org>")[0] == 250
        assert smtp.docmd("RCPT", "TO:<mark@minasi.com>")[0] == 250
        code, reply = smtp.data(message_bytes("big", b"x" * 76 + b"\r\n") * 60)
        assert (code, reply[:5]) == (552, b"5.3.4")
        # The session goes on: a message under the limit is taken.
        assert smtp.sendmail("a@example.org", ["mark@minasi.com"], message_bytes("small")) == {}
    assert len(ims.queued()) == 1


def send_data(smtp: smtplib.SMTP, pieces: list[bytes]) -> None:
    """MAIL, RCPT and DATA, then the content in `pieces`, each its own TCP segment."""
    assert smtp.docmd("MAIL", "FROM:<a@example.org>")[0] == 250
    assert smtp.docmd("RCPT", "TO:<mark@minasi.com>")[0] == 250
    assert smtp.docmd("DATA")[0] == 354
    assert smtp.sock is not None
    smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in pieces:
        smtp.sock.sendall(piece)
        time.sleep(0.002)


# Dot-stuffed lines (RFC 5321 §4.5.2), an empty line, and a "." after a bare LF, which ends
# no line and so ends no message.
_STUFFED = message_bytes("dots", b"..leading dot\r\n\r\n.\n.\r\n...\r\nlast\r\n")


@pytest.mark.parametrize("split", [0, 1, 2, 3, 4, 5, 6, 7])
def test_data_is_taken_as_sent_wherever_the_segments_split_it(
    start_ims: Callable[..., Ims], split: int
) -> None:
    wire = _STUFFED + b".\r\n"
    cut = len(wire) - split  # a segment boundary inside or just before the end line
    ims = start_ims()
    with client(ims.port) as smtp:
        smtp.ehlo()
        send_data(smtp, [wire[:cut], *(wire[i : i + 1] for i in range(cut, len(wire)))])
        assert smtp.getreply()[0] == 250
        assert smtp.noop()[0] == 250  # in step after DATA
    (entry,) = ims.queued()
    assert entry.message.rfc5322 is not None
    body = b"\r\n.leading dot\r\n\r\n\n.\r\n..\r\nlast\r\n"
    assert entry.message.rfc5322.endswith(body)


def test_an_empty_content_and_the_commands_pipelined_after_it(
    start_ims: Callable[..., Ims],
) -> None:
    ims = start_ims()
    with client(ims.port) as smtp:
        smtp.ehlo()
        # RFC 2920: the client may send RSET and NOOP after the end of the content unasked.
        send_data(smtp, [b".\r\nRSET\r\nNOOP\r\n"])
        assert smtp.getreply()[0] == 250  # an empty message, taken as Postfix takes it
        assert smtp.getreply() == (250, b"OK")  # RSET
        assert smtp.getreply()[0] == 250  # NOOP
        # And a whole message pipelined with what follows it in one segment.
        send_data(smtp, [_STUFFED + b".\r\nNOOP\r\n"])
        assert smtp.getreply()[0] == 250
        assert smtp.getreply()[0] == 250
    assert len(ims.queued()) == 2


def test_a_line_over_1000_octets_is_refused_with_500_and_the_session_goes_on(
    start_ims: Callable[..., Ims],
) -> None:
    ims = start_ims()
    with client(ims.port) as smtp:
        smtp.ehlo()
        long_line = b"x" * 3000 + b"\r\n"
        send_data(smtp, [message_bytes("long", long_line)[:500], long_line, b".\r\n"])
        code, reply = smtp.getreply()
        assert (code, reply[:18]) == (500, b"Line too long (see")
        assert smtp.sendmail("a@example.org", ["mark@minasi.com"], message_bytes("short")) == {}
    assert len(ims.queued()) == 1


def test_a_bounce_from_the_null_reverse_path_is_taken_as_a_report(
    start_ims: Callable[..., Ims],
) -> None:
    ims = start_ims()
    with client(ims.port) as smtp:
        smtp.ehlo()
        # RFC 5321 §4.5.5: notifications come from <>, and must be accepted.
        assert smtp.docmd("MAIL", "FROM:<>") == (250, b"2.1.0 sender ok")
        assert smtp.docmd("RCPT", "TO:<mark@minasi.com>")[0] == 250
        assert smtp.data(message_bytes("delivery failure"))[0] == 250
    [entry] = ims.queued()
    # A report: if it cannot be delivered either, no report is made about it.
    assert is_report(entry.message)
    assert entry.message.sender.address == "someone@example.org"


def received_headers(count: int) -> bytes:
    return b"".join(
        b"Received: from relay%d.example.org by relay%d.example.org;\r\n"
        b"\tSun, 29 Nov 2026 10:00:00 +0000\r\n" % (n, n + 1)
        for n in range(count)
    )


def test_more_than_100_received_headers_is_a_loop(start_ims: Callable[..., Ims]) -> None:
    ims = start_ims()
    with client(ims.port) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.org")
        smtp.rcpt("mark@minasi.com")
        code, reply = smtp.data(
            message_bytes("looping", headers=received_headers(MAX_RECEIVED + 1))
        )
        assert (code, reply[:5]) == (554, b"5.4.6")
        # 100 and our own make 101: the next hop refuses it, this one still takes it.
        headers = received_headers(MAX_RECEIVED)
        smtp.sendmail(
            "a@example.org", ["mark@minasi.com"], message_bytes("at the limit", headers=headers)
        )
        # Received lines in the body (a forwarded message, a report) are not this message's.
        body = b"Forwarded:\r\n\r\n" + received_headers(150) + b"\r\nend\r\n"
        smtp.sendmail("a@example.org", ["mark@minasi.com"], message_bytes("forwarded", body))
    assert sorted(e.message.subject for e in ims.queued()) == ["at the limit", "forwarded"]


# An internet message as a real client writes it: 8-bit UTF-8 in the body (8BITMIME), odd
# spacing kept in the header, lines that start with a dot, trailing blanks, a long line.
ARRIVING = (
    b"Return-Path: <someone@example.org>\r\n"
    b"From: =?utf-8?q?Ren=C3=A9e?= Someone <someone@example.org>\r\n"
    b"To: Mark Minasi <mark@minasi.com>,\r\n   Paula Reyes <paula@minasi.com>\r\n"
    b"Subject:   odd   spacing kept\r\n"
    b"Message-ID: <arriving.1@example.org>\r\n"
    b"Date: Sun, 29 Nov 2026 10:00:00 +0100\r\n"
    b"X-Mailer: a hand-written client\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus M\xc3\xbcnchen.\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b".\r\n"
    b"trailing blanks   \r\n"
    b"\r\n" + b"long " * 150 + b"\r\n"
)


def test_an_accepted_message_is_queued_before_250_and_served_as_it_arrived(
    start_ims: Callable[..., Ims],
    serve: Callable[[Pop3Server], int],
    fast_accounts: dict[str, Account],
) -> None:
    ims = start_ims()
    with client(ims.port) as smtp:
        smtp.ehlo()
        assert smtp.mail("someone@example.org", ["BODY=8BITMIME"])[0] == 250
        assert smtp.rcpt("mark@minasi.com")[0] == 250
        code, reply = smtp.data(ARRIVING)
        # The 250 came, so the message is on disk in the MTA's queue (nothing else runs).
        assert code == 250
        assert reply == b"2.0.0 queued as <arriving.1@example.org>"
        [entry] = ims.queued()
    assert [p.address.address for p in entry.pending] == ["mark@minasi.com"]
    data = entry.message.rfc5322 or b""
    received, _, rest = data.partition(b"Return-Path:")
    assert b"Return-Path:" + rest == ARRIVING
    assert received.startswith(
        b"Received: from " + CLIENT_NAME.encode() + b" ([127.0.0.1])\r\n"
        b"\tby arlington.minasi.com (mailwright IMS) with ESMTP;\r\n\t"
    )
    assert received.count(b"\r\n") == 3
    # Converted to the internal format: the properties, with the bytes kept.
    message = entry.message
    assert message.message_id == "<arriving.1@example.org>"
    assert message.sender == Address("someone@example.org", "Renée Someone")
    assert message.subject == "odd   spacing kept"
    assert [(r.address.address, r.kind) for r in message.recipients] == [
        ("mark@minasi.com", "to"),
        ("paula@minasi.com", "to"),
    ]
    assert message.body_text.startswith("Grüße aus München.\n.a line")
    assert message.submit_time == datetime.datetime(2026, 11, 29, 9, 0, tzinfo=datetime.UTC)
    # The MTA delivers it; Mark's POP3 serves the bytes as they arrived, our Received on top.
    ims.process()
    assert ims.queued() == []
    port = serve(Pop3Server(Accounts(fast_accounts), ims.store))
    pop = poplib.POP3(HOST, port, timeout=TIMEOUT)
    try:
        pop.user("mark")
        pop.pass_("demo-mark")
        _, lines, octets = pop.retr(1)
    finally:
        pop.quit()
    served = b"\r\n".join(lines) + b"\r\n"
    assert served == data
    assert octets == len(data)


# --- outbound ------------------------------------------------------------------------------------

SENDER_SPEC = """\
organization:
  name: Sender
  domains: [sender.test]
sites:
  - name: Main
    protocols:
      pop3: {{enabled: true, message_format: mime}}
    servers:
      - name: gw
        fqdn: gw.sender.test
        ipv4: 10.7.0.1
        roles: [store, ims, dns]
        ims:
          address_spaces:
            - {{type: SMTP, pattern: "*", cost: 1}}
          # Seconds instead of RFC 5321's 30 minutes and 4-5 days (the compiler warns).
          retry: {{intervals: [1s, 2s], give_up: 3s}}
          message_formats:
            - {{domain: uu.test, format: uuencode}}
mailboxes:
  - alias: sam
    home_server: gw
    password: "{password}"
    given_name: Sam
    surname: Sender
dns:
  - domain: sender.test
    nameservers: [gw]
"""
SAM = "sam@sender.test"

# The internet as the tests see it: MX records of remote domains, served by mailwright's own DNS
# server. Their addresses (TEST-NET-1) are mapped to smtp-sink's ports on loopback.
REMOTE_ZONE = """\
$ORIGIN test.
$TTL 300
@        IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300
@        IN NS  ns.test.
ns       IN A   192.0.2.53
one      IN MX  10 mx1.one
mx1.one  IN A   192.0.2.1
uu       IN MX  10 mx1.one
two      IN MX  20 mx2.two
two      IN MX  10 mx1.two
mx1.two  IN A   192.0.2.1
mx2.two  IN A   192.0.2.2
equal    IN MX  10 a.equal
equal    IN MX  10 b.equal
a.equal  IN A   192.0.2.1
b.equal  IN A   192.0.2.2
nullmx   IN MX  0 .
amx      IN A   192.0.2.1
slow     IN MX  10 mx.slow
mx.slow  IN A   192.0.2.3
"""
MX1, MX2, MX3 = "192.0.2.1", "192.0.2.2", "192.0.2.3"


@pytest.fixture(scope="module")
def sender_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sender")
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    spec = folder / "sender.yaml"
    spec.write_text(SENDER_SPEC.format(password=hasher.hash("pw-sam")), encoding="utf-8")
    compile_specs(load_specs([spec]), folder / "out")
    return folder / "out" / "Sender"


@pytest.fixture
def dns_port(server_loop: asyncio.AbstractEventLoop) -> Iterator[int]:
    zone = dns.zone.from_text(REMOTE_ZONE, "test.", relativize=False)
    server = NameServer(Authority([zone]))
    _, port = run_on(server_loop, server.start(HOST, 0))
    yield port
    run_on(server_loop, server.stop())


class Sink:
    """Postfix's smtp-sink, the remote MX: started with options, stopped by its pid. Each
    message it takes is dumped to a file of its own (-d)."""

    def __init__(self, executable: str, folder: Path) -> None:
        self.executable = executable
        self.folder = folder
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *options: str, port: int = 0) -> int:
        port = port or free_port()
        # As root, smtp-sink insists on a user to run as (-u).
        user = ["-u", "root"] if os.geteuid() == 0 else []
        command = [self.executable, *user, "-d", f"{self.folder}/msg.", *options]
        process = subprocess.Popen(
            [*command, f"{HOST}:{port}", "16"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.processes.append(process)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return port
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    stderr = process.stderr.read() if process.stderr else b""
                    pytest.fail(f"smtp-sink did not start: {stderr.decode(errors='replace')}")
                time.sleep(0.02)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(TIMEOUT)
            if process.stderr is not None:
                process.stderr.close()
        self.processes.clear()

    def messages(self) -> list[EmailMessage]:
        return [parse(path.read_bytes()) for path in sorted(self.folder.glob("msg.*"))]


@pytest.fixture
def sink(require_tool: RequireTool, tmp_path: Path) -> Iterator[Sink]:
    folder = tmp_path / "sink"
    folder.mkdir()
    running = Sink(require_tool("smtp-sink"), folder)
    yield running
    running.stop()


@dataclasses.dataclass
class Gateway:
    """The Sender organization's one server: MTA, store and IMS outbound, in-process."""

    mta: Mta
    outbound: Outbound
    state: Path
    exchangers: dict[str, tuple[str, int]]  # the remote MX addresses and where they listen
    loop: asyncio.AbstractEventLoop

    def send(
        self, recipient: str | list[str], subject: str, *, report: bool = False, **properties: Any
    ) -> str:
        """Sam sends a message to one recipient or several; its message id."""
        addresses = [Address(r) for r in ([recipient] if isinstance(recipient, str) else recipient)]
        message = new_message(
            Address(SAM, "Sam Sender"),
            recipients=[Recipient(a) for a in addresses],
            subject=subject,
            body=f"{subject}\n",
            domain="sender.test",
        )
        message = dataclasses.replace(message, **properties)
        if report:
            message = dataclasses.replace(message, extra={REPORT_FLAG: True})
        run_on(self.loop, self.mta.accept(message, addresses, "test"))
        return message.message_id

    def events(self, kind: str, message_id: str) -> list[dict[str, Any]]:
        log = self.state / "hosts" / "gw" / "tracking.jsonl"
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        return [r for r in records if r["event"] == kind and r["message_id"] == message_id]

    def wait_for(self, kind: str, message_id: str, timeout: float = 8.0) -> dict[str, Any]:
        wait_for(lambda: bool(self.events(kind, message_id)), timeout, f"{kind} of {message_id}")
        return self.events(kind, message_id)[0]

    def mailbox(self) -> list[EmailMessage]:
        maildir = self.state / "hosts" / "gw" / "store" / "sam" / "Maildir"
        files = sorted(p for sub in ("new", "cur") for p in (maildir / sub).glob("*"))
        return [parse(p.read_bytes()) for p in files]

    def report(self, subject: str, timeout: float = 8.0) -> EmailMessage:
        def found() -> list[EmailMessage]:
            return [m for m in self.mailbox() if m["Subject"] == f"Undeliverable: {subject}"]

        wait_for(lambda: bool(found()), timeout, f"the report about {subject!r}")
        [report] = found()
        return report

    def outbox(self) -> list[QueueEntry]:
        return MessageQueue(self.state / "hosts" / "gw" / "outbox").entries()


@pytest.fixture
def gateway(
    server_loop: asyncio.AbstractEventLoop, sender_artifacts: Path, dns_port: int, tmp_path: Path
) -> Iterator[Gateway]:
    config = read_host_config(sender_artifacts / "hosts" / "gw.json")
    state = tmp_path / "state"
    store = MailStore(state / "hosts" / "gw" / "store")
    router = Router.load(config, sender_artifacts)
    mta = Mta(config, router, state, store, Accounts({}), endpoints_in(state))
    exchangers: dict[str, tuple[str, int]] = {}
    outbound = Outbound(mta, config.connector, lambda: (HOST, dns_port), exchangers.get)

    async def start() -> list[asyncio.Task[None]]:
        return [asyncio.create_task(mta.run()), asyncio.create_task(outbound.run())]

    async def stop(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    tasks = run_on(server_loop, start())
    yield Gateway(mta, outbound, state, exchangers, server_loop)
    run_on(server_loop, stop(tasks))


def delivery_statuses(report: EmailMessage) -> list[dict[str, str]]:
    """The per-recipient fields of an RFC 3464 report, a dict per failed recipient."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    [part] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    blocks = part.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2
    statuses = []
    for block in blocks[1:]:
        assert isinstance(block, Message)
        statuses.append({key: str(value) for key, value in block.items()})
    return statuses


def delivery_status(report: EmailMessage) -> dict[str, str]:
    """The per-recipient fields of a one-recipient RFC 3464 report."""
    [status] = delivery_statuses(report)
    return status


def test_delivery_to_the_mx_in_mime_with_a_received_header(gateway: Gateway, sink: Sink) -> None:
    gateway.exchangers[MX1] = (HOST, sink.start())
    attachment = Attachment("report.pdf", "application/pdf", bytes(range(256)) * 8)
    message_id = gateway.send(
        "Rcpt@one.test", "to the internet", attachments=(attachment,), body_html="<p>hi</p>\n"
    )
    delivered = gateway.wait_for("delivered", message_id)
    assert delivered["via"] == "mx1.one.test."
    [dumped] = sink.messages()
    assert dumped["X-Mail-Args"] == f"<{SAM}>"
    assert dumped["X-Rcpt-Args"] == "<Rcpt@one.test>"
    # smtp-sink's own Received first, then ours, then the converted message.
    received = dumped.get_all("Received")
    assert received is not None and len(received) == 2
    assert received[1].startswith("by gw.sender.test (mailwright IMS);")
    assert dumped["Message-ID"] == message_id
    assert dumped["From"] == "Sam Sender <sam@sender.test>"
    assert dumped["Subject"] == "to the internet"
    text, html = dumped.get_body(("plain",)), dumped.get_body(("html",))
    assert text is not None and text.get_content() == "to the internet\n"
    assert html is not None and html.get_content() == "<p>hi</p>\n"
    [part] = dumped.iter_attachments()
    assert (part.get_filename(), part.get_payload(decode=True)) == ("report.pdf", attachment.data)
    assert gateway.outbox() == []
    assert gateway.events("deferred", message_id) == []


def test_uuencode_when_the_domain_format_says_so(gateway: Gateway, sink: Sink) -> None:
    gateway.exchangers[MX1] = (HOST, sink.start())
    attachment = Attachment("data.bin", "application/octet-stream", b"\x00\xffuuencoded\n" * 9)
    message_id = gateway.send("someone@uu.test", "old reader", attachments=(attachment,))
    gateway.wait_for("delivered", message_id)
    [dumped] = sink.messages()
    assert dumped.get_content_type() == "text/plain"
    body = dumped.get_content()
    assert "begin 644 data.bin\n" in body
    [converted] = [e for e in gateway.events("converted", message_id)]
    assert converted["format"] == "uuencode"


def test_a_notification_goes_out_from_the_null_reverse_path(gateway: Gateway, sink: Sink) -> None:
    gateway.exchangers[MX1] = (HOST, sink.start())
    message_id = gateway.send("someone@one.test", "a report", report=True)
    gateway.wait_for("delivered", message_id)
    [dumped] = sink.messages()
    assert dumped["X-Mail-Args"] == "<>"  # RFC 5321 §4.5.5


@pytest.mark.parametrize(
    "failure",
    [
        ["-r", "RCPT"],  # 450 4.3.0 to RCPT
        ["-r", "MAIL"],  # 450 4.3.0 to MAIL
        ["-r", "."],  # 450 4.3.0 after the message
        ["-Q", "MAIL"],  # 421 and the connection closed
        ["-Q", "CONNECT"],  # 421 greeting
        ["-q", "DATA"],  # disconnect without a reply
        ["-q", "."],  # disconnect after the message, before the reply
    ],
    ids=" ".join,
)
def test_temporary_failures_are_retried_on_the_schedule(
    gateway: Gateway, sink: Sink, failure: list[str]
) -> None:
    port = sink.start(*failure)
    gateway.exchangers[MX1] = (HOST, port)
    message_id = gateway.send("someone@one.test", f"retry after {' '.join(failure)}")
    deferred = gateway.wait_for("deferred", message_id)
    first_try = datetime.datetime.fromisoformat(deferred["time"])
    # The outbox entry is rewritten just after the event is logged.
    wait_for(lambda: [p.attempts for e in gateway.outbox() for p in e.pending] == [1], 5, "retry")
    [waiting] = gateway.outbox()
    [pending] = waiting.pending
    assert pending.last_error == deferred["reason"]
    if failure[0] != "-q":
        assert deferred["reason"][:3] in ("450", "421"), deferred["reason"]
    # The first interval of the schedule (1s) before the next try; now the MX takes it.
    assert 0.9 < pending.next_try - first_try.timestamp() < 1.5
    sink.stop()
    sink.start(port=port)
    delivered = gateway.wait_for("delivered", message_id)
    waited = datetime.datetime.fromisoformat(delivered["time"]) - first_try
    assert datetime.timedelta(seconds=0.9) < waited < datetime.timedelta(seconds=3)
    assert len(gateway.events("deferred", message_id)) == 1
    assert gateway.outbox() == []
    # smtp-sink dumps what it read even when it then refuses it or hangs up.
    copies = 2 if failure[1] == "." else 1
    assert [m["Message-ID"] for m in sink.messages()] == [message_id] * copies


def test_after_the_give_up_time_the_sender_gets_a_report(gateway: Gateway, sink: Sink) -> None:
    gateway.exchangers[MX1] = (HOST, sink.start("-r", "RCPT"))
    message_id = gateway.send("someone@one.test", "never taken")
    report = gateway.report("never taken", timeout=10)
    # Tried at 0s, 1s (first interval) and 3s (the second): 3s is the give-up time.
    tries = gateway.events("deferred", message_id)
    assert len(tries) == 2
    status = delivery_status(report)
    assert status["Final-Recipient"] == "rfc822; someone@one.test"
    assert status["Action"] == "failed"
    assert status["Status"] == "4.4.7"
    assert "450 4.3.0" in status["Diagnostic-Code"]
    assert report["To"] == "Sam Sender <sam@sender.test>"
    assert gateway.outbox() == []


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (["-f", "RCPT"], "5.3.0"),
        (["-f", "MAIL"], "5.3.0"),
        (["-f", "."], "5.3.0"),
        (["-f", "RCPT", "-B", "550 5.1.1 no such user"], "5.1.1"),
        (["-f", "RCPT", "-B", "550 no such user"], "5.0.0"),  # no enhanced code in the reply
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_a_permanent_failure_bounces_at_once(
    gateway: Gateway, sink: Sink, failure: list[str], status: str
) -> None:
    gateway.exchangers[MX1] = (HOST, sink.start(*failure))
    subject = f"refused by {' '.join(failure)}"
    message_id = gateway.send("someone@one.test", subject)
    report = gateway.report(subject, timeout=5)
    fields = delivery_status(report)
    assert fields["Status"] == status
    assert fields["Final-Recipient"] == "rfc822; someone@one.test"
    assert fields["Diagnostic-Code"].startswith("x-mailwright; 5")
    assert gateway.events("deferred", message_id) == []
    [ndr] = gateway.events("ndr", message_id)
    assert ndr["status"] == status
    assert gateway.outbox() == []
    assert sink.messages() == [] or failure[1] == "."


def test_a_null_mx_bounces_at_once_with_5_1_10(gateway: Gateway) -> None:
    message_id = gateway.send("someone@nullmx.test", "to a domain that takes no mail")
    report = gateway.report("to a domain that takes no mail", timeout=5)
    fields = delivery_status(report)
    assert fields["Status"] == "5.1.10"  # RFC 7505 §4.2
    assert "null MX" in fields["Diagnostic-Code"]
    assert gateway.events("deferred", message_id) == []


def test_a_silent_mx_holds_up_only_its_own_domain(gateway: Gateway, sink: Sink) -> None:
    # slow.test's MX takes connections and never answers: its transactions wait for the
    # client's timeout. Mail for other domains goes meanwhile, as with Postfix's smtp clients;
    # more of them than a default thread pool has threads (a few a CPU).
    with socket.create_server((HOST, 0), backlog=64) as silent:
        gateway.exchangers[MX3] = (HOST, silent.getsockname()[1])
        gateway.exchangers[MX1] = (HOST, sink.start())
        stuck = [gateway.send("someone@slow.test", f"to a silent MX {n}") for n in range(12)]
        time.sleep(0.5)  # their transactions under way
        passing = gateway.send("someone@one.test", "past the silent ones")
        gateway.wait_for("delivered", passing)
        assert not any(gateway.events("delivered", message_id) for message_id in stuck)


@pytest.mark.parametrize("first", ["refused", "421 greeting", "450 to RCPT", "unmapped"])
def test_the_next_mx_is_tried_when_one_fails(gateway: Gateway, sink: Sink, first: str) -> None:
    if first == "refused":
        gateway.exchangers[MX1] = (HOST, free_port())  # nothing listens there
    elif first == "421 greeting":
        gateway.exchangers[MX1] = (HOST, sink.start("-Q", "CONNECT"))
    elif first == "450 to RCPT":
        gateway.exchangers[MX1] = (HOST, sink.start("-r", "RCPT"))
    gateway.exchangers[MX2] = (HOST, sink.start())
    message_id = gateway.send("someone@two.test", f"first MX {first}")
    delivered = gateway.wait_for("delivered", message_id)
    assert delivered["via"] == "mx2.two.test."  # preference 20, after 10 failed
    assert gateway.events("deferred", message_id) == []
    assert [m["Message-ID"] for m in sink.messages()] == [message_id]


def test_mail_exchangers_by_preference_with_equal_ones_spread(gateway: Gateway) -> None:
    [first, second] = run_on(gateway.loop, gateway.outbound.mail_exchangers("two.test"))
    assert (first.preference, first.host, first.addresses) == (10, "mx1.two.test.", (MX1,))
    assert (second.preference, second.host, second.addresses) == (20, "mx2.two.test.", (MX2,))
    orders = {
        tuple(x.host for x in run_on(gateway.loop, gateway.outbound.mail_exchangers("equal.test")))
        for _ in range(40)
    }
    assert orders == {("a.equal.test.", "b.equal.test."), ("b.equal.test.", "a.equal.test.")}


def test_without_mx_the_address_record_is_used(gateway: Gateway, sink: Sink) -> None:
    gateway.exchangers[MX1] = (HOST, sink.start())
    message_id = gateway.send("someone@amx.test", "implicit MX")  # RFC 5321 §5.1
    assert gateway.wait_for("delivered", message_id)["via"] == "amx.test"


def test_recipients_of_one_domain_share_one_transaction(gateway: Gateway, sink: Sink) -> None:
    gateway.exchangers[MX1] = (HOST, sink.start())
    one = ["a@one.test", "b@one.test", "c@one.test"]
    # amx.test's mail goes to the same address, but another domain is another next hop.
    message_id = gateway.send([*one, "d@amx.test"], "to four")
    wait_for(lambda: len(gateway.events("delivered", message_id)) == 4, 8, "four deliveries")
    dumped = sink.messages()  # smtp-sink dumps one file per transaction, one line per RCPT
    assert sorted(m.get_all("X-Rcpt-Args") or [] for m in dumped) == [
        [f"<{r}>" for r in one],
        ["<d@amx.test>"],
    ]
    assert [m["Message-ID"] for m in dumped] == [message_id] * 2
    assert len(gateway.events("converted", message_id)) == 2  # rendered once a transaction
    assert gateway.outbox() == []


class Picky:
    """A remote MX (aiosmtpd's handler) that answers RCPT by the local part: `gone...` 550
    5.1.1, `busy...` 450 4.2.1 for its first `busy_for` tries, anything else 250. It records the
    RCPTs of every transaction and the recipients of every message it took."""

    def __init__(self, busy_for: int = 1) -> None:
        self.busy_for = busy_for
        self.transactions: list[list[str]] = []
        self.taken: list[list[str]] = []

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.transactions.append([])
        envelope.mail_from = address
        return "250 2.1.0 ok"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.transactions[-1].append(address)
        tries = sum(t.count(address) for t in self.transactions)
        if address.startswith("gone"):
            return "550 5.1.1 no such user"
        if address.startswith("busy") and tries <= self.busy_for:
            return "450 4.2.1 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.taken.append(list(envelope.rcpt_tos))
        return "250 2.0.0 taken"


@pytest.fixture
def picky(
    gateway: Gateway,
    server_loop: asyncio.AbstractEventLoop,
    smtp_listeners: list[SmtpListener],
) -> Picky:
    """one.test's MX is a Picky server."""
    handler = Picky()
    port = listen(server_loop, smtp_listeners, lambda: SMTP(handler, hostname="mx1.one.test"))
    gateway.exchangers[MX1] = (HOST, port)
    return handler


def test_each_recipient_of_a_transaction_ends_as_its_reply_says(
    gateway: Gateway, picky: Picky
) -> None:
    ok, gone, busy = "ok@one.test", "gone@one.test", "busy@one.test"
    message_id = gateway.send([ok, gone, busy], "mixed replies")
    # 550: a report at once, about that recipient only.
    status = delivery_status(gateway.report("mixed replies"))
    assert (status["Final-Recipient"], status["Status"]) == (f"rfc822; {gone}", "5.1.1")
    # 450: the entry is rewritten with that recipient only, due after the first interval.
    assert gateway.wait_for("deferred", message_id)["recipient"] == busy
    wait_for(lambda: len(gateway.events("delivered", message_id)) == 2, 8, "the retry")
    assert picky.transactions == [[ok, gone, busy], [busy]]  # the retry asks for busy only
    assert picky.taken == [[ok], [busy]]
    assert [e["recipient"] for e in gateway.events("delivered", message_id)] == [ok, busy]
    assert [e["recipient"] for e in gateway.events("ndr", message_id)] == [gone]
    assert len(gateway.events("deferred", message_id)) == 1
    assert gateway.outbox() == []


def test_the_deferred_recipients_stay_queued_alone(gateway: Gateway, picky: Picky) -> None:
    picky.busy_for = 99
    message_id = gateway.send(["ok@one.test", "busy@one.test"], "one waits")
    gateway.wait_for("deferred", message_id)
    wait_for(lambda: bool(gateway.outbox()), 5, "the rewritten entry")
    [waiting] = gateway.outbox()
    assert [(p.address.address, p.attempts) for p in waiting.pending] == [("busy@one.test", 1)]
    outbox = gateway.state / "hosts" / "gw" / "outbox"
    files = [p.name for p in outbox.iterdir() if p.is_file()]
    assert files == [f"{waiting.id}.msg"]  # replaced in place, no temporary file left
    assert picky.taken == [["ok@one.test"]]


def test_no_data_when_every_recipient_is_refused(gateway: Gateway, picky: Picky) -> None:
    gone = ["gone1@one.test", "gone2@one.test"]
    message_id = gateway.send([*gone, "busy@one.test"], "all refused")
    # One report lists both recipients refused for good (RFC 3464 §2.3: a block each).
    statuses = delivery_statuses(gateway.report("all refused"))
    assert [(s["Final-Recipient"], s["Status"]) for s in statuses] == [
        (f"rfc822; {address}", "5.1.1") for address in gone
    ]
    wait_for(lambda: bool(gateway.events("delivered", message_id)), 8, "the retry")
    assert picky.transactions == [[*gone, "busy@one.test"], ["busy@one.test"]]
    assert picky.taken == [["busy@one.test"]]  # the first transaction sent no DATA
    assert gateway.outbox() == []


class Recorder:
    """A remote MX's handler that remembers whether each message came over TLS."""

    def __init__(self) -> None:
        self.received: list[tuple[bool, str, list[str], bytes]] = []

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        self.received.append(
            (session.ssl is not None, envelope.mail_from or "", envelope.rcpt_tos, content)
        )
        return "250 2.0.0 taken"


def test_starttls_is_used_when_offered(
    gateway: Gateway,
    server_loop: asyncio.AbstractEventLoop,
    smtp_listeners: list[SmtpListener],
    server_tls: ssl.SSLContext,
) -> None:
    recorder = Recorder()
    port = listen(
        server_loop,
        smtp_listeners,
        lambda: SMTP(recorder, hostname="mx1.one.test", tls_context=server_tls),
    )
    gateway.exchangers[MX1] = (HOST, port)
    message_id = gateway.send("someone@one.test", "over TLS")
    gateway.wait_for("delivered", message_id)
    [(tls, mail_from, rcpt_tos, content)] = recorder.received
    assert tls  # opportunistic: the self-signed certificate did not stop it (RFC 3207)
    assert (mail_from, rcpt_tos) == (SAM, ["someone@one.test"])
    assert parse(content)["Message-ID"] == message_id


# --- the round trip ------------------------------------------------------------------------------

# Text as users write it: any character but controls, surrogates and line/paragraph separators.
_CHARACTERS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"))
_ATOM = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8)


@st.composite
def _addresses(draw: st.DrawFn) -> str:
    local = ".".join(draw(st.lists(_ATOM, min_size=1, max_size=3)))
    domain = ".".join(draw(st.lists(_ATOM.filter(str.isalnum), min_size=2, max_size=3)))
    return f"{local}@{domain}"


_NAMES = st.text(_CHARACTERS, max_size=30)
# Blanks before and after an unstructured field's text are folding white space, not the text.
_SUBJECTS = st.text(_CHARACTERS, max_size=200).map(str.strip)


def _lines(max_line: int) -> st.SearchStrategy[str]:
    """A text body: lines, each ending with a newline (RFC 5322 §2.3: text ends with CRLF)."""
    line = st.text(_CHARACTERS | st.just("\t"), max_size=max_line)
    return st.lists(line, min_size=1, max_size=6).map(lambda lines: "\n".join(lines) + "\n")


@st.composite
def internal_messages(draw: st.DrawFn) -> InternalMessage:
    addresses = draw(st.lists(_addresses(), min_size=2, max_size=7, unique_by=str.casefold))
    sender, *others = addresses
    kinds = sorted(
        draw(
            st.lists(
                st.sampled_from(["to", "cc", "bcc"]), min_size=len(others), max_size=len(others)
            )
        ),
        key=["to", "cc", "bcc"].index,
    )
    recipients = tuple(
        Recipient(Address(address, draw(_NAMES) if kind != "bcc" else ""), kind)
        for address, kind in zip(others, kinds, strict=True)
    )
    attachment = st.builds(
        Attachment,
        filename=st.text(_CHARACTERS, min_size=1, max_size=20).map(str.strip).filter(bool),
        mime_type=st.sampled_from(
            ["application/octet-stream", "application/pdf", "image/png", "text/plain", "text/csv"]
        ),
        data=st.binary(max_size=300),
    )
    when = draw(st.datetimes(datetime.datetime(1990, 1, 1), datetime.datetime(2100, 1, 1))).replace(
        microsecond=0, tzinfo=datetime.UTC
    )
    return InternalMessage(
        message_id=f"<{draw(_ATOM)}.{draw(st.integers(0, 10**9))}@{sender.rpartition('@')[2]}>",
        sender=Address(sender, draw(_NAMES)),
        recipients=recipients,
        subject=draw(_SUBJECTS),
        submit_time=when,
        body_text=draw(_lines(120) | _lines(1200)),
        body_html=draw(st.none() | _lines(80).map(lambda text: f"<p>{text}</p>\n")),
        attachments=tuple(draw(st.lists(attachment, max_size=3))),
        importance=draw(st.sampled_from(["low", "normal", "high"])),
    )


def properties(message: InternalMessage) -> dict[str, Any]:
    """Everything a message says, without how it travelled (hops, the kept bytes)."""
    fields = dataclasses.asdict(message)
    for travel in ("hops", "rfc5322", "extra"):
        del fields[travel]
    return fields


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(internal_messages())
def test_internal_to_rfc5322_and_back_keeps_every_property(message: InternalMessage) -> None:
    data = to_rfc5322(message)
    envelope = [r.address.address for r in message.recipients]
    back = from_rfc5322(data, message.sender.address, envelope)
    assert properties(back) == properties(message)
    assert back.rfc5322 == data
    assert not is_report(back)
    # And once more through the inbound path's bytes: what is kept is what is served again.
    assert to_rfc5322(back) == data


@pytest.mark.parametrize("filename", ["<>", "<report>.pdf", '"quoted" <name>', "<é>"])
def test_attachment_names_keep_their_brackets_and_quotes(filename: str) -> None:
    # Found by the property above: email's get_filename() strips a name's <...> (it unquotes
    # twice), so "<>" came back as "".
    message = new_message(
        Address("jane@dcnw.com", "Jane"),
        recipients=[Recipient(Address("mark@minasi.com", ""), "to")],
        subject="names",
        body="see attached\n",
        attachments=(Attachment(filename, "application/pdf", b"%PDF"),),
        domain="dcnw.com",
    )
    back = from_rfc5322(to_rfc5322(message), "jane@dcnw.com", ["mark@minasi.com"])
    assert [a.filename for a in back.attachments] == [filename]


_WORD = st.text("abz09-_=?'", min_size=1, max_size=6)
_SPACE = st.sampled_from([" ", "  ", "\t", ""])


@st.composite
def address_fields(draw: st.DrawFn) -> str:
    """From and To values as clients write them, and near misses of the plain forms."""
    address = f"{'.'.join(draw(st.lists(_WORD, min_size=1, max_size=3)))}@{draw(_WORD)}"
    name = draw(_SPACE).join(draw(st.lists(_WORD, max_size=3)))
    form = draw(
        st.sampled_from(["{a}", "<{a}>", "{n} <{a}>", "{n}<{a}>", '"{n}" <{a}>', "{a}, {a}"])
    )
    return draw(_SPACE) + form.format(a=address, n=name) + draw(_SPACE)


@settings(max_examples=500, deadline=None)
@given(address_fields() | st.text(' \tab.<>@",;:()=?', max_size=30))
def test_a_plain_address_field_reads_as_getaddresses_reads_it(value: str) -> None:
    slow = [
        Address(address, ims_module._decoded(name))
        for name, address in email.utils.getaddresses([value])
        if "@" in address
    ]
    assert ims_module._addresses({"to": [value]}, "to") == slow


_FIELDS = [
    "From",
    "To",
    "Cc",
    "Date",
    "Subject",
    "Message-ID",
    "Importance",
    "X-Priority",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "MIME-Version",
]


@st.composite
def broken_messages(draw: st.DrawFn) -> bytes:
    """Header fields the email package has to make sense of, with values anything at all."""
    value = (
        st.binary(max_size=60)
        | st.text(max_size=60).map(str.encode)
        | st.sampled_from(
            [
                b"multipart/mixed; boundary=x",
                b"text/plain; charset=x-unknown",
                b"base64",
                b"message/rfc822",
                b"<>",
                b"undisclosed-recipients:;",
                b"a@",
                b"@b",
                b"-0000",
                b"=?x-bad?q?=ff?=",
                b"attachment; filename*=x''%ff",
            ]
        )
    )
    fields = draw(st.lists(st.tuples(st.sampled_from(_FIELDS), value), max_size=10))
    header = b"".join(name.encode() + b": " + data + b"\r\n" for name, data in fields)
    body = draw(
        st.binary(max_size=200)
        | st.sampled_from(
            [b"--x\r\nContent-Type: text/html\r\n\r\n<p>\r\n--x--\r\n", b"begin 644 a\r\nend\r\n"]
        )
    )
    return header + b"\r\n" + body


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    """Header lines of every shape the parser tells apart: fields, folded lines, a first line
    that continues nothing, lines with no colon or an empty name, "From " lines, odd bytes."""
    line = st.sampled_from(
        [
            b"Subject: folded",
            b"\tcontinued",
            b"  more",
            b" ",
            b"X-Empty:",
            b"X-Blank:   ",
            b":no name",
            b"From someone",
            b"no colon",
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Type: multipart/mixed; boundary=x",
            b"To: Jane <jane@example.org>,\r\n\tBob <bob@example.org>",
            b"X-\xff: \xfe",
            b"Na me: spaced",
        ]
    ) | st.binary(max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b)
    ending = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = draw(st.lists(line, min_size=1, max_size=8))
    return ending.join(lines) + ending + ending + draw(st.binary(max_size=40))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_messages() | header_lines() | st.binary(max_size=300), internal_messages())
def test_parsing_only_the_header_of_a_one_part_message_changes_nothing(
    raw: bytes, message: InternalMessage
) -> None:
    for data in (raw, to_rfc5322(message)):
        whole = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
        assert _reading(parse_message(data)) == _reading(whole)


@pytest.mark.parametrize(
    "data",
    [
        b"!:\nFrom \n\n",  # found by the property above: the parser makes it the body's
        b"Subject: x\r\nFrom someone\r\n\r\nbody\r\n",
        b"From someone\r\nSubject: x\r\n\r\nbody\r\n",
        b"Subject: x\r\n\tfolded\r\nTo: a@b\r\n\r\nbody\r\n",
    ],
)
def test_a_header_read_alone_reads_as_in_the_whole_message(data: bytes) -> None:
    whole = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert _reading(parse_message(data)) == _reading(whole)


def _reading(mail: EmailMessage) -> list[object]:
    """What can be read of a parsed message, or which exception reading it raises."""
    readings: list[object] = []
    for read in (
        lambda: list(mail.raw_items()),
        lambda: [type(d) for d in mail.defects],
        mail.get_content_type,
        lambda: mail.get_payload(decode=True),
        mail.as_bytes,
    ):
        try:
            readings.append(read())
        except Exception as exc:  # the same failure is the same reading
            readings.append(type(exc))
    return readings


@settings(max_examples=500, deadline=None)
@given(broken_messages(), st.sampled_from(["", "<>", "someone@example.org"]))
def test_any_bytes_are_taken_and_kept(data: bytes, sender: str) -> None:
    message = from_rfc5322(data, sender, ["mark@minasi.com"])
    assert message.rfc5322 == data
    assert "mark@minasi.com" in {r.address.address for r in message.recipients}
    # A message from the null reverse-path is a notification: no report is ever made about it.
    assert is_report(message) == (sender in ("", "<>"))
