"""The internal transfer protocol between MTAs of an organization, and client submission.

Inside an organization messages travel in the internal format over a small framed protocol on
the MTA transfer port (lines end in CRLF; replies carry SMTP-style codes, RFC 3463 statuses):

    XFER <octets>\r\n<CBOR: {"message": internal bytes, "rcpt": [[type, address, name]...],
                             "from": server}>      ->  250 2.0.0 queued <id>
    SUBMIT <octets>\r\n<CBOR: {"user", "password", "message", "rcpt"}>
                                                    ->  250 2.0.0 <message-id>
    MOVE <octets>\r\n<CBOR: {"alias", "messages": [[folder, file name, bytes]...],
                             "delivered": [uid...], "from": server}>
                                                    ->  250 2.0.0 <n> taken
    QUIT                                            ->  221 2.0.0 bye
    STARTTLS                                        ->  220 2.0.0 ready to start TLS

Where the port requires TLS (`serve(..., tls=...)`), the client upgrades first as in SMTP
(RFC 3207); then XFER and MOVE need a client certificate issued by the organization's CA
(mutual TLS: only the organization talks here), SUBMIT only the encryption, for its password.

A 250 is sent only after the message is in the receiver's durable queue (MOVE: its store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import cbor2

from mailwright.runtime.formats.message import Address
from mailwright.runtime.tls import ClientTls

log = logging.getLogger("mailwright.transfer")

MAX_FRAME = 64 * 1024 * 1024
TIMEOUT = 30.0

# handler(verb, document, peer address, peer certificate's common name) -> reply line
Handler = Callable[[str, dict[str, Any], str, str], Awaitable[str]]
VERBS = ("XFER", "SUBMIT", "MOVE")


class TransferError(Exception):
    """A hand-off that did not happen; `temporary` says whether to try again later."""

    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


def recipients_payload(recipients: list[Address]) -> list[list[str]]:
    return [[r.type, r.address, r.display_name] for r in recipients]


def recipients_from(payload: list[list[str]]) -> list[Address]:
    return [Address(address, name, kind) for kind, address, name in payload]


TlsContext = Callable[[], ssl.SSLContext]

READY_TO_START_TLS = "220 2.0.0 ready to start TLS"
# RFC 3207 §4: a server that requires TLS answers every other command with this until then.
STARTTLS_FIRST = "530 5.7.0 must issue a STARTTLS command first"
# Hand-offs between MTAs (XFER, MOVE) are the organization's alone; SUBMIT carries a password.
CERTIFIED_VERBS = ("XFER", "MOVE")


async def serve(
    handler: Handler, host: str, port: int, tls: TlsContext | None = None
) -> asyncio.Server:
    """`handler(verb, document, peer, certificate)` returns the reply line for one frame:
    `peer` is the client's address, `certificate` the common name of the client certificate
    that verified against the organization's trust ("" without one).

    With `tls` (called at each STARTTLS, so a reload's new certificates serve the next
    connection) the port requires TLS: nothing but STARTTLS and QUIT before it, and after it
    XFER and MOVE only from a peer with a certificate of the organization. A refused frame never
    reaches `handler`. Without `tls` the port speaks clear text, as before TLS was added."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A session cancelled as the host stops ends quietly: asyncio 3.11's stream callback
        # logs a cancelled connection task as an error with a traceback (3.12 no longer does).
        with contextlib.suppress(asyncio.CancelledError):
            await _Session(handler, tls, reader, writer).run()

    return await asyncio.start_server(session, host, port)


