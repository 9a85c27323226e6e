"""The IMS's SMTP server: aiosmtpd, with RFC 2034 status codes on its own refusals and DATA
read in blocks."""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import AnyStr

from aiosmtpd.smtp import MISSING, SMTP, syntax

from mailwright.runtime.contract import ImsSettings
from mailwright.runtime.ims.inbound import InboundHandler
from mailwright.runtime.ims.smtpdata import DataRefusedError, read_data

# MAIL/RCPT parameters; what the email package's get_angle_addr makes of the same text.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_PATH = re.compile(rf"\s*<({_DOT_ATOM_ADDRESS})>\s*(.*)")


class ImsSmtp(SMTP):
    """aiosmtpd's server with the enhanced status codes (RFC 2034) of its own size refusals,
    and DATA read in blocks (runtime/ims/smtpdata.py)."""

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
