"""The IMS's inbound policy (the seed's step 5): aiosmtpd's handler takes mail for the
organization's own recipients, and relays only for clients that authenticated or come from the
connector's relay networks (RFC 5321 §3.6.2: no open relay). Every accepted message is in the
MTA's durable queue before the 250.
"""

from __future__ import annotations

import datetime
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import functools
import inspect
import ipaddress
import time
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailwright.runtime.auth.accounts import Accounts
from mailwright.runtime.contract import ImsSettings
from mailwright.runtime.formats.message import (
    Address,
)
from mailwright.runtime.formats.parse import HEADER_END, from_rfc5322
from mailwright.runtime.mta.agent import Mta
from mailwright.runtime.mta.router import Disposition

# RFC 5321 §6.3: a message that passed through this many relays is looping.
MAX_RECEIVED = 100
_ROUTING_CHARACTERS = set('%!@"')  # the source-routing tricks open relays were abused with

# --- inbound -----------------------------------------------------------------------------------


class InboundHandler:
    """aiosmtpd's handler: the policy of the IMS's SMTP server."""

    def __dir__(self) -> list[str]:
        # aiosmtpd looks for its hooks with dir() and inspect.getmembers() on every connection,
        # reading every attribute; the hook names are all it needs.
        return _HANDLER_NAMES

    def __init__(self, mta: Mta, settings: ImsSettings, accounts: Accounts) -> None:
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
        header = HEADER_END.split(content, 1)[0]
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
