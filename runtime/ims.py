"""The Internet Mail Service: the only part of an organization that speaks SMTP to the internet
(the seed's steps 4-5).

Inbound, an aiosmtpd server takes mail for the organization's own recipients, and relays only
for clients that authenticated or come from the connector's relay networks (RFC 5321 §3.6.2:
no open relay). Every accepted message is in the MTA's durable queue before the 250.
Outbound, the IMS takes what the MTA put in its outbox, converts it to RFC 5322, finds the
domain's MX (RFC 5321 §5.1), and delivers over SMTP, retrying on the connector's schedule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import functools
import inspect
import ipaddress
import json
import random
import re
import smtplib
import ssl
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any, AnyStr

import dns.asyncresolver
import dns.exception
import dns.resolver
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from mailwright.runtime.contract import ImsSettings, read_servers
from mailwright.runtime.convert import to_rfc5322
from mailwright.runtime.message import IMPORTANCE, Address, Attachment, InternalMessage, Recipient
from mailwright.runtime.mta import Mta
from mailwright.runtime.ndr import REPORT_FLAG, Failure, is_report
from mailwright.runtime.pop3 import Pop3Accounts
from mailwright.runtime.queue import PendingRecipient, QueueEntry, sleep_until_due
from mailwright.runtime.router import Disposition
from mailwright.runtime.routing import AddressType, fit
from mailwright.runtime.smtpdata import DataRefusedError, read_data

# RFC 5321 §6.3: a message that passed through this many relays is looping.
MAX_RECEIVED = 100
_ROUTING_CHARACTERS = set('%!@"')  # the source-routing tricks open relays were abused with
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(r"[^\n]*\n")
# The email package's feedparser.headerRE, less its odd cases (an empty name, "From "): a field
# name of printable ASCII but the colon (RFC 5322 §2.2).
_FIELD_NAME = re.compile(r"([\041-\071\073-\176]+):")
# RFC 5321 §4.1.2: a Path of a Dot-string local part and a domain of plain labels, then the
# MAIL/RCPT parameters; what the email package's get_angle_addr makes of the same text.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_PATH = re.compile(rf"\s*<({_DOT_ATOM_ADDRESS})>\s*(.*)")
# RFC 5322 §3.4: a header field of one such address, bare or in <>, after a display name of
# plain atoms (what most clients write); what email.utils.getaddresses makes of the same text.
_PHRASE = rf"{_ATOM}(?:[ \t]+{_ATOM})*"
_PLAIN_MAILBOX = re.compile(
    rf"[ \t]*(?:(?:({_PHRASE})[ \t]*)?<({_DOT_ATOM_ADDRESS})>|({_DOT_ATOM_ADDRESS}))[ \t]*"
)
_ENHANCED_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")  # RFC 3463 §2
# What email.parser and its header and content managers raise for a malformed message.
_PARSE_ERRORS = (
    LookupError,
    ValueError,
    IndexError,
    TypeError,
    AttributeError,
    email.errors.MessageError,
)


# --- inbound -----------------------------------------------------------------------------------


class InboundHandler:
    """aiosmtpd's handler: the policy of the IMS's SMTP server."""

    def __dir__(self) -> list[str]:
        # aiosmtpd looks for its hooks with dir() and inspect.getmembers() on every connection,
        # reading every attribute; the hook names are all it needs.
        return _HANDLER_NAMES

    def __init__(self, mta: Mta, settings: ImsSettings, accounts: Pop3Accounts) -> None:
        self.mta = mta
        self.accounts = accounts
        self.configure(settings)

    def configure(self, settings: ImsSettings) -> None:
        """The connector's settings (the host config's `ims`), at start and on a reload: for
        the sessions that start from now on (smtp_server reads `settings`) and for the next
        command of those under way."""
        relay_networks = [ipaddress.ip_network(n) for n in settings.relay.networks]
        self.settings = settings
        self.fqdn = self.mta.fqdn
        self.relay_networks = relay_networks
        self.authenticated_relay = settings.relay.authenticated
        self.inbound = settings.inbound

    @staticmethod  # aiosmtpd reads the hook's signature per connection: see below
    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 sender ok"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local, at, domain = address.rpartition("@")
        if not at or _ROUTING_CHARACTERS & set(local):
            return "554 5.7.1 relaying denied: routing characters in the address"
        decision = self.mta.router.route("SMTP", address)
        if domain.casefold() in self.mta.router.domains:
            if decision.disposition is Disposition.NDR or not self.inbound:
                return "550 5.1.1 no such recipient here"
        elif not self._may_relay(session):
            return "554 5.7.1 relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 recipient ok"

    def _may_relay(self, session: Session) -> bool:
        if session.authenticated and self.authenticated_relay:
            return True
        peer = ipaddress.ip_address(_peer(session))
        return any(peer in network for network in self.relay_networks)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.original_content or b""
        if isinstance(envelope.content, bytes):
            content = envelope.content
        # Only the header counts: a forwarded message or a report in the body has its own.
        header = _HEADER_END.split(content, 1)[0]
        received = sum(1 for line in header.split(b"\n") if line[:9].lower() == b"received:")
        if received > MAX_RECEIVED:
            return "554 5.4.6 too many Received headers: a mail loop"
        data = self._received(session) + content
        message = from_rfc5322(data, envelope.mail_from or "", envelope.rcpt_tos)
        recipients = [Address(r) for r in envelope.rcpt_tos]
        await self.mta.accept(message, recipients, f"smtp {_peer(session)}")
        self.mta.tracking.event(
            "converted", message.message_id, direction="inbound", peer=str(_peer(session))
        )
        return f"250 2.0.0 queued as {message.message_id}"

    def _received(self, session: Session) -> bytes:
        # RFC 5321 §4.4: the trace header this hop adds.
        protocol = "ESMTP" + ("S" if session.ssl else "") + ("A" if session.authenticated else "")
        when = _date_at(int(time.time()))
        return (
            f"Received: from {session.host_name or 'unknown'} ([{_peer(session)}])\r\n"
            f"\tby {self.fqdn} (mailwright IMS) with {protocol};\r\n\t{when}\r\n"
        ).encode()

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        # aiosmtpd calls its authenticator synchronously, so the hash check runs on the loop.
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        # handled=False: aiosmtpd answers a failure with 535 5.7.8 (by default it sends nothing).
        valid = self.accounts.verify_now(user, password) is not None
        return AuthResult(success=valid, handled=False)


_HANDLER_NAMES = [name for name in dir(InboundHandler) if name.startswith(("handle_", "auth_"))]
# aiosmtpd also reads handle_EHLO's signature on every connection. A bound method's would be
# made anew each time; a plain function's (a staticmethod's) that is set is used as it is.
setattr(  # noqa: B010 - a function attribute mypy does not know
    InboundHandler.handle_EHLO, "__signature__", inspect.signature(InboundHandler.handle_EHLO)
)


@functools.lru_cache(maxsize=1)
def _date_at(second: int) -> str:
    """RFC 5322 §3.3's date-time of a second, made once however many messages it stamps."""
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(second, datetime.UTC))