class _Session:
    """One connection to the transfer port."""

    def __init__(
        self,
        handler: Handler,
        tls: TlsContext | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.handler, self.tls, self.reader, self.writer = handler, tls, reader, writer
        self.peer = str(writer.get_extra_info("peername", ("?",))[0])
        self.secure = False
        self.certificate = ""  # the verified client certificate's common name

    async def run(self) -> None:
        try:
            while line := await asyncio.wait_for(self.reader.readline(), TIMEOUT * 10):
                verb, _, argument = line.decode("latin-1").strip().partition(" ")
                verb = verb.upper()
                if verb == "STARTTLS" and self.tls is not None:
                    if not await self._start_tls(self.tls, argument):
                        break
                    continue
                reply = await self._answer(verb, argument)
                if reply is None:
                    break
                await self._reply(reply)
                if reply.startswith("221"):
                    break
        # ValueError: a line longer than the reader's limit.
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            await _close(self.writer)

    async def _reply(self, reply: str) -> None:
        self.writer.write(reply.encode() + b"\r\n")
        await self.writer.drain()

    async def _start_tls(self, tls: TlsContext, argument: str) -> bool:
        """RFC 3207 §4 on the transfer port; whether the session goes on."""
        if argument:
            await self._reply("501 5.5.4 syntax error (no parameters allowed)")
            return True
        if self.secure:
            await self._reply("503 5.5.1 TLS already active")
            return True
        try:
            context = tls()
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            await self._reply("454 4.7.0 TLS not available due to temporary reason")
            return True
        await self._reply(READY_TO_START_TLS)
        # RFC 3207 §4.2: the server discards what the client said before the handshake. Bytes
        # sent after STARTTLS in clear text and already buffered would be read as if they came
        # over TLS (the command injection of CVE-2011-0411): a client that waits for the 220
        # never sends any, so hang up. StreamReader has no public view of its buffer. Nothing
        # can slip in between this check and start_tls: drain() just returned, the one inside
        # start_tls does not suspend, and loop.start_tls pauses reading before it yields.
        if getattr(self.reader, "_buffer", b""):
            return False
        try:
            await self.writer.start_tls(context, ssl_handshake_timeout=TIMEOUT)
        except (OSError, TimeoutError):
            # A certificate of another organization (or of none we trust), a handshake that
            # failed or timed out: the connection ends with nothing handled.
            return False
        self.secure = True
        self.certificate = _common_name(self.writer.get_extra_info("ssl_object"))
        return True

    async def _answer(self, verb: str, size: str) -> str | None:
        """The reply to one command and its frame, or None to hang up."""
        if verb == "QUIT":
            return "221 2.0.0 bye"
        refusal = self._refusal(verb)
        if refusal is not None:
            # The frame follows its command line unasked; read past it so the next command
            # lines up. One too big to read past (or of no size at all) ends the connection.
            if verb in VERBS and not (size.isdigit() and int(size) <= MAX_FRAME):
                await self._reply(refusal)
                return None
            if verb in VERBS:
                await self._discard(int(size))
            return refusal
        if verb not in VERBS or not size.isdigit():
            return "500 5.5.1 unknown command"
        if int(size) > MAX_FRAME:
            return "552 5.3.4 message too big"
        data = await asyncio.wait_for(self.reader.readexactly(int(size)), TIMEOUT)
        try:
            document = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError):
            return "554 5.6.0 malformed frame"
        if not isinstance(document, dict):
            return "554 5.6.0 malformed frame"
        try:
            return await self.handler(verb, document, self.peer, self.certificate)
        except Exception:
            # A fault of ours: logged with its cause; the peer keeps the frame and tries later.
            log.exception("%s frame failed", verb, extra={"peer": self.peer})
            return "451 4.3.0 local error in processing; try again later"

    def _refusal(self, verb: str) -> str | None:
        if self.tls is None:
            return None
        if not self.secure:
            return STARTTLS_FIRST
        if verb in CERTIFIED_VERBS and not self.certificate:
            return f"530 5.7.1 {verb} needs a certificate of this organization"
        return None

    async def _discard(self, size: int) -> None:
        """Read `size` octets and drop them, a piece at a time (never the whole frame held)."""
        while size > 0:
            piece = await asyncio.wait_for(self.reader.read(min(size, 64 * 1024)), TIMEOUT)
            if not piece:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(piece)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close and wait: over TLS the close_notify exchange (RFC 8446 §6.1) takes a few turns
    of the loop, which must not end (asyncio.run returning) with the transport half closed."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


def _common_name(ssl_object: ssl.SSLObject | None) -> str:
    """The CN of the peer's certificate; it verified against the trust, or the handshake
    would have failed (CERT_OPTIONAL). "" when the peer sent none."""
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    subject = (certificate or {}).get("subject", ())
    # getpeercert(): "subject" is a tuple of RDNs, each a tuple of (attribute, value) pairs.
    for rdn in subject if isinstance(subject, tuple) else ():
        for attribute in rdn:
            if isinstance(attribute, tuple) and attribute[0] == "commonName":
                return str(attribute[1])
    return ""


async def send_frame(
    host: str,
    port: int,
    verb: str,
    document: dict[str, Any],
    tls: ClientTls | None = None,
) -> str:
    """One frame, one reply line; raises TransferError unless the reply is 2xx. With `tls`,
    STARTTLS first (RFC 3207), and never the frame in clear text if that fails."""
    data = cbor2.dumps(document)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise TransferError(f"cannot connect to {host}:{port}: {exc}") from None
    try:
        if tls is not None:
            await _start_tls(reader, writer, tls, f"{host}:{port}")
        writer.write(f"{verb} {len(data)}\r\n".encode() + data)
        await writer.drain()
        reply = (await asyncio.wait_for(reader.readline(), TIMEOUT)).decode("latin-1").strip()
        writer.write(b"QUIT\r\n")
        await writer.drain()
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        raise TransferError(f"{host}:{port} dropped the connection: {exc}") from None
    finally:
        await _close(writer)
    if not reply.startswith("2"):
        raise TransferError(reply or "no reply", temporary=not reply.startswith("5"))
    return reply


async def _start_tls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ClientTls, where: str
) -> None:
    writer.write(b"STARTTLS\r\n")
    await writer.drain()
    reply = (await asyncio.wait_for(reader.readline(), TIMEOUT)).decode("latin-1").strip()
    if not reply.startswith("220"):
        # Temporary whatever the code: a peer not upgraded yet, or a setting an apply will
        # fix; the message waits in the queue rather than bounce or go in clear text.
        raise TransferError(f"{where} refused STARTTLS: {reply or 'no reply'}")
    try:
        await writer.start_tls(
            tls.context, server_hostname=tls.server_hostname, ssl_handshake_timeout=TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        raise TransferError(f"TLS with {where} failed: {exc}") from None


# Where a server of the organization takes transfer frames (None: it is none of its servers).
Endpoint = Callable[[str], tuple[str, int] | None]
