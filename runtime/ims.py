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
import datetime
import email.parser
import email.policy
import email.utils
import ipaddress
import json
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailwright.runtime.convert import to_rfc5322
from mailwright.runtime.message import Address, InternalMessage, Recipient
from mailwright.runtime.mta import Mta
from mailwright.runtime.ndr import Failure, non_delivery_report
from mailwright.runtime.pop3 import Pop3Accounts
from mailwright.runtime.queue import QueueEntry
from mailwright.runtime.router import Disposition
from mailwright.schema.addressing import AddressType
from mailwright.schema.routing import fit

# RFC 5321 §6.3: a message that passed through this many relays is looping.
MAX_RECEIVED = 100
_ROUTING_CHARACTERS = set('%!@"')  # the source-routing tricks open relays were abused with


# --- inbound -----------------------------------------------------------------------------------


class InboundHandler:
    """aiosmtpd's handler: the policy of the IMS's SMTP server."""

    def __init__(self, mta: Mta, settings: dict[str, Any], accounts: Pop3Accounts) -> None:
        self.mta = mta
        self.fqdn = mta.fqdn
        self.relay_networks = [ipaddress.ip_network(n) for n in settings["relay"]["networks"]]
        self.authenticated_relay = bool(settings["relay"]["authenticated"])
        self.inbound = settings["transfer_mode"] in ("inbound_and_outbound", "inbound_only")
        self.accounts = accounts

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

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
        received = sum(
            1
            for line in content.split(b"\n\n", 1)[0].split(b"\n")
            if line.lower().startswith(b"received:")
        )
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
        when = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
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
        return AuthResult(success=self.accounts.verify_now(user, password) is not None)