def _peer(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if peer else "unknown"


def from_rfc5322(data: bytes, sender: str, recipients: list[str]) -> InternalMessage:
    """An internet message in the internal format: its header fields and MIME parts become the
    message's properties, and its bytes are kept, to be served exactly as they came.

    `sender` and `recipients` are the envelope's (RFC 5321 MAIL and RCPT): a report goes to the
    reverse-path, and a recipient of the envelope the header does not name is a Bcc."""
    null_sender = sender in ("", "<>")
    # RFC 5321 §4.5.5: mail from the null reverse-path is a notification; none is sent about it.
    extra: dict[str, Any] = {REPORT_FLAG: True} if null_sender else {}
    try:
        mail = parse_message(data)
        return _from_mail(mail, "" if null_sender else sender, recipients, data, extra)
    except _PARSE_ERRORS:
        # Too broken for the email package; the bytes still travel, which is what is served.
        return InternalMessage(
            message_id=email.utils.make_msgid(domain="mailwright.invalid"),
            sender=Address(sender),
            recipients=tuple(Recipient(Address(r), "bcc") for r in recipients),
            subject="",
            submit_time=datetime.datetime.now(datetime.UTC),
            rfc5322=data,
            extra=extra,
        )


def parse_message(data: bytes) -> EmailMessage:
    """The message as the email package parses it (policy.default). The package feeds a body
    through its parser a line at a time, which costs more than the rest of the conversion; a
    message that is one part (most mail) has only its header parsed, and gets its body as the
    parser would have set it: the rest of the bytes, as ASCII with surrogate escapes."""
    parser = email.parser.BytesParser(policy=email.policy.default)
    header, separator, body = _split_header(data)
    if separator:
        mail = _plain_header(header) or parser.parsebytes(header + separator)
        # A line the parser took for the body's first (a "From " line last) is in the payload.
        whole = not mail.defects and not mail.get_payload()
        if whole and mail.get_content_maintype() not in ("multipart", "message"):
            mail.set_payload(body.decode("ascii", "surrogateescape"))
            return mail
    return parser.parsebytes(data)


def _plain_header(header: bytes) -> EmailMessage | None:
    """The header as the email package's parser reads it, when every line is a field or the
    continuation of one (then it finds no defect); None for anything else, for the parser.
    A field's raw value is what policy.header_source_parse makes: the text after the colon
    without leading blanks, its folded lines kept, the last line end dropped."""
    fields: list[list[str]] = []
    for line in _HEADER_LINE.findall(header.decode("ascii", "surrogateescape") + "\n"):
        if line[0] in " \t" and fields:
            fields[-1][1] += line
        elif field := _FIELD_NAME.match(line):
            fields.append([field[1], line[field.end() :].lstrip(" \t")])
        else:
            return None
    mail = EmailMessage(policy=email.policy.default)
    for name, value in fields:
        mail.set_raw(name, value.rstrip("\r\n"))
    return mail


def _split_header(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Header, the blank line after it, body; ("", "", "") when the header never ends, is
    empty (then the first line is the blank one, which the search below would not find), or
    holds a bare CR."""
    end = _HEADER_END.search(data)
    if end is None or data.startswith((b"\n", b"\r\n")):
        return b"", b"", b""
    head = data[: end.end()]
    if head.count(b"\r") != head.count(b"\r\n"):
        return b"", b"", b""  # the email package ends a line at a bare CR too
    return data[: end.start()], data[end.start() : end.end()], data[end.end() :]


def _from_mail(
    mail: EmailMessage, sender: str, envelope: list[str], data: bytes, extra: dict[str, Any]
) -> InternalMessage:
    fields = _fields(mail)
    author = _addresses(fields, "from")
    if not sender:
        sender = author[0].address if author else ""
    # The author's display name, when the author is the one the reports go to.
    name = next((a.display_name for a in author if a.address.casefold() == sender.casefold()), "")
    recipients = [Recipient(a, kind) for kind in ("to", "cc") for a in _addresses(fields, kind)]
    named = {r.address.address.casefold() for r in recipients}
    recipients += [Recipient(Address(r), "bcc") for r in envelope if r.casefold() not in named]
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    return InternalMessage(
        message_id=_first(fields, "message-id").strip()
        or email.utils.make_msgid(domain="mailwright.invalid"),
        sender=Address(sender, name),
        recipients=tuple(recipients),
        subject=_unstructured(fields, "subject"),
        submit_time=_date(_first(fields, "date")),
        body_text=_text(text) if isinstance(text, EmailMessage) else "",
        body_html=_text(html) if isinstance(html, EmailMessage) else None,
        attachments=tuple(_attachment(part) for part in mail.iter_attachments()),
        importance=_importance(fields),
        rfc5322=data,
        extra=extra,
    )


def _fields(mail: EmailMessage) -> dict[str, list[str]]:
    """The header fields as they came, unfolded (RFC 5322 §2.2.3), by lower-case name.

    Read raw rather than through the email package's header objects: those cost more than the
    whole parse (the IMS converts every message it takes), and their address parser puts a
    blank between adjacent encoded words of a display name (RFC 2047 §6.2 joins them)."""
    fields: dict[str, list[str]] = {}
    for field, value in mail.raw_items():
        fields.setdefault(field.lower(), []).append("".join(str(value).splitlines()))
    return fields


def _first(fields: dict[str, list[str]], field: str) -> str:
    return fields.get(field, [""])[0]


def _unstructured(fields: dict[str, list[str]], field: str) -> str:
    value = _first(fields, field)
    if "=?" in value or not value.isascii():
        return str(email.policy.default.header_factory(field, value))  # RFC 2047 decoding
    return value


def _addresses(fields: dict[str, list[str]], field: str) -> list[Address]:
    values = fields.get(field, [])
    if len(values) == 1 and (plain := _PLAIN_MAILBOX.fullmatch(values[0])):
        name, address = " ".join((plain[1] or "").split()), plain[2] or plain[3]
        return [Address(address, _decoded(name))]
    return [
        Address(address, _decoded(name))
        for name, address in email.utils.getaddresses(values)
        if "@" in address
    ]


def _decoded(phrase: str) -> str:
    """A display name with its RFC 2047 encoded words decoded."""
    if "=?" not in phrase:
        return phrase
    try:
        return str(email.header.make_header(email.header.decode_header(phrase)))
    except _PARSE_ERRORS:
        return phrase


def _date(value: str) -> datetime.datetime:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return datetime.datetime.now(datetime.UTC)
    # RFC 5322 §3.3: -0000 says the local time zone is unknown; the time is still UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _text(part: EmailMessage) -> str:
    # The internal format keeps line ends as \n, as the client that composed the message did.
    return str(part.get_content()).replace("\r\n", "\n")


def _attachment(part: EmailMessage) -> Attachment:
    if part.get_content_maintype() == "message":
        inner = part.get_payload(0)
        data = inner.as_bytes() if isinstance(inner, EmailMessage) else b""
    elif part.is_multipart():
        data = part.as_bytes()
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
    return Attachment(_filename(part), part.get_content_type(), data)


def _filename(part: EmailMessage) -> str:
    """The attachment's name, as the parsed header's parameters hold it. get_filename() would
    unquote a second time: a name like `<x>` lost its brackets (email.utils.unquote)."""
    for header, parameter in (("content-disposition", "filename"), ("content-type", "name")):
        value = getattr(part[header], "params", {}).get(parameter)
        if value is not None:
            return str(value)
    return ""


def _importance(fields: dict[str, list[str]]) -> str:
    """Importance (RFC 2156), else X-Priority: 1-2 high, 4-5 low."""
    importance = _first(fields, "importance").strip().lower()
    if importance in IMPORTANCE:
        return importance
    priority = _first(fields, "x-priority").strip()[:1]
    return {"1": "high", "2": "high", "4": "low", "5": "low"}.get(priority, "normal")


class ImsSmtp(SMTP):
    """aiosmtpd's server with the enhanced status codes (RFC 2034) of its own size refusals,
    and DATA read in blocks (runtime/smtpdata.py)."""

    def __dir__(self) -> list[str]:
        # aiosmtpd finds its command and AUTH methods with dir() and inspect.getmembers() for
        # every connection, which read every attribute; the names it looks for are enough.
        return _SMTP_NAMES

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # A plain <local@domain> path, as nearly every client writes it, parsed here: the
        # email package's parser aiosmtpd uses costs more than the rest of the command.
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None:
            return super()._getaddr(arg)  # anything else exactly as aiosmtpd reads it
        return plain[1], plain[2]

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's name
        # aiosmtpd's own smtp_DATA, with its line-by-line reading replaced by read_data.
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and not self._decode_data
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except DataRefusedError as refused:
            await self.push(refused.reply)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        except asyncio.CancelledError:  # the connection went during DATA, as aiosmtpd does
            self._writer.close()
            raise
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def push(self, status: AnyStr) -> None:
        # RFC 3463 §3.4: 5.3.4, message too big for system.
        if isinstance(status, str) and status.startswith("552 Error:"):
            limit = self.data_size_limit
            await super().push(f"552 5.3.4 message size exceeds the maximum of {limit} bytes")
            return
        await super().push(status)


_SMTP_NAMES = [name for name in dir(ImsSmtp) if name.startswith(("smtp_", "auth_"))]


def smtp_server(handler: InboundHandler, settings: ImsSettings, tls: ssl.SSLContext | None) -> SMTP:
    return ImsSmtp(
        handler,
        data_size_limit=settings.max_message_size,
        hostname=handler.fqdn,
        ident="mailwright IMS",
        tls_context=tls,
        authenticator=handler.authenticate,
        auth_require_tls=True,  # AUTH only after STARTTLS
        # Given, or aiosmtpd looks it up for every connection under a warnings filter.
        loop=asyncio.get_running_loop(),
    )


# --- outbound ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailExchanger:
    preference: int
    host: str
    addresses: tuple[str, ...]


class ResolverMissingError(Exception):
    """No resolver to ask."""


class NoMailError(Exception):
    """The domain says it takes no mail: null MX (RFC 7505)."""


# Postfix's defaults for its smtp clients: default_process_limit transactions at once in all,
# default_destination_concurrency_limit of them to one domain.
TRANSACTIONS = 100
PER_DOMAIN = 20


class Outbound:
    def __init__(
        self,
        mta: Mta,
        settings: ImsSettings,
        resolver: Callable[[], tuple[str, int] | None],
        smtp_endpoint: Callable[[str], tuple[str, int] | None],
        source: str = "127.0.0.1",
    ) -> None:
        self.source = source  # this host's loopback address: where its connections come from
        self.mta = mta
        self.settings = settings
        self.resolver = resolver
        self.smtp_endpoint = smtp_endpoint
        self.outbox = mta.outbox
        # The outbox as this IMS knows it, by entry id: read once when `run` starts, then told
        # by the MTA (`adopt`) and kept by `_settle`; never rescanned, however much waits.
        self._queued: dict[str, QueueEntry] = {}
        self._busy: set[str] = set()  # in a transaction now
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(TRANSACTIONS)
        # smtplib's blocking sessions get threads of their own, as many as may run: in the
        # loop's default pool (a few threads a CPU) a few silent MXs would hold up all mail.
        self._clients = ThreadPoolExecutor(TRANSACTIONS, thread_name_prefix="smtp-client")
        self._domains: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(PER_DOMAIN)
        )
        mta.outbox_listener = self.adopt

    def adopt(self, entry: QueueEntry) -> None:
        self._queued[entry.id] = entry
        self._wakeup.set()

    async def run(self) -> None:
        try:
            await self._serve()
        finally:  # stopped: no new session; one under way ends on its own
            self._clients.shutdown(wait=False)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        for entry in await loop.run_in_executor(None, self.outbox.entries):
            self._queued.setdefault(entry.id, entry)
        while True:
            self._wakeup.clear()
            now = time.time()
            for entry in list(self._queued.values()):
                if entry.id not in self._busy and any(p.next_try <= now for p in entry.pending):
                    self._busy.add(entry.id)
                    task = loop.create_task(self._deliver_in_turn(entry))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            waiting = [e for e in self._queued.values() if e.id not in self._busy]
            await sleep_until_due(waiting, self._wakeup)

    async def _deliver_in_turn(self, entry: QueueEntry) -> None:
        """`deliver`, once a transaction may start (TRANSACTIONS in all, PER_DOMAIN to one
        domain); a failure is logged and the entry tried again on the next round."""
        domain = entry.pending[0].address.address.rpartition("@")[2].casefold()
        try:
            async with self._slots, self._domains[domain]:
                await self.deliver(entry)
        except Exception:  # one bad entry must not stop the others
            traceback.print_exc()
            await asyncio.sleep(1.0)
        finally:
            self._busy.discard(entry.id)
            self._wakeup.set()

    async def deliver(self, entry: QueueEntry) -> None:
        """The entry's due recipients (all of one domain: the MTA grouped them) in one SMTP
        transaction per mail exchanger; whoever an MX refused for now is offered to the next
        (RFC 5321 §5.1), and each recipient ends as its own replies say."""
        due = [p.address for p in entry.pending if p.next_try <= time.time()]
        if not due:
            return
        domain = due[0].address.rpartition("@")[2]
        try:
            exchangers = await self.mail_exchangers(domain)
        except NoMailError:
            reason = f"{domain} accepts no mail (null MX)"
            await self._settle(entry, Outcome(failures=[Failure(a, "5.1.10", reason) for a in due]))
            return
        except (dns.exception.DNSException, ResolverMissingError) as exc:
            reason = f"DNS lookup for {domain} failed: {exc}"
            await self._settle(entry, Outcome(deferred=dict.fromkeys(due, reason)))
            return
        outcome = Outcome(deferred=dict.fromkeys(due, "no mail exchanger"))
        for exchanger in exchangers:
            for address in exchanger.addresses:
                if outcome.deferred:
                    replies = await self._send(entry, list(outcome.deferred), address)
                    outcome.record(replies, exchanger.host)
        await self._settle(entry, outcome)

    async def mail_exchangers(self, domain: str) -> list[MailExchanger]:
        """RFC 5321 §5.1: MX by preference (equal ones in random order), else the A record."""
        endpoint = self.resolver()
        if endpoint is None:
            raise ResolverMissingError("no DNS server of the local runtime is running")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [endpoint[0]]
        resolver.port = endpoint[1]
        try:
            answer = await resolver.resolve(domain, "MX")
        except dns.resolver.NoAnswer:
            return [MailExchanger(0, domain, tuple(await self._addresses(resolver, domain)))]
        # Equal preferences in random order, so their load is spread.
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if any(r.exchange.to_text() == "." for r in records):
            raise NoMailError(domain)
        return [
            MailExchanger(
                r.preference,
                r.exchange.to_text(),
                tuple(await self._addresses(resolver, r.exchange.to_text())),
            )
            for r in records
        ]

    async def _addresses(self, resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
        try:
            return [r.to_text() for r in await resolver.resolve(host, "A")]
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []

    async def _send(
        self, entry: QueueEntry, recipients: list[Address], address: str
    ) -> dict[Address, str]:
        """One SMTP transaction to `address`: each recipient's final reply."""
        endpoint = self.smtp_endpoint(address)
        if endpoint is None:
            # Only addresses of the local runtime are reachable; nothing leaves loopback.
            return dict.fromkeys(
                recipients, f"4.4.1 {address} is not reachable from the local runtime"
            )
        data = self._render(entry)
        # RFC 5321 §4.5.5: a notification goes out from the null reverse-path, <>.
        sender = "" if is_report(entry.message) else entry.message.sender.address
        origin = (self.source, self.mta.fqdn)
        forward = [r.address for r in recipients]
        replies = await asyncio.get_running_loop().run_in_executor(
            self._clients, _smtp_send, endpoint, origin, sender, forward, data
        )
        return {r: replies[r.address] for r in recipients}

    def _render(self, entry: QueueEntry) -> bytes:
        domain = entry.pending[0].address.address.rpartition("@")[2]
        uuencoded, charset = False, "utf-8"
        for rule in self.settings.message_formats:
            if _matches(rule.domain, domain):
                uuencoded, charset = rule.format == "uuencode", rule.charset or charset
                break
        when = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
        received = f"Received: by {self.mta.fqdn} (mailwright IMS);\r\n\t{when}\r\n".encode()
        self.mta.tracking.event(
            "converted",
            entry.message.message_id,
            direction="outbound",
            format="uuencode" if uuencoded else "mime",
        )
        return received + to_rfc5322(entry.message, uuencoded=uuencoded, charset=charset)

    async def _settle(self, entry: QueueEntry, outcome: Outcome) -> None:
        """Log what happened, report the failures in one NDR, and rewrite the entry with only
        the recipients still to be tried (or remove it): the report is queued before the
        entry changes, so a crash in between repeats the report (the same report id, which
        the queue and the store de-duplicate) and loses none."""
        message_id = entry.message.message_id
        for recipient, via in outcome.delivered.items():
            self.mta.tracking.event("delivered", message_id, recipient=recipient.address, via=via)
        age = time.time() - entry.first_seen
        if age >= self.settings.retry.give_up:
            outcome.give_up(f"gave up after {int(age)}s")
        await self.mta.report(entry.message, outcome.failures)
        finished = {*outcome.delivered, *(f.recipient for f in outcome.failures)}
        remaining = tuple(
            self._deferred(entry, pending, outcome.deferred[pending.address])
            if pending.address in outcome.deferred
            else pending
            for pending in entry.pending
            if pending.address not in finished
        )
        if not remaining:
            self.outbox.remove(entry)
            self._queued.pop(entry.id, None)
        else:  # one atomic replace (a temporary file made durable, then renamed)
            rewritten = replace(entry, pending=remaining)
            await self.outbox.write_soon(rewritten)
            self._queued[entry.id] = rewritten

    def _deferred(
        self, entry: QueueEntry, pending: PendingRecipient, error: str
    ) -> PendingRecipient:
        """The recipient's next try on the connector's retry schedule."""
        intervals = self.settings.retry.intervals
        delay = intervals[min(pending.attempts, len(intervals) - 1)]
        self.mta.tracking.event(
            "deferred", entry.message.message_id, recipient=pending.address.address, reason=error
        )
        return replace(
            pending, attempts=pending.attempts + 1, next_try=time.time() + delay, last_error=error
        )


@dataclass
class Outcome:
    """What became of the recipients of one delivery attempt."""

    delivered: dict[Address, str] = dataclasses.field(
        default_factory=dict
    )  # by which mail exchanger
    failures: list[Failure] = dataclasses.field(default_factory=list)
    deferred: dict[Address, str] = dataclasses.field(default_factory=dict)  # why not yet

    def record(self, replies: dict[Address, str], via: str) -> None:
        """One transaction's replies: 2yz delivered, 5yz failed for good (RFC 5321 §4.2.1),
        anything else (4yz, no connection) still to be tried."""
        for recipient, reply in replies.items():
            if reply.startswith("2"):
                self.delivered[recipient] = via
            elif reply.startswith("5"):
                self.failures.append(Failure(recipient, _permanent_status(reply), reply))
            else:
                self.deferred[recipient] = reply
                continue
            self.deferred.pop(recipient, None)

    def give_up(self, why: str) -> None:
        """Past the connector's give-up time every recipient still waiting fails (4.4.7)."""
        self.failures += [Failure(r, "4.4.7", f"{why}: {e}") for r, e in self.deferred.items()]
        self.deferred = {}


def _permanent_status(reply: str) -> str:
    """The RFC 3463 status of a 5xx reply; 5.0.0 when the server gave none (RFC 3463 §3.1)."""
    words = reply.split(" ", 2)
    return words[1] if len(words) > 1 and _ENHANCED_STATUS.match(words[1]) else "5.0.0"


def _matches(pattern: str, domain: str) -> bool:
    """A per-domain format rule's pattern, with the address-space wildcards * and %."""
    return fit(AddressType.SMTP, pattern, f"postmaster@{domain}") is not None


def _smtp_send(
    endpoint: tuple[str, int],
    origin: tuple[str, str],
    sender: str,
    recipients: list[str],
    data: bytes,
) -> dict[str, str]:
    """One SMTP transaction from `origin` (this host's loopback address and its HELO name):
    each recipient's final reply, as `<code> <text>`."""
    source, helo = origin
    replies: dict[str, str] = {}
    try:
        with smtplib.SMTP(
            endpoint[0], endpoint[1], local_hostname=helo, timeout=30, source_address=(source, 0)
        ) as client:
            _hello(client)
            _transaction(client, sender, recipients, data, replies)
    except smtplib.SMTPResponseException as exc:
        failure = _reply(exc.smtp_code, exc.smtp_error)
    except (OSError, smtplib.SMTPException) as exc:
        failure = f"4.4.2 {exc}"
    else:
        return replies
    # Whoever has no final reply yet shares the session's failure (a QUIT that went wrong
    # after the DATA reply changes nothing: every recipient has its reply by then).
    return {r: replies.get(r, failure) for r in recipients}


def _hello(client: smtplib.SMTP) -> None:
    client.ehlo()
    if client.has_extn("starttls"):
        # Opportunistic TLS (RFC 3207); the certificate is not required to verify.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo()


def _transaction(
    client: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, replies: dict[str, str]
) -> None:
    """RFC 5321 §3.3: one MAIL, a RCPT per recipient, one DATA for those the server took.
    A recipient's reply goes into `replies` as soon as it is final: a refused RCPT at once,
    an accepted one with the reply to the message."""
    options = [f"SIZE={len(data)}"] if client.has_extn("size") else []
    code, text = client.mail(sender, options)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, text, sender)
    accepted = []
    for recipient in recipients:
        code, text = client.rcpt(recipient)
        if code in (250, 251):
            accepted.append(recipient)
            continue
        replies[recipient] = _reply(code, text)
        if code == 421:  # RFC 5321 §3.8: the server is closing; the rest share its reply
            raise smtplib.SMTPResponseException(code, text)
    if not accepted:  # RFC 5321 §3.3: no DATA when no recipient was accepted
        client.rset()
        return
    try:
        reply = _reply(*client.data(data))
    except smtplib.SMTPDataError as exc:  # DATA itself refused, before the message
        reply = _reply(exc.smtp_code, exc.smtp_error)
    replies.update(dict.fromkeys(accepted, reply))


def _reply(code: int, text: bytes | str) -> str:
    return f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"


def smtp_endpoints(state: Path) -> Callable[[str], tuple[str, int] | None]:
    """Which running host has a spec address: its servers.json entry and its endpoints.json."""

    def lookup(address: str) -> tuple[str, int] | None:
        for servers_file in sorted(state.glob("artifacts/*/*/servers.json")):
            for name, server in read_servers(servers_file).items():
                if server.ipv4 == address:
                    try:
                        endpoints = json.loads(
                            (state / "hosts" / name / "endpoints.json").read_text()
                        )
                        host, _, port = endpoints["smtp"].rpartition(":")
                        return host, int(port)
                    except (OSError, ValueError, KeyError):
                        return None
        return None

    return lookup


def resolver_endpoint(state: Path) -> Callable[[], tuple[str, int] | None]:
    """The local runtime's resolver: any running host with the dns role."""

    def lookup() -> tuple[str, int] | None:
        for endpoints_file in sorted(state.glob("hosts/*/endpoints.json")):
            try:
                host, _, port = json.loads(endpoints_file.read_text())["dns"].rpartition(":")
                return host, int(port)
            except (OSError, ValueError, KeyError):
                continue
        return None

    return lookup