def _peer(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if peer else "unknown"


def from_rfc5322(data: bytes, sender: str, recipients: list[str]) -> InternalMessage:
    """An internet message in the internal format; its bytes are kept to be served as they came."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    message_id = str(
        headers.get("Message-ID") or email.utils.make_msgid(domain="mailwright.invalid")
    )
    name, address = email.utils.parseaddr(str(headers.get("From", "")))
    return InternalMessage(
        message_id=message_id.strip(),
        sender=Address(sender or address, name),
        recipients=tuple(Recipient(Address(r)) for r in recipients),
        subject=str(headers.get("Subject", "")),
        submit_time=datetime.datetime.now(datetime.UTC),
        rfc5322=data,
    )


def smtp_server(
    handler: InboundHandler, settings: dict[str, Any], tls: ssl.SSLContext | None
) -> SMTP:
    return SMTP(
        handler,
        data_size_limit=int(settings["max_message_size"]),
        hostname=handler.fqdn,
        ident="mailwright IMS",
        tls_context=tls,
        authenticator=handler.authenticate,
        auth_require_tls=True,  # AUTH only after STARTTLS
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


class Outbound:
    def __init__(
        self,
        mta: Mta,
        settings: dict[str, Any],
        resolver: Callable[[], tuple[str, int] | None],
        smtp_endpoint: Callable[[str], tuple[str, int] | None],
    ) -> None:
        self.mta = mta
        self.settings = settings
        self.resolver = resolver
        self.smtp_endpoint = smtp_endpoint
        self.outbox = mta.outbox

    async def run(self) -> None:
        while True:
            entries = await asyncio.get_running_loop().run_in_executor(None, self.outbox.entries)
            for entry in entries:
                if all(p.next_try <= time.time() for p in entry.pending):
                    await self.deliver(entry)
            await asyncio.sleep(0.2)

    async def deliver(self, entry: QueueEntry) -> None:
        recipient = entry.pending[0].address
        domain = recipient.address.rpartition("@")[2]
        try:
            exchangers = await self.mail_exchangers(domain)
        except NoMailError:
            await self._fail(entry, "5.1.10", f"{domain} accepts no mail (null MX)")
            return
        except (dns.exception.DNSException, ResolverMissingError) as exc:
            await self._defer(entry, f"DNS lookup for {domain} failed: {exc}")
            return
        error = "no mail exchanger"
        for exchanger in exchangers:
            for address in exchanger.addresses:
                outcome = await self._send(entry, address)
                if outcome is None:
                    self.mta.tracking.event(
                        "delivered",
                        entry.message.message_id,
                        recipient=recipient.address,
                        via=exchanger.host,
                    )
                    await asyncio.get_running_loop().run_in_executor(
                        None, self.outbox.remove, entry
                    )
                    return
                permanent, error = outcome
                if permanent:
                    await self._fail(
                        entry, error.split(" ", 2)[1] if error[:1] == "5" else "5.0.0", error
                    )
                    return
        await self._defer(entry, error)

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
        records = sorted(answer, key=lambda r: r.preference)
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

    async def _send(self, entry: QueueEntry, address: str) -> tuple[bool, str] | None:
        """None when delivered; else (permanent?, the reply)."""
        endpoint = self.smtp_endpoint(address)
        if endpoint is None:
            # Only addresses of the local runtime are reachable; nothing leaves loopback.
            return False, f"4.4.1 {address} is not reachable from the local runtime"
        data = self._render(entry)
        recipient = entry.pending[0].address.address
        return await asyncio.get_running_loop().run_in_executor(
            None, _smtp_send, endpoint, self.mta.fqdn, entry.message.sender.address, recipient, data
        )

    def _render(self, entry: QueueEntry) -> bytes:
        domain = entry.pending[0].address.address.rpartition("@")[2]
        uuencoded, charset = False, "utf-8"
        for rule in self.settings["message_formats"]:
            if _matches(rule["domain"], domain):
                uuencoded, charset = rule["format"] == "uuencode", rule["charset"] or charset
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

    async def _defer(self, entry: QueueEntry, error: str) -> None:
        pending = entry.pending[0]
        retry = self.settings["retry"]
        age = time.time() - entry.first_seen
        if age >= retry["give_up"]:
            await self._fail(entry, "4.4.7", f"gave up after {int(age)}s: {error}")
            return
        intervals = retry["intervals"]
        delay = intervals[min(pending.attempts, len(intervals) - 1)]
        waiting = replace(
            pending, attempts=pending.attempts + 1, next_try=time.time() + delay, last_error=error
        )
        self.mta.tracking.event(
            "deferred", entry.message.message_id, recipient=pending.address.address, reason=error
        )
        await asyncio.get_running_loop().run_in_executor(
            None, self.outbox.write, replace(entry, pending=(waiting,))
        )

    async def _fail(self, entry: QueueEntry, status: str, reason: str) -> None:
        recipient = entry.pending[0].address
        self.mta.tracking.event(
            "ndr",
            entry.message.message_id,
            recipient=recipient.address,
            status=status,
            reason=reason,
        )
        now = datetime.datetime.now(datetime.UTC)
        report = non_delivery_report(
            entry.message,
            [Failure(recipient, status, reason)],
            self.mta.fqdn,
            self.mta.postmaster,
            now,
        )
        if report is not None:
            await self.mta.accept(report, [r.address for r in report.recipients], "ndr")
        await asyncio.get_running_loop().run_in_executor(None, self.outbox.remove, entry)


def _matches(pattern: str, domain: str) -> bool:
    """A per-domain format rule's pattern, with the address-space wildcards * and %."""
    return fit(AddressType.SMTP, pattern, f"postmaster@{domain}") is not None


def _smtp_send(
    endpoint: tuple[str, int], helo: str, sender: str, recipient: str, data: bytes
) -> tuple[bool, str] | None:
    try:
        with smtplib.SMTP(endpoint[0], endpoint[1], local_hostname=helo, timeout=30) as client:
            client.ehlo()
            if client.has_extn("starttls"):
                # Opportunistic TLS (RFC 3207); the certificate is not required to verify.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                client.starttls(context=context)
                client.ehlo()
            client.sendmail(sender, [recipient], data)
    except smtplib.SMTPRecipientsRefused as exc:
        code, refusal = next(iter(exc.recipients.values()))
        return code >= 500, f"{code} {refusal.decode(errors='replace')}"
    except smtplib.SMTPResponseException as exc:
        reply = exc.smtp_error
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        return exc.smtp_code >= 500, f"{exc.smtp_code} {text}"
    except (OSError, smtplib.SMTPException) as exc:
        return False, f"4.4.2 {exc}"
    return None


def smtp_endpoints(state: Path) -> Callable[[str], tuple[str, int] | None]:
    """Which running host has a spec address: its servers.json entry and its endpoints.json."""

    def lookup(address: str) -> tuple[str, int] | None:
        for servers_file in sorted(state.glob("artifacts/*/*/servers.json")):
            for name, server in json.loads(servers_file.read_text()).items():
                if server["ipv4"] == address:
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
